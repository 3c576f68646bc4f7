//! `run --instances SERVICE=N`: several containers of one service in one process.

use std::process::ExitCode;

use nameko_cli::{Cli, Command, Signal};

use crate::support::{Mode, Probe, cli_with, run, run_now, signals};

#[test]
fn instances_parse_repeated_or_as_a_list() {
    let Command::Run(run) = Cli::new()
        .parse(["app", "run", "--instances", "a=2,b=1", "--instances", "c=3"])
        .unwrap()
    else {
        unreachable!()
    };
    assert_eq!(
        run.instances,
        [("a".to_owned(), 2), ("b".to_owned(), 1), ("c".to_owned(), 3)]
    );
}

#[tokio::test]
async fn each_instance_is_a_container_of_its_own() {
    let probe = Probe::new(Mode::Quick);
    let (sender, signals) = signals();
    let driver = async {
        for _ in 0..1000 {
            if probe.events().iter().filter(|e| *e == "cli-other started").count() == 3 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert!(sender.send(Signal::Interrupt));
    };
    let args = [
        "run",
        "cli-other",
        "--instances",
        "cli-other=3",
        "--transport",
        "memory",
    ];
    let (out, ()) = tokio::join!(run(cli_with(&probe), &args, signals), driver);
    assert_eq!(out.code, ExitCode::SUCCESS, "{}", out.stderr);
    let started = probe.events().iter().filter(|e| *e == "cli-other started").count();
    assert_eq!(
        started,
        3,
        "each instance's `once` entrypoint fired: {:?}",
        probe.events()
    );
}

#[tokio::test]
async fn instances_of_a_service_not_run_are_an_error() {
    let probe = Probe::new(Mode::Quick);
    let out = run_now(
        cli_with(&probe),
        &[
            "run",
            "cli-other",
            "--instances",
            "cli-probe=2",
            "--transport",
            "memory",
        ],
    )
    .await;
    assert_eq!(out.code, ExitCode::FAILURE);
    assert!(
        out.stderr
            .contains("no service named `cli-probe`; known services: cli-other"),
        "{}",
        out.stderr
    );
    let out = run_now(
        cli_with(&probe),
        &[
            "run",
            "--instances",
            "cli-other=2",
            "--instances",
            "cli-other=3",
            "--transport",
            "memory",
        ],
    )
    .await;
    assert_eq!(out.code, ExitCode::FAILURE);
    assert!(
        out.stderr
            .contains("cannot run instances of service `cli-other`: its instances were given twice"),
        "{}",
        out.stderr
    );
    let out = run_now(
        cli_with(&probe),
        &["run", "--instances", "cli-other", "--transport", "memory"],
    )
    .await;
    assert_eq!(out.code, ExitCode::from(2));
    assert!(out.stderr.contains("expected SERVICE=N"), "{}", out.stderr);
}
