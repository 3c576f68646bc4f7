//! `shell`: the verbs at a prompt (history, tab completion), or read line by line from
//! standard input when it is not a terminal (scripted mode).

use std::{
    collections::BTreeSet,
    io::{BufRead, IsTerminal, Write},
    path::PathBuf,
    sync::{Arc, Mutex, mpsc},
};

use clap::Args;

use crate::{CliError, Command, ConfigArgs, Signal, Signals, parser::Parser};

/// The arguments of `shell`.
#[derive(Clone, Debug, Default, Args)]
#[non_exhaustive]
pub struct ShellArgs {
    /// Config file, overrides and broker: the defaults of every command typed in the
    /// shell (a command's own options come after them and win).
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// Verbs that make no sense inside the shell.
pub(crate) const NOT_IN_SHELL: [&str; 2] = ["run", "shell"];

/// Words the shell itself understands.
const SHELL_WORDS: [&str; 3] = ["help", "exit", "quit"];

/// What the line reader hands over.
enum Input {
    Line(String),
    /// Ctrl-C at the prompt: a new prompt.
    Interrupted,
    /// Ctrl-D or the end of standard input.
    End,
    /// The terminal failed.
    Failed(String),
}

/// Names offered by tab completion: the binary's services and their RPC methods, and the
/// services and methods used in this session.
pub(crate) type Names = Arc<Mutex<BTreeSet<String>>>;

/// Runs the shell: each command is parsed by `parser` as on the command line and run by
/// `execute`.
pub(crate) async fn shell(
    parser: &Parser,
    standalone: bool,
    args: ShellArgs,
    signals: &mut Signals,
    out: &mut (dyn Write + Send),
    err: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let names: Names = Arc::new(Mutex::new(registered_names()));
    let verbs = parser.shell_verbs();
    let interactive = std::io::stdin().is_terminal();
    let (requests, mut inputs) = reader(interactive, parser.bin_name(), &verbs, Arc::clone(&names));
    if interactive {
        writeln!(
            out,
            "{} shell: `help` lists the commands, `exit` or Ctrl-D leaves",
            parser.bin_name()
        )?;
    }
    let base = base_args(&args.config);
    let mut failures = 0_usize;
    loop {
        if requests.send(()).is_err() {
            break;
        }
        let input = tokio::select! {
            input = inputs.recv() => input,
            signal = signals.next() => {
                // A script ends at any signal; at the prompt, Ctrl-C is the line
                // editor's and only SIGTERM ends the shell.
                if !interactive {
                    return Err(CliError::Cancelled(signal));
                }
                if signal == Signal::Terminate { break; }
                continue;
            }
        };
        let line = match input {
            Some(Input::Line(line)) => line,
            Some(Input::Interrupted) => continue,
            Some(Input::End) | None => break,
            Some(Input::Failed(reason)) => {
                return Err(CliError::Usage(format!("cannot read the shell's input: {reason}")));
            }
        };
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let shell = Shell {
            parser,
            standalone,
            interactive,
            base: &base,
            names: &names,
            verbs: &verbs,
        };
        match shell.run_line(line, signals, out, err).await {
            Step::Next => {}
            Step::Failed => failures += 1,
            Step::Exit => break,
            Step::Terminate => {
                failures += 1;
                break;
            }
        }
    }
    out.flush()?;
    if failures > 0 && !interactive {
        return Err(CliError::ShellFailures(failures));
    }
    Ok(())
}

enum Step {
    Next,
    Failed,
    Exit,
    Terminate,
}

/// What running a line needs.
struct Shell<'a> {
    parser: &'a Parser,
    standalone: bool,
    interactive: bool,
    base: &'a [String],
    names: &'a Names,
    verbs: &'a [(String, String)],
}

