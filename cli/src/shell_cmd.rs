//! `ablate completions SHELL` (clap_complete) and `ablate man` (clap_mangen): generated from
//! the same command definition the parser uses, so they never drift from it.

use clap::{Args, CommandFactory};
use std::path::PathBuf;

#[derive(Args)]
pub struct CompletionsArgs {
    /// bash, zsh, fish, elvish or powershell. Install, e.g.:
    /// `ablate completions bash > ~/.local/share/bash-completion/completions/ablate`.
    shell: clap_complete::Shell,
}

#[derive(Args)]
pub struct ManArgs {
    /// Write ablate.1 and one page per subcommand (ablate-run.1, ...) into this folder
    /// instead of ablate.1 to stdout.
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn completions(a: CompletionsArgs) -> anyhow::Result<()> {
    clap_complete::generate(a.shell, &mut crate::Cli::command(), "ablate", &mut std::io::stdout());
    Ok(())
}

pub fn man(a: ManArgs) -> anyhow::Result<()> {
    let cmd = crate::Cli::command();
    match a.out {
        None => clap_mangen::Man::new(cmd).render(&mut std::io::stdout())?,
        Some(dir) => {
            std::fs::create_dir_all(&dir)?;
            clap_mangen::generate_to(cmd, &dir)?;
            eprintln!("man pages in {} (man -l {}/ablate.1)", dir.display(), dir.display());
        }
    }
    Ok(())
}
