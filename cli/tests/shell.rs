//! Shell completions and the man page come from the parser's own definition: bash's script
//! is valid bash naming every subcommand, zsh's and fish's are theirs, and the man pages
//! render (one per subcommand with --out).

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_ablate");

fn run(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(out.status.success(), "ablate {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn completions_and_man_pages_are_generated_from_the_parser() {
    let bash = run(&["completions", "bash"]);
    for sub in ["run", "sweep", "worker", "checkpoints", "completions", "results"] {
        assert!(bash.contains(sub), "bash completion lacks {sub}");
    }
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("ablate.bash");
    std::fs::write(&script, &bash).unwrap();
    let check = Command::new("bash").arg("-n").arg(&script).output().unwrap();
    assert!(check.status.success(), "bash -n: {}", String::from_utf8_lossy(&check.stderr));
    assert!(run(&["completions", "zsh"]).starts_with("#compdef ablate"));
    assert!(run(&["completions", "fish"]).contains("complete -c ablate"));
    let man = run(&["man"]);
    assert!(man.contains(".TH ablate") && man.contains("ablation"), "{man:.200}");
    run(&["man", "--out", dir.path().to_str().unwrap()]);
    for page in ["ablate.1", "ablate-run.1", "ablate-worker.1"] {
        assert!(dir.path().join(page).is_file(), "no {page}");
    }
    let bad = Command::new(BIN).args(["completions", "tcsh"]).output().unwrap();
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("tcsh"));
}