impl Shell<'_> {
    async fn run_line(
        &self,
        line: &str,
        signals: &mut Signals,
        out: &mut (dyn Write + Send),
        err: &mut (dyn Write + Send),
    ) -> Step {
        let Self {
            parser,
            standalone,
            base,
            names,
            verbs,
            ..
        } = *self;
        let words = match split_line(line) {
            Ok(words) => words,
            Err(reason) => {
                let _ = writeln!(err, "error: {reason}");
                return Step::Failed;
            }
        };
        let Some(verb) = words.first() else {
            return Step::Next;
        };
        match verb.as_str() {
            "exit" | "quit" => return Step::Exit,
            "help" => {
                let _ = write_help(out, parser.bin_name(), verbs);
                return Step::Next;
            }
            verb if NOT_IN_SHELL.contains(&verb) => {
                let _ = writeln!(err, "error: `{verb}` is not a shell command; `help` lists them");
                return Step::Failed;
            }
            _ => {}
        }
        let mut argv = vec![parser.bin_name().to_owned(), verb.clone()];
        if parser.takes_config(verb) {
            argv.extend(base.iter().cloned());
        }
        argv.extend(words[1..].iter().cloned());
        let command = match parser.parse_shell_line(argv) {
            Ok(command) => command,
            Err(error) => {
                let text = error.render().to_string();
                let text = text.trim_end();
                if error.use_stderr() {
                    let _ = writeln!(err, "{text}");
                    return Step::Failed;
                }
                let _ = writeln!(out, "{text}");
                return Step::Next;
            }
        };
        let reads_stdin = match &command {
            Command::Request(request) => request.json.as_deref() == Some("-"),
            Command::Emit(emit) => emit.json.as_deref() == Some("-"),
            _ => false,
        };
        if reads_stdin {
            let _ = writeln!(
                err,
                "error: `-` (JSON from standard input) cannot be used in the shell: write the JSON on the line"
            );
            return Step::Failed;
        }
        let used = used_names(&command);
        match crate::execute(command, standalone, parser, signals, out, err).await {
            Ok(()) => {
                names.lock().unwrap_or_else(|p| p.into_inner()).extend(used);
                Step::Next
            }
            Err(error) => {
                let _ = crate::report(err, &error);
                if matches!(error, CliError::Cancelled(Signal::Terminate))
                    || (!self.interactive && matches!(error, CliError::Cancelled(_)))
                {
                    Step::Terminate
                } else {
                    Step::Failed
                }
            }
        }
    }
}

/// The options of `shell` passed on to each command.
fn base_args(config: &ConfigArgs) -> Vec<String> {
    let mut args = Vec::new();
    if let Some(file) = &config.config {
        args.push("--config".to_owned());
        args.push(file.display().to_string());
    }
    for define in &config.define {
        args.push("--define".to_owned());
        args.push(define.clone());
    }
    if let Some(broker) = &config.broker {
        args.push("--broker".to_owned());
        args.push(broker.clone());
    }
    args
}

/// The names a successful command adds to tab completion.
fn used_names(command: &Command) -> Vec<String> {
    match command {
        Command::Request(request) => vec![request.target.service.clone(), request.target.to_string()],
        Command::Emit(emit) => vec![emit.service.clone(), emit.event.clone()],
        Command::Subscribe(subscribe) => std::iter::once(subscribe.service.clone())
            .chain(subscribe.events.iter().cloned())
            .collect(),
        _ => Vec::new(),
    }
}

/// The services built into this binary and their RPC methods as `service.method`.
fn registered_names() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    if let Ok(services) = nameko_core::registry::registered_services() {
        for service in services {
            names.insert(service.name().to_owned());
            for (method, kind) in service.entrypoints() {
                if kind == "rpc" {
                    names.insert(format!("{}.{method}", service.name()));
                }
            }
        }
    }
    names
}

fn write_help(out: &mut dyn Write, bin: &str, verbs: &[(String, String)]) -> std::io::Result<()> {
    writeln!(out, "Commands (as on the command line, without `{bin}`):")?;
    let width = verbs.iter().map(|(name, _)| name.len()).max().unwrap_or(0).max(4);
    for (name, about) in verbs {
        writeln!(out, "  {name:<width$}  {about}")?;
    }
    writeln!(out, "  {:<width$}  this list", "help")?;
    writeln!(out, "  {:<width$}  leaves the shell (or Ctrl-D)", "exit")?;
    writeln!(
        out,
        "`COMMAND --help` shows a command's options and examples. For example:"
    )?;
    writeln!(out, "  request greeting.greet {{\"name\": \"Ada\"}}")?;
    writeln!(out, "  emit greeting greeted {{\"name\": \"Ada\"}}")?;
    out.flush()
}

