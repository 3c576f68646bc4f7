//! Building and using the clap command of a [`Cli`](crate::Cli): on the command line
//! and for each line of the `shell`.

use std::ffi::OsString;

use clap::{CommandFactory, FromArgMatches, error::ErrorKind};

use crate::{Command, TransportKind, args::Invocation, examples::examples, shell::NOT_IN_SHELL};

/// The program's name, version and the clap command built from them.
#[derive(Clone, Debug)]
pub(crate) struct Parser {
    name: Option<&'static str>,
    version: Option<&'static str>,
    bin: String,
}

impl Parser {
    /// `name` if given, else the file name of `arg0` (the program), else `nameko`.
    pub(crate) fn new(name: Option<&'static str>, version: Option<&'static str>, arg0: Option<&OsString>) -> Self {
        let bin = name.map(str::to_owned).unwrap_or_else(|| {
            arg0.and_then(|arg0| {
                std::path::Path::new(arg0)
                    .file_name()
                    .map(|name| name.to_string_lossy().into_owned())
            })
            .unwrap_or_else(|| "nameko".to_owned())
        });
        Self { name, version, bin }
    }

    /// The name examples and completions use.
    pub(crate) fn bin_name(&self) -> &str {
        &self.bin
    }

    /// The clap command, with an `Examples:` section on each verb's help.
    pub(crate) fn command(&self) -> clap::Command {
        let mut command = Invocation::command();
        if let Some(name) = self.name {
            command = command.name(name).bin_name(name);
        }
        if let Some(version) = self.version {
            command = command.version(version);
        }
        command = command.after_help(format!(
            "`{} COMMAND --help` shows a command's options and examples.",
            self.bin
        ));
        let verbs: Vec<String> = command
            .get_subcommands()
            .map(|verb| verb.get_name().to_owned())
            .collect();
        for verb in verbs {
            if let Some(text) = examples(&verb, &self.bin) {
                command = command.mut_subcommand(&verb, |sub| sub.after_help(text));
            }
        }
        command
    }

    /// Parses a command line (the first argument is the program name).
    pub(crate) fn parse<I, T>(&self, args: I) -> Result<Command, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        self.parse_with(self.command(), args)
    }

    /// Parses one line of the shell (the program name, the verb, the shell's own config
    /// options, then the line's): later options override earlier ones.
    pub(crate) fn parse_shell_line(&self, argv: Vec<String>) -> Result<Command, clap::Error> {
        let mut command = self.command();
        let verbs: Vec<String> = command
            .get_subcommands()
            .map(|verb| verb.get_name().to_owned())
            .collect();
        for verb in verbs {
            command = command.mut_subcommand(&verb, |sub| sub.args_override_self(true));
        }
        self.parse_with(command, argv)
    }

    fn parse_with<I, T>(&self, mut command: clap::Command, args: I) -> Result<Command, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let matches = command.try_get_matches_from_mut(args)?;
        let invocation = Invocation::from_arg_matches(&matches).map_err(|err| err.format(&mut command))?;
        if let Command::Run(run) = &invocation.command
            && run.transport == Some(TransportKind::Memory)
            && run.config.broker.is_some()
        {
            let run_command = command.find_subcommand_mut("run").expect("`run` is a subcommand");
            return Err(run_command.error(
                ErrorKind::ArgumentConflict,
                "`--transport memory` cannot be used with `--broker`: the broker URI is for the AMQP transport",
            ));
        }
        Ok(invocation.command)
    }

    /// The verbs the shell offers, with their one-line descriptions.
    pub(crate) fn shell_verbs(&self) -> Vec<(String, String)> {
        self.command()
            .get_subcommands()
            .filter(|verb| !NOT_IN_SHELL.contains(&verb.get_name()))
            .map(|verb| {
                (
                    verb.get_name().to_owned(),
                    verb.get_about().map(ToString::to_string).unwrap_or_default(),
                )
            })
            .collect()
    }

    /// Whether `verb` takes the config options (`--config`, `--define`, `--broker`).
    pub(crate) fn takes_config(&self, verb: &str) -> bool {
        self.command()
            .find_subcommand(verb)
            .is_some_and(|sub| sub.get_arguments().any(|arg| arg.get_id() == "broker"))
    }
}
