//! The `ablate` command line.

mod assets_cmd;
mod data_cmd;
mod eval_cmd;
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
    /// Checks the training code on a device against the CPU (deploy/cuda/device-check.sh).
    #[command(hide = true)]
    SelfcheckCuda(train_cmd::SelfcheckArgs),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).with_writer(std::io::stderr).init();
    ablate_trainer::device::keep_freed_memory();
    match Cli::parse().cmd {
        Cmd::Train(a) => train_cmd::train(a),
        Cmd::Bench(b) => train_cmd::bench(b),
        Cmd::Assets(a) => assets_cmd::assets(a),
        Cmd::Data(d) => data_cmd::data(d),
        Cmd::Eval(e) => eval_cmd::eval(e),
        Cmd::SelfcheckCuda(a) => train_cmd::selfcheck(a),
    }
}