/// Splits a shell line into words: whitespace separates, `'...'` is literal, `"..."`
/// takes `\"` and `\\`, a backslash outside quotes escapes the next character, and an
/// unquoted word starting with `{` or `[` is JSON running to the end of the line (so
/// `request greeting.greet {"name": "Ada"}` needs no quotes).
pub(crate) fn split_line(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = line.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if let Some(done) = word.take() {
                    words.push(done);
                }
            }
            '{' | '[' if word.is_none() => {
                words.push(line[at..].trim_end().to_owned());
                return Ok(words);
            }
            '\'' => {
                let current = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some((_, '\'')) => break,
                        Some((_, c)) => current.push(c),
                        None => return Err("unclosed single quote".to_owned()),
                    }
                }
            }
            '"' => {
                let current = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some((_, '"')) => break,
                        Some((_, '\\')) => match chars.next() {
                            Some((_, c @ ('"' | '\\'))) => current.push(c),
                            Some((_, c)) => {
                                current.push('\\');
                                current.push(c);
                            }
                            None => return Err("unclosed double quote".to_owned()),
                        },
                        Some((_, c)) => current.push(c),
                        None => return Err("unclosed double quote".to_owned()),
                    }
                }
            }
            '\\' => {
                let current = word.get_or_insert_with(String::new);
                match chars.next() {
                    Some((_, c)) => current.push(c),
                    None => return Err("a backslash ends the line".to_owned()),
                }
            }
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    if let Some(done) = word {
        words.push(done);
    }
    Ok(words)
}

/// Where the interactive shell keeps its history: `$XDG_STATE_HOME/nameko/history`
/// when `XDG_STATE_HOME` is set, else `~/.nameko_history`.
pub(crate) fn history_path() -> Option<PathBuf> {
    if let Some(state) = std::env::var_os("XDG_STATE_HOME").filter(|dir| !dir.is_empty()) {
        return Some(PathBuf::from(state).join("nameko").join("history"));
    }
    std::env::var_os("HOME")
        .filter(|home| !home.is_empty())
        .map(|home| PathBuf::from(home).join(".nameko_history"))
}

/// Starts the thread reading lines: one line per `()` sent on the returned sender.
fn reader(
    interactive: bool,
    bin: &str,
    verbs: &[(String, String)],
    names: Names,
) -> (mpsc::Sender<()>, tokio::sync::mpsc::UnboundedReceiver<Input>) {
    let (request_tx, request_rx) = mpsc::channel::<()>();
    let (input_tx, input_rx) = tokio::sync::mpsc::unbounded_channel();
    let prompt = format!("{bin}> ");
    let verbs: Vec<String> = verbs.iter().map(|(name, _)| name.clone()).collect();
    std::thread::spawn(move || {
        if interactive {
            interactive_reader(&prompt, verbs, names, &request_rx, &input_tx);
        } else {
            let stdin = std::io::stdin();
            let mut lines = stdin.lock().lines();
            while request_rx.recv().is_ok() {
                let input = match lines.next() {
                    Some(Ok(line)) => Input::Line(line),
                    Some(Err(err)) => Input::Failed(err.to_string()),
                    None => Input::End,
                };
                if input_tx.send(input).is_err() {
                    break;
                }
            }
        }
    });
    (request_tx, input_rx)
}

/// Reads lines with a line editor: history in [`history_path`], tab completion of the
/// verbs (first word) and of service and `service.method` names (later words).
#[cfg(feature = "shell")]
fn interactive_reader(
    prompt: &str,
    verbs: Vec<String>,
    names: Names,
    requests: &mpsc::Receiver<()>,
    inputs: &tokio::sync::mpsc::UnboundedSender<Input>,
) {
    use rustyline::{Editor, error::ReadlineError, history::FileHistory};

    let mut editor = match Editor::<completion::ShellHelper, FileHistory>::new() {
        Ok(editor) => editor,
        Err(err) => {
            let _ = inputs.send(Input::Failed(err.to_string()));
            return;
        }
    };
    editor.set_helper(Some(completion::ShellHelper { verbs, names }));
    let history = history_path();
    if let Some(path) = &history {
        let _ = editor.load_history(path);
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
    }
    while requests.recv().is_ok() {
        let input = match editor.readline(prompt) {
            Ok(line) => {
                if !line.trim().is_empty() {
                    let _ = editor.add_history_entry(line.as_str());
                    if let Some(path) = &history {
                        let _ = editor.append_history(path);
                    }
                }
                Input::Line(line)
            }
            Err(ReadlineError::Interrupted) => Input::Interrupted,
            Err(ReadlineError::Eof) => Input::End,
            Err(err) => Input::Failed(err.to_string()),
        };
        if inputs.send(input).is_err() {
            break;
        }
    }
}

