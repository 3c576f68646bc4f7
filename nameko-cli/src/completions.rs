//! `completions`: shell completion scripts, generated from the command line itself.

use std::io::Write;

use clap::{Args, ValueEnum};

/// The arguments of `completions`.
#[derive(Clone, Debug, Args)]
#[non_exhaustive]
pub struct CompletionsArgs {
    /// The shell to write a completion script for.
    #[arg(value_enum, value_name = "SHELL")]
    pub shell: CompletionShell,
}

/// A shell `completions` writes a script for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
#[non_exhaustive]
pub enum CompletionShell {
    /// Bash.
    Bash,
    /// Zsh.
    Zsh,
    /// Fish.
    Fish,
}

/// Writes the completion script of `command` (named `bin`) for `shell` to `out`.
pub(crate) fn write(shell: CompletionShell, command: &mut clap::Command, bin: &str, out: &mut dyn Write) {
    let shell = match shell {
        CompletionShell::Bash => clap_complete::Shell::Bash,
        CompletionShell::Zsh => clap_complete::Shell::Zsh,
        CompletionShell::Fish => clap_complete::Shell::Fish,
    };
    clap_complete::generate(shell, command, bin, out);
}
