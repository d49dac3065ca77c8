//! `strata completions SHELL` and `strata manpages DIR`: both generated
//! from the command-line definition, so they never fall behind it.

use std::path::{Path, PathBuf};

use clap::{Args, CommandFactory, ValueEnum};
use clap_complete::Shell;

use super::{Cli, CmdResult, Failure};

#[derive(Clone, Copy, ValueEnum)]
pub enum CompletionShell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Args)]
#[command(after_help = "Examples:\n  \
source <(strata completions bash)                # this shell only\n  \
strata completions bash > /usr/share/bash-completion/completions/strata\n  \
strata completions zsh > /usr/share/zsh/vendor-completions/_strata\n  \
strata completions fish > ~/.config/fish/completions/strata.fish\n\n\
mount-helpers/install puts all three where their shells look.")]
pub struct CompletionsArgs {
    /// The shell to complete for
    shell: CompletionShell,
}

#[derive(Args)]
#[command(after_help = "Example:\n  \
strata manpages /usr/local/share/man/man1 && man strata-snapshot-create\n\n\
mount-helpers/install does this.")]
pub struct ManpagesArgs {
    /// Directory to write strata.1 and one page per subcommand into
    /// (strata-disk-create.1, ...); it is created if missing
    dir: PathBuf,
}

pub fn completions(a: CompletionsArgs) -> CmdResult {
    let shell = match a.shell {
        CompletionShell::Bash => Shell::Bash,
        CompletionShell::Zsh => Shell::Zsh,
        CompletionShell::Fish => Shell::Fish,
    };
    clap_complete::generate(shell, &mut Cli::command(), "strata", &mut std::io::stdout());
    Ok(())
}

pub fn manpages(a: ManpagesArgs) -> CmdResult {
    let fail = |p: &Path, e: std::io::Error| Failure::Refused(format!("{}: {e}", p.display()));
    std::fs::create_dir_all(&a.dir).map_err(|e| fail(&a.dir, e))?;
    clap_mangen::generate_to(Cli::command(), &a.dir).map_err(|e| fail(&a.dir, e))?;
    let mut pages: Vec<_> = std::fs::read_dir(&a.dir)
        .map_err(|e| fail(&a.dir, e))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("strata") && n.ends_with(".1"))
        .collect();
    pages.sort();
    println!("wrote {} man pages to {}", pages.len(), a.dir.display());
    Ok(())
}
