//! `ablate checkpoints STORE`: the steps in a job's part of a checkpoint store (a folder or
//! an s3:// URL, as `--checkpoint-store` takes, with the job's id appended), whether each is
//! published (its manifest is there) and, with `--check`, whether every file matches its
//! manifest: what a resume would restore, before a rank tries.

use clap::Args;

#[derive(Args)]
pub struct CheckpointsArgs {
    /// The job's part of the store: `/shared/ckpt/j000001` or `s3://bucket/ckpt/j000001?endpoint=...`.
    store: String,
    /// Fetch every published step and compare each file with its manifest (size, sha256).
    #[arg(long)]
    check: bool,
}

pub fn checkpoints(a: CheckpointsArgs) -> anyhow::Result<()> {
    let store = ablate_worker::s3::open(&a.store, 1).map_err(anyhow::Error::msg)?;
    let published = store.published()?;
    let steps = store.steps()?;
    if steps.is_empty() {
        eprintln!("no checkpoints in {}", store.objects.describe());
    }
    println!("{:>10}  state", "step");
    for step in steps.iter().rev() {
        let state = match (published.contains(step), a.check) {
            (false, _) => "partial (no manifest: a publish that did not finish)".to_string(),
            (true, false) => "published".to_string(),
            (true, true) => store.check(*step).map_or("published, every file matches its manifest".to_string(), |why| format!("published, unusable: {why}")),
        };
        println!("{step:>10}  {state}");
    }
    Ok(())
}
