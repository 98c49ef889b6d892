//! The `ablate` command line.

mod assets_cmd;
mod bench_cluster;
mod ckpt_cmd;
mod cluster_cmd;
mod config_check;
mod conn;
mod data_cmd;
mod eval_cmd;
mod eval_nets;
mod jobs_cmd;
mod shell_cmd;
mod store_cmd;
mod sweep;
mod token_cmd;
mod train_cmd;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "ablate", version, about = "Text-to-image training ablation studies")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a sweep locally: embedded coordinator and CPU workers, live progress, results table.
    Run(sweep::run::RunArgs),
    /// Sweeps through a remote coordinator.
    #[command(subcommand)]
    Sweep(sweep::remote::SweepCmd),
    /// Print the results table of a sweep (`ablate run --out DIR`, or a sweep id).
    Results(sweep::run::ResultsArgs),
    /// Write a self-contained HTML report of a sweep (table, curves, samples, config diffs).
    Report(sweep::report::ReportArgs),
    /// Train one arm in this process (on the CPU, or CUDA with --device).
    Train(train_cmd::TrainArgs),
    /// Benchmarks that print their figures.
    #[command(subcommand)]
    Bench(train_cmd::BenchCmd),
    /// Look at the training data.
    #[command(subcommand)]
    Data(data_cmd::DataCmd),
    /// FID / Frechet distances from image folders, statistics files or feature matrices.
    #[command(subcommand)]
    Eval(eval_cmd::EvalCmd),
    /// Reproduce the small networks that ship in assets/.
    #[command(subcommand)]
    Assets(assets_cmd::AssetsCmd),
    /// Run the coordinator: gRPC services, scheduler, store, Prometheus metrics.
    Coordinator(cluster_cmd::CoordinatorArgs),
    /// Run a node agent that trains the ranks the coordinator assigns to it.
    Worker(cluster_cmd::WorkerArgs),
    /// Submit a training job to a coordinator.
    Submit(jobs_cmd::SubmitArgs),
    /// List or show jobs.
    #[command(subcommand)]
    Jobs(jobs_cmd::JobsCmd),
    /// Follow a job (j000001) or a sweep (s000001) live until it ends.
    Watch(jobs_cmd::IdArgs),
    /// Cancel a job (its ranks are stopped).
    Cancel(jobs_cmd::IdArgs),
    /// Print a job's log lines (all ranks).
    Logs(jobs_cmd::LogsArgs),
    /// List the registered workers; `workers drain <id>` / `workers undrain <id>`.
    Workers(jobs_cmd::WorkersArgs),
    /// Access tokens of a coordinator: create (shown once), list, revoke (an admin's token).
    #[command(subcommand)]
    Token(token_cmd::TokenCmd),
    /// The steps in a job's part of a checkpoint store (a folder or s3:// URL), and whether
    /// each is whole.
    Checkpoints(ckpt_cmd::CheckpointsArgs),
    /// The coordinator's store: backup (from a running coordinator), restore (into an empty
    /// store), inspect.
    #[command(subcommand)]
    Store(store_cmd::StoreCmd),
    /// Shell completions for bash, zsh, fish, elvish or powershell, on stdout.
    Completions(shell_cmd::CompletionsArgs),
    /// The manual page (roff), on stdout or as one page per subcommand in --out.
    Man(shell_cmd::ManArgs),
    /// One rank of a distributed job (started by `ablate worker`).
    #[command(hide = true)]
    Rank(cluster_cmd::RankArgs),
    /// Checks the training code on a device against the CPU (deploy/cuda/device-check.sh).
    #[command(hide = true)]
    SelfcheckCuda(train_cmd::SelfcheckArgs),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).with_writer(std::io::stderr).init();
    ablate_trainer::device::keep_freed_memory();
    ablate_trainer::device::candle_ops_on_calling_thread();
    match Cli::parse().cmd {
        Cmd::Train(a) => train_cmd::train(a),
        Cmd::Bench(b) => train_cmd::bench(b),
        Cmd::Assets(a) => assets_cmd::assets(a),
        Cmd::Data(d) => data_cmd::data(d),
        Cmd::Eval(e) => eval_cmd::eval(e),
        Cmd::SelfcheckCuda(a) => train_cmd::selfcheck(a),
        Cmd::Coordinator(a) => cluster_cmd::coordinator(a),
        Cmd::Run(a) => sweep::run::run(a),
        Cmd::Results(a) => sweep::run::results_cmd(a),
        Cmd::Report(a) => sweep::report::report_cmd(a),
        Cmd::Sweep(c) => sweep::remote::sweep(c),
        Cmd::Worker(a) => cluster_cmd::worker(a),
        Cmd::Rank(a) => cluster_cmd::rank(a),
        Cmd::Submit(a) => jobs_cmd::submit(a),
        Cmd::Jobs(c) => jobs_cmd::jobs(c),
        Cmd::Watch(a) => jobs_cmd::watch(a),
        Cmd::Cancel(a) => jobs_cmd::cancel(a),
        Cmd::Logs(a) => jobs_cmd::logs(a),
        Cmd::Workers(c) => jobs_cmd::workers(c),
        Cmd::Token(c) => token_cmd::token(c),
        Cmd::Checkpoints(a) => ckpt_cmd::checkpoints(a),
        Cmd::Store(c) => store_cmd::store(c),
        Cmd::Completions(a) => shell_cmd::completions(a),
        Cmd::Man(a) => shell_cmd::man(a),
    }
}
