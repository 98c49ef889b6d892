//! The `ablate` command line.

mod assets_cmd;
mod data_cmd;
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
    /// Train one arm in this process on CPU.
    Train(train_cmd::TrainArgs),
    /// Benchmarks that print their figures.
    #[command(subcommand)]
    Bench(train_cmd::BenchCmd),
    /// Look at the training data.
    #[command(subcommand)]
    Data(data_cmd::DataCmd),
    /// Reproduce the small networks that ship in assets/.
    #[command(subcommand)]
    Assets(assets_cmd::AssetsCmd),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).with_writer(std::io::stderr).init();
    match Cli::parse().cmd {
        Cmd::Train(a) => train_cmd::train(a),
        Cmd::Bench(b) => train_cmd::bench(b),
        Cmd::Assets(a) => assets_cmd::assets(a),
        Cmd::Data(d) => data_cmd::data(d),
    }
}
