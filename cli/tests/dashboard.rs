//! The shipped Grafana dashboard and alert rules against the real thing: a Prometheus
//! (Debian `prometheus`; CI installs it, elsewhere the test skips without one) scrapes a
//! live coordinator every second while a world-size-2 job trains on two workers, one of
//! its ranks is killed (a restart), a call is refused (a rejection) and a gang waits that
//! cannot be placed; then every panel of `deploy/grafana/ablate.json` must return data for
//! its query, and `promtool test rules` must pass on `deploy/prometheus/alerts_test.yml`.

mod common;

use common::*;
use serde_json::Value;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

fn tool(name: &str) -> Option<String> {
    let found = std::env::var_os("PATH").and_then(|p| std::env::split_paths(&p).map(|d| d.join(name)).find(|p| p.is_file()));
    if found.is_none() {
        assert!(std::env::var_os("CI").is_none(), "CI must have {name} (Debian package prometheus)");
        eprintln!("{name} not installed: skipped (CI runs it)");
    }
    found.map(|p| p.display().to_string())
}

/// Percent-encodes a PromQL expression for a query string.
fn encode(s: &str) -> String {
    s.bytes().map(|b| if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") }).collect()
}

fn get(addr: &str, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()
}

/// The series a PromQL query returns now.
fn query(prom: &str, expr: &str) -> Vec<Value> {
    let body = get(prom, &format!("/api/v1/query?query={}", encode(expr)));
    // (a chunked answer: the JSON object sits between the chunk sizes)
    let json = &body[body.find('{').unwrap_or(0)..=body.rfind('}').unwrap_or(0)];
    let v: Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{expr}: {e}: {body}"));
    assert_eq!(v["status"], "success", "{expr}: {v}");
    v["data"]["result"].as_array().cloned().unwrap_or_default()
}

#[test]
fn alert_rules_pass_their_tests() {
    let Some(promtool) = tool("promtool") else { return };
    let out = Command::new(promtool).args(["test", "rules", "deploy/prometheus/alerts_test.yml"]).current_dir(ROOT).output().unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

#[test]
fn every_dashboard_panel_has_data_from_a_live_cluster() {
    let Some(prometheus) = tool("prometheus") else { return };
    let c = Cluster::start(2);
    let dir = c.dir.path();
    let prom_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = dir.join("prometheus.yml");
    std::fs::write(&config, format!("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: ablate-coordinator\n    static_configs:\n      - targets: [\"{}\"]\n", c.metrics)).unwrap();
    let _prom = Proc(
        Command::new(prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let prom = format!("127.0.0.1:{prom_port}");
    c.wait(60, "Prometheus scraping the coordinator", |_| std::net::TcpStream::connect(&prom).is_ok() && query(&prom, "up{job=\"ablate-coordinator\"} == 1").len() == 1);

    // a job that trains, is restarted once (a rank killed) and ends with its evaluation
    let id = c.submit_eval(40, 2, 8);
    c.wait(120, "job training", |c| c.job(&id)["step"].as_u64().unwrap_or(0) >= 3);
    let victim = c.job(&id)["placement"][1]["pid"].as_u64().unwrap();
    signal(victim, "-9");
    c.wait(60, "the gang restarted", |c| c.job(&id)["generation"].as_u64() == Some(2));
    // a call without a token (refused) and a gang no pool can hold (unplaceable)
    let refused = Command::new(BIN).args(["jobs", "list", "--coordinator", &c.url]).env_remove("ABLATE_TOKEN").env_remove("ABLATE_TOKEN_FILE").output().unwrap();
    assert!(!refused.status.success());
    let too_big = c.submit(5, 3);
    c.wait(300, "job succeeded", |c| state(&c.job(&id)) == "succeeded");
    c.wait(30, "the oversized gang says why it waits", |c| c.job(&too_big)["reason"].as_str().unwrap_or("").starts_with("waiting: "));
    std::thread::sleep(Duration::from_secs(3)); // a few scrapes after the end

    let dash: Value = serde_json::from_str(&std::fs::read_to_string(format!("{ROOT}/deploy/grafana/ablate.json")).unwrap()).unwrap();
    let panels = dash["panels"].as_array().unwrap();
    let mut empty = Vec::new();
    for p in panels {
        let title = p["title"].as_str().unwrap();
        let mut series = 0;
        for t in p["targets"].as_array().unwrap() {
            // what Grafana substitutes: its rate interval, the "All" of each variable
            let expr = t["expr"].as_str().unwrap().replace("$__rate_interval", "1m").replace("$sweep", ".*").replace("$arm", ".*");
            series += query(&prom, &expr).len();
        }
        eprintln!("panel {title:?}: {series} series");
        if series == 0 {
            empty.push(title.to_string());
        }
    }
    println!("dashboard: {} of {} panels have data from a live coordinator", panels.len() - empty.len(), panels.len());
    assert!(empty.is_empty(), "panels without data: {empty:?}");
    // what the unplaceable-gang alert reads counts the oversized gang
    assert_eq!(query(&prom, "ablate_jobs_unplaceable > 0").len(), 1);
    c.cli(&["cancel", &too_big]);
}
