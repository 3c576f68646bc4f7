//! `run --log-format` as parsed (the output itself is tested through a binary, in
//! `examples/greeting/tests/logs.rs`).

use nameko_cli::{Cli, Command, LogFormat};

fn log_format(args: &[&str]) -> Result<LogFormat, String> {
    let mut all = vec!["app", "run"];
    all.extend_from_slice(args);
    match Cli::new().parse(all).map_err(|e| e.to_string())? {
        Command::Run(run) => Ok(run.log_format),
        other => panic!("not `run`: {other:?}"),
    }
}

#[test]
fn log_format_is_human_unless_asked() {
    // The tests never set NAMEKO_LOG_FORMAT, which would change the default.
    if std::env::var_os("NAMEKO_LOG_FORMAT").is_some() {
        eprintln!("skipping the default: NAMEKO_LOG_FORMAT is set");
    } else {
        assert_eq!(log_format(&[]), Ok(LogFormat::Human));
    }
    assert_eq!(log_format(&["--log-format", "json"]), Ok(LogFormat::Json));
    assert_eq!(log_format(&["--log-format", "human"]), Ok(LogFormat::Human));
    let err = log_format(&["--log-format", "xml"]).unwrap_err();
    assert!(err.contains("xml") && err.contains("json"), "{err}");
}
