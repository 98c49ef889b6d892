//! Fuzz tests (stable Rust, proptest): the etcd store spec (with its TLS and auth query),
//! the bearer header of every call, and a submission's config through the coordinator's
//! checks take mutated valid inputs and random bytes; each gives a value or an error, never a
//! panic, and no mutated token authenticates. `ABLATE_FUZZ_CASES` sets the inputs per target.

use ablate_coordinator::auth::Role;
use ablate_coordinator::domain::JobSpec;
use ablate_coordinator::store::{etcd::EtcdSpec, etcd_access};
use ablate_coordinator::{store, Core, Options};
use ablate_proto::fuzz;

#[test]
fn etcd_specs_parse_or_are_refused() {
    let seeds = vec![
        "etcd://127.0.0.1:2379/ablate/".to_string(),
        "etcd://a:1,b:2/team/x/?ca=/c.pem&cert=/x.pem&key=/x.key&user=ablate&password-file=/pw".into(),
        "etcd://h:1?domain=etcd.internal&ca=/ca.pem".into(),
    ];
    fuzz::run("etcd store spec", fuzz::text_mutations_of(seeds), |spec| {
        if let Ok((base, access)) = etcd_access::split(&spec) {
            let _ = EtcdSpec::parse(base);
            let _ = access.tls();
        }
        let _ = EtcdSpec::parse(&spec);
        Ok(())
    });
}

#[test]
fn bearer_headers_authenticate_only_the_real_token() {
    let dir = tempfile::tempdir().unwrap();
    let core = Core::open(store::open("memory:").unwrap(), Options { runs_dir: dir.path().to_path_buf(), ..Options::default() }).unwrap();
    let (_, token) = core.auth.create("ana", Role::Researcher, None, "test").unwrap();
    let real = format!("Bearer {token}");
    let seeds = vec![real.clone(), format!("bearer {token}"), "Bearer ablt_0000000000000000_".to_string()];
    fuzz::run("bearer header", fuzz::text_mutations_of(seeds), |header| {
        if core.auth.authenticate(Some(&header)).is_ok() && header.trim() != real && !header.eq_ignore_ascii_case(&real) {
            return Err(format!("{header:?} authenticated"));
        }
        Ok(())
    });
}

#[test]
fn submitted_configs_are_stored_or_refused() {
    let dir = tempfile::tempdir().unwrap();
    let core = Core::open(store::open("memory:").unwrap(), Options { runs_dir: dir.path().to_path_buf(), ..Options::default() }).unwrap();
    let seeds = vec!["name = \"a\"\n[train]\nsteps = 5\nbatch_size = 4\n".to_string(), "[model]\npreset = \"tiny\"\n".into()];
    fuzz::run("submitted config", fuzz::text_mutations_of(seeds), |config_toml| {
        let _ = core.submit(JobSpec { config_toml, world_size: 1, ..Default::default() });
        Ok(())
    });
}
