//! What the process-level tests share: a cluster of the real `ablate` binary (coordinator,
//! workers and their rank processes on loopback) and the signals they send it.
#![allow(dead_code)]

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_ablate");

pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub url: String,
    pub metrics: String,
    pub grpc_port: u16,
    pub coordinator: Option<Proc>,
    pub workers: Vec<Proc>,
    /// What else must live as long as the cluster (an etcd, a standby coordinator).
    pub extra: Vec<Box<dyn std::any::Any>>,
    /// More arguments for every `ablate worker`.
    pub worker_args: Vec<String>,
    /// Every worker's `--devices` (`cpu:1` unless set before the workers start).
    pub worker_devices: String,
    /// More environment for every `ablate worker` (and so its ranks).
    pub worker_env: Vec<(String, String)>,
}

/// The metrics address from a coordinator's first line, once it serves (within `secs`).
pub fn serving(first: &std::sync::mpsc::Receiver<String>, secs: u64) -> Option<String> {
    let line = first.recv_timeout(Duration::from_secs(secs)).ok()?;
    // "coordinator listening on 127.0.0.1:P, metrics on http://127.0.0.1:M/metrics (store ...)"
    assert!(line.starts_with("coordinator listening on"), "{line}");
    Some(line.split("metrics on http://").nth(1).unwrap().split('/').next().unwrap().to_string())
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Cluster {
    pub fn start(workers: usize) -> Self {
        Self::start_with(workers, Cluster::start_coordinator)
    }

    /// `coordinators` starts the coordinator(s) and sets `url`.
    pub fn start_with(workers: usize, coordinators: impl FnOnce(&mut Cluster)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Cluster { dir, url: String::new(), metrics: String::new(), grpc_port: free_port(), coordinator: None, workers: vec![], extra: vec![], worker_args: vec![], worker_devices: "cpu:1".into(), worker_env: vec![] };
        coordinators(&mut c);
        for i in 0..workers {
            let token = c.dir.path().join(format!("w{i}.token"));
            // each worker with its own token, bound to its id
            c.cli(&["token", "create", &format!("w{i}"), "--role", "worker", "--worker-id", &format!("w{i}"), "--out", token.to_str().unwrap()]);
            let w = c.spawn_worker(i);
            c.workers.push(w);
        }
        c.wait(30, "both workers registered", |c| c.cli(&["workers", "--output", "json"]).lines().filter(|l| l.contains("\"alive\":true")).count() == workers);
        c
    }

    /// Starts the agent of worker `i` (`w{i}`, its token made by `start_with`).
    pub fn spawn_worker(&self, i: usize) -> Proc {
        let token = self.dir.path().join(format!("w{i}.token"));
        let w = Command::new(BIN)
            .args(["worker", "--coordinator", &self.url, "--devices", &self.worker_devices, "--id", &format!("w{i}"), "--threads-per-rank", "1", "--collective-timeout-s", "60", "--stuck-after-s", "120"])
            .arg("--token-file")
            .arg(&token)
            .env_remove("ABLATE_TOKEN")
            .env_remove("ABLATE_TOKEN_FILE")
            .arg("--work-dir")
            .arg(self.dir.path().join(format!("w{i}")))
            .args(&self.worker_args)
            .envs(self.worker_env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Proc(w)
    }

    pub fn start_coordinator(&mut self) {
        let store = self.dir.path().join("state/coordinator.redb").display().to_string();
        let (p, first) = self.spawn_coordinator(self.grpc_port, &store, &[]);
        self.url = format!("http://127.0.0.1:{}", self.grpc_port);
        self.metrics = serving(&first, 30).expect("a coordinator on its own store serves at once");
        self.coordinator = Some(p);
    }

    /// Starts `ablate coordinator` on `port`; the receiver gets its first stdout line, which
    /// it prints once it serves (a standby prints it when it comes to lead).
    pub fn spawn_coordinator(&self, port: u16, store: &str, extra: &[&str]) -> (Proc, std::sync::mpsc::Receiver<String>) {
        let mut p = Command::new(BIN)
            .args(["coordinator", "--listen", &format!("127.0.0.1:{port}"), "--metrics-listen", "127.0.0.1:0", "--heartbeat-ms", "300", "--worker-expiry-ms", "6000"])
            .args(["--store", store])
            .arg("--admin-token-file")
            .arg(self.admin_token())
            .args(extra)
            .arg("--runs")
            .arg(self.dir.path().join("state/runs"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let out = p.stdout.take().unwrap();
        std::thread::spawn(move || {
            let mut first = String::new();
            let _ = BufReader::new(out).read_line(&mut first);
            let _ = tx.send(first);
        });
        (Proc(p), rx)
    }

    /// The admin token the first coordinator wrote at its first start.
    pub fn admin_token(&self) -> PathBuf {
        self.dir.path().join("admin.token")
    }

    /// `ablate` with the admin's token.
    pub fn ablate(&self) -> Command {
        let mut c = Command::new(BIN);
        c.env("ABLATE_TOKEN_FILE", self.admin_token()).env_remove("ABLATE_TOKEN");
        c
    }

    pub fn cli(&self, args: &[&str]) -> String {
        let out = self.ablate().args(args).args(["--coordinator", &self.url]).output().unwrap();
        assert!(out.status.success(), "ablate {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn job(&self, id: &str) -> Value {
        serde_json::from_str(&self.cli(&["jobs", "show", id, "--output", "json"])).unwrap()
    }

    pub fn wait(&self, secs: u64, what: &str, f: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !f(self) {
            assert!(Instant::now() < deadline, "{what}: not within {secs} s; logs:\n{}", self.all_logs());
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    pub fn all_logs(&self) -> String {
        self.ablate().args(["logs", "j000001", "--coordinator", &self.url]).output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default()
    }

    pub fn submit(&self, steps: usize, world: u32) -> String {
        self.submit_eval(steps, world, 0)
    }

    pub fn submit_eval(&self, steps: usize, world: u32, eval: i64) -> String {
        let cfg = job_config_eval(self.dir.path(), steps, eval);
        let v: Value = serde_json::from_str(&self.cli(&["submit", cfg.to_str().unwrap(), "--world-size", &world.to_string(), "--output", "json"])).unwrap();
        v["id"].as_str().unwrap().to_string()
    }
}

/// The tiny example, short, with `eval` generated images evaluated at the end.
pub fn job_config_eval(dir: &Path, steps: usize, eval: i64) -> PathBuf {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/train-tiny.toml")).unwrap();
    let mut v: toml::Table = text.parse().unwrap();
    v["train"]["steps"] = (steps as i64).into();
    v["train"]["batch_size"] = 2.into();
    v["train"]["checkpoint_every"] = 10.into();
    v["eval"]["samples"] = eval.into();
    v["eval"]["sampler_steps"] = 4.into();
    v["sample"]["count"] = 2.into();
    v["sample"]["steps"] = 2.into();
    let p = dir.join(format!("job-{steps}-{eval}.toml"));
    std::fs::write(&p, toml::to_string(&v).unwrap()).unwrap();
    p
}

pub fn http_get(addr: &str, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body.split_once("\r\n\r\n").unwrap().1.to_string()
}

pub fn state(v: &Value) -> &str {
    v["state"].as_str().unwrap()
}

/// Whether `pid` has exited (gone, or a zombie its parent has not reaped yet).
pub fn exited(pid: u64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'),
    }
}

pub fn signal(pid: u64, sig: &str) {
    assert!(Command::new("kill").args([sig, &pid.to_string()]).status().unwrap().success());
}

/// The rank processes an agent started (its children).
pub fn ranks_of(agent: u64) -> Vec<u64> {
    let out = Command::new("ps").args(["-o", "pid=", "--ppid", &agent.to_string()]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().filter_map(|p| p.parse().ok()).collect()
}