/// Without the `shell` feature: a prompt and plain lines (no history, no completion).
#[cfg(not(feature = "shell"))]
fn interactive_reader(
    prompt: &str,
    _verbs: Vec<String>,
    _names: Names,
    requests: &mpsc::Receiver<()>,
    inputs: &tokio::sync::mpsc::UnboundedSender<Input>,
) {
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    while requests.recv().is_ok() {
        eprint!("{prompt}");
        let input = match lines.next() {
            Some(Ok(line)) => Input::Line(line),
            Some(Err(err)) => Input::Failed(err.to_string()),
            None => Input::End,
        };
        if inputs.send(input).is_err() {
            break;
        }
    }
}

#[cfg(feature = "shell")]
mod completion {
    use rustyline::{
        Context, Helper, completion::Completer, highlight::Highlighter, hint::Hinter, validate::Validator,
    };

    use super::{Names, SHELL_WORDS};

    /// Completes verbs as the first word, names after it.
    pub(super) struct ShellHelper {
        pub(super) verbs: Vec<String>,
        pub(super) names: Names,
    }

    impl ShellHelper {
        /// The candidates for the word `line[start..pos]`.
        pub(super) fn candidates(&self, line: &str, pos: usize) -> (usize, Vec<String>) {
            let before = &line[..pos];
            let start = before.rfind(char::is_whitespace).map_or(0, |at| at + 1);
            let word = &before[start..];
            let first = before[..start].trim().is_empty();
            let mut found: Vec<String> = if first {
                self.verbs
                    .iter()
                    .map(String::as_str)
                    .chain(SHELL_WORDS)
                    .filter(|verb| verb.starts_with(word))
                    .map(str::to_owned)
                    .collect()
            } else {
                self.names
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                    .filter(|name| name.starts_with(word))
                    .cloned()
                    .collect()
            };
            found.sort();
            found.dedup();
            (start, found)
        }
    }

    impl Completer for ShellHelper {
        type Candidate = String;

        fn complete(&self, line: &str, pos: usize, _ctx: &Context<'_>) -> rustyline::Result<(usize, Vec<String>)> {
            Ok(self.candidates(line, pos))
        }
    }

    impl Hinter for ShellHelper {
        type Hint = String;
    }

    impl Highlighter for ShellHelper {}

    impl Validator for ShellHelper {}

    impl Helper for ShellHelper {}

    #[cfg(test)]
    mod tests {
        use std::sync::{Arc, Mutex};

        use super::*;

        #[test]
        fn verbs_first_then_names() {
            let helper = ShellHelper {
                verbs: vec!["request".into(), "emit".into(), "list".into()],
                names: Arc::new(Mutex::new(
                    [
                        "greeting".to_owned(),
                        "greeting.greet".to_owned(),
                        "orders.place".to_owned(),
                    ]
                    .into(),
                )),
            };
            assert_eq!(helper.candidates("re", 2), (0, vec!["request".to_owned()]));
            assert_eq!(
                helper.candidates("e", 1),
                (0, vec!["emit".to_owned(), "exit".to_owned()])
            );
            assert_eq!(
                helper.candidates("request gre", 11),
                (8, vec!["greeting".to_owned(), "greeting.greet".to_owned()])
            );
            assert_eq!(
                helper.candidates("request greeting.", 17),
                (8, vec!["greeting.greet".to_owned()])
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::split_line;

    #[test]
    fn lines_split_like_a_shell_with_bare_json() {
        assert_eq!(
            split_line(r#"request greeting.greet {"name": "Ada Lovelace"}  "#).unwrap(),
            ["request", "greeting.greet", r#"{"name": "Ada Lovelace"}"#]
        );
        assert_eq!(
            split_line(r#"request --timeout 5 svc.m ["a", 1]"#).unwrap(),
            ["request", "--timeout", "5", "svc.m", r#"["a", 1]"#]
        );
        assert_eq!(
            split_line(r#"request svc.m '"quoted"' --context user_id="u 1""#).unwrap(),
            ["request", "svc.m", "\"quoted\"", "--context", "user_id=u 1"]
        );
        assert_eq!(split_line(r"emit a\ b c").unwrap(), ["emit", "a b", "c"]);
        assert_eq!(split_line("x{y}").unwrap(), ["x{y}"]);
        assert!(split_line("request 'open").unwrap_err().contains("single quote"));
        assert!(split_line("request \"open").unwrap_err().contains("double quote"));
        assert!(split_line("   ").unwrap().is_empty());
    }
}
