//! Man pages and shell completions, generated from the same clap definition the command line
//! parses with (so they cannot drift): `recoveryctl completion bash|zsh|fish` prints a
//! completion script; the hidden `recoveryctl generate-docs` writes `recoveryctl.1` and one
//! page per subcommand (`recoveryctl-backup.1`, ...) plus the three completion files, and is
//! what the RPM's %install runs.

use std::path::Path;

use anyhow::{Context, Result};
use clap::CommandFactory;
use clap_complete::Shell;

use super::Cli;

/// The completion script for `shell`, on stdout.
pub(super) fn completion(shell: Shell) -> Result<u8> {
    let mut cmd = Cli::command();
    clap_complete::generate(shell, &mut cmd, "recoveryctl", &mut std::io::stdout());
    Ok(super::exit::OK)
}

/// Write the man pages into `man_dir` and the completions into `completions_dir` (as
/// `recoveryctl.bash`, `_recoveryctl`, `recoveryctl.fish`).
pub(super) fn generate(man_dir: &Path, completions_dir: &Path) -> Result<u8> {
    std::fs::create_dir_all(man_dir).with_context(|| format!("creating {}", man_dir.display()))?;
    let cmd = Cli::command()
        .after_help(super::exit::help())
        .version(super::version());
    clap_mangen::generate_to(cmd, man_dir)
        .with_context(|| format!("writing the man pages into {}", man_dir.display()))?;
    std::fs::create_dir_all(completions_dir)
        .with_context(|| format!("creating {}", completions_dir.display()))?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let mut cmd = Cli::command();
        clap_complete::generate_to(shell, &mut cmd, "recoveryctl", completions_dir)
            .with_context(|| format!("writing the {shell} completion"))?;
    }
    Ok(super::exit::OK)
}
