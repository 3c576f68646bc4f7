//! The command line driven through `Cli::parse` and `Cli::run_from`.

use std::{path::PathBuf, process::ExitCode, sync::Arc, time::Duration};

use nameko_cli::{Cli, Command, Signal, Transport, TransportKind};
use nameko_core::Resources;

use crate::support::{Mode, PROBE_LINE, Probe, cli_with, run, run_now, signals};

/// A fresh file in the temp directory holding `yaml`.
fn config_file(name: &str, yaml: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("nameko-cli-it-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, yaml).unwrap();
    path
}

const USAGE: u8 = 2;

// ===== parsing =====

#[test]
fn run_defaults() {
    let Command::Run(run) = Cli::new().parse(["app", "run"]).unwrap() else {
        panic!("not run");
    };
    assert!(run.services.is_empty());
    assert_eq!(run.transport, None);
    assert_eq!(run.stop_timeout, Duration::from_secs(30));
    assert_eq!(run.config.config, None);
    assert!(run.config.define.is_empty());
    assert_eq!(run.config.broker, None);
}

#[test]
fn run_with_everything() {
    let args = [
        "app",
        "run",
        "a",
        "b",
        "--config",
        "c.yaml",
        "--define",
        "max_workers=3",
        "-d",
        "GREETING.salutation=Hi",
        "--define=x=1",
        "--transport",
        "amqp",
        "--broker",
        "amqp://rabbit/",
        "--stop-timeout",
        "2.5",
    ];
    let Command::Run(run) = Cli::new().parse(args).unwrap() else {
        panic!("not run");
    };
    assert_eq!(run.services, ["a", "b"]);
    assert_eq!(run.config.config, Some(PathBuf::from("c.yaml")));
    assert_eq!(run.config.define, ["max_workers=3", "GREETING.salutation=Hi", "x=1"]);
    assert_eq!(run.transport, Some(TransportKind::Amqp));
    assert_eq!(run.config.broker.as_deref(), Some("amqp://rabbit/"));
    assert_eq!(run.stop_timeout, Duration::from_millis(2500));
}

#[test]
fn show_config_and_list_parse() {
    let Command::ShowConfig(config) = Cli::new()
        .parse([
            "app",
            "show-config",
            "-c",
            "f.yaml",
            "-d",
            "a=1",
            "-d",
            "b=2",
            "--broker",
            "amqp://h/",
        ])
        .unwrap()
    else {
        panic!("not show-config");
    };
    assert_eq!(config.config, Some(PathBuf::from("f.yaml")));
    assert_eq!(config.define, ["a=1", "b=2"]);
    assert_eq!(config.broker.as_deref(), Some("amqp://h/"));
    assert!(matches!(Cli::new().parse(["app", "list"]).unwrap(), Command::List));
}

#[test]
fn every_service_binary_has_the_client_verbs() {
    use nameko_cli::CompletionShell;

    let Command::Request(request) = Cli::new()
        .parse([
            "app",
            "request",
            "greeting.greet",
            "{\"name\": \"Ada\"}",
            "--timeout",
            "0",
            "--context",
            "user_id=7",
            "--raw",
            "--broker",
            "amqp://h/",
        ])
        .unwrap()
    else {
        panic!("not request");
    };
    assert_eq!(request.target.to_string(), "greeting.greet");
    assert_eq!(request.json.as_deref(), Some("{\"name\": \"Ada\"}"));
    assert_eq!(request.timeout, Some(Duration::ZERO));
    assert_eq!(request.context, [("user_id".to_owned(), serde_json::json!(7))]);
    assert!(request.raw);
    assert_eq!(request.config.broker.as_deref(), Some("amqp://h/"));
    let Command::Emit(emit) = Cli::new().parse(["app", "emit", "greeting", "greeted", "{}"]).unwrap() else {
        panic!("not emit");
    };
    assert_eq!((emit.service.as_str(), emit.event.as_str()), ("greeting", "greeted"));
    let Command::Subscribe(subscribe) = Cli::new()
        .parse(["app", "subscribe", "greeting", "greeted", "*", "-n", "3"])
        .unwrap()
    else {
        panic!("not subscribe");
    };
    assert_eq!(
        (subscribe.events.as_slice(), subscribe.count),
        (&["greeted".to_owned(), "*".to_owned()][..], Some(3))
    );
    assert!(matches!(
        Cli::new().parse(["app", "shell", "-d", "a=1"]).unwrap(),
        Command::Shell(_)
    ));
    let Command::Completions(completions) = Cli::new().parse(["app", "completions", "zsh"]).unwrap() else {
        panic!("not completions");
    };
    assert_eq!(completions.shell, CompletionShell::Zsh);
    assert!(
        Cli::new().parse(["app", "subscribe", "greeting"]).is_err(),
        "an event is required"
    );
}

#[test]
fn memory_transport_conflicts_with_broker() {
    let err = Cli::new()
        .parse(["app", "run", "--transport", "memory", "--broker", "amqp://h/"])
        .unwrap_err();
    assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
    assert_eq!(err.exit_code(), 2);
    // Either order, and AMQP with a broker is fine.
    assert!(
        Cli::new()
            .parse(["app", "run", "--broker", "amqp://h/", "--transport", "memory"])
            .is_err()
    );
    assert!(
        Cli::new()
            .parse(["app", "run", "--transport", "amqp", "--broker", "amqp://h/"])
            .is_ok()
    );
}

#[tokio::test]
async fn usage_errors_exit_2() {
    let out = run_now(Cli::new(), &["run", "--transport", "memory", "--broker", "amqp://h/"]).await;
    assert_eq!(out.code, ExitCode::from(USAGE));
    assert!(
        out.stderr
            .contains("`--transport memory` cannot be used with `--broker`"),
        "{}",
        out.stderr
    );

    for args in [
        &["run", "--transport", "carrier-pigeon"][..],
        &["run", "--stop-timeout", "soon"],
        &["run", "--stop-timeout", "-1"],
        &["frobnicate"],
        &[],
    ] {
        let out = run_now(Cli::new(), args).await;
        assert_eq!(out.code, ExitCode::from(USAGE), "{args:?}");
        assert!(
            out.stderr.contains("Usage:") || out.stderr.contains("--help"),
            "{args:?}: {}",
            out.stderr
        );
        assert_eq!(out.stdout, "", "{args:?}");
    }
}

#[tokio::test]
async fn help_and_version() {
    let out = run_now(Cli::new().name("greeting").version("1.2.3"), &["--help"]).await;
    assert_eq!(out.code, ExitCode::SUCCESS);
    assert!(out.stdout.contains("Usage: greeting <COMMAND>"), "{}", out.stdout);
    for verb in ["run", "list", "show-config"] {
        assert!(out.stdout.contains(verb), "{}", out.stdout);
    }
    let out = run_now(Cli::new().name("greeting").version("1.2.3"), &["--version"]).await;
    assert_eq!(out.code, ExitCode::SUCCESS);
    assert_eq!(out.stdout, "greeting 1.2.3\n");
}

// ===== transport choice =====

#[tokio::test]
async fn amqp_is_the_default_and_waits_for_rabbitmq() {
    let probe = Probe::new(Mode::Quick);
    // Port 1 on the loopback refuses at once: an unreachable RabbitMQ. `run` keeps
    // retrying (logging each attempt), never falls back to memory, and a SIGTERM
    // during the wait stops it cleanly.
    for args in [
        &["run", "cli-probe", "--broker", "amqp://app:hunter2@127.0.0.1:1/"][..],
        &[
            "run",
            "cli-probe",
            "--transport",
            "amqp",
            "--broker",
            "amqp://app:hunter2@127.0.0.1:1/",
        ],
        &[
            "run",
            "cli-probe",
            "--define",
            "AMQP_URI=amqp://app:hunter2@127.0.0.1:1/",
        ],
    ] {
        let (sender, signals) = signals();
        let driver = async {
            tokio::time::sleep(Duration::from_millis(1200)).await;
            assert!(probe.events().is_empty(), "nothing started: {:?}", probe.events());
            assert!(sender.send(Signal::Terminate));
        };
        let (out, ()) = tokio::join!(
            tokio::time::timeout(Duration::from_secs(10), run(cli_with(&probe), args, signals)),
            driver
        );
        let out = out.expect("SIGTERM ends the wait");
        assert_eq!(out.code, ExitCode::SUCCESS, "{args:?}: {}", out.stderr);
        assert_eq!(out.stderr, "", "{args:?}");
        assert!(probe.events().is_empty(), "{:?}", probe.events());
    }
    let out = run_now(
        cli_with(&probe),
        &["run", "--broker", "amqp://app:hunter2@rabbit:5672/%zz"],
    )
    .await;
    assert_eq!(out.code, ExitCode::from(USAGE), "an invalid AMQP_URI is a config error");
    assert!(
        out.stderr
            .starts_with("error: invalid AMQP_URI amqp://app:***@rabbit:5672/%zz"),
        "{}",
        out.stderr
    );
    // Failed before the resources hook, and nothing ran.
    assert!(probe.events().is_empty(), "{:?}", probe.events());
}

#[tokio::test]
async fn amqp_ssl_is_read_and_its_errors_are_located() {
    let probe = Probe::new(Mode::Quick);
    let broker = "amqp://app:hunter2@127.0.0.1:1/";
    let out = run_now(
        cli_with(&probe),
        &[
            "run",
            "cli-probe",
            "--broker",
            broker,
            "--define",
            "AMQP_SSL.cert_reqs=maybe",
        ],
    )
    .await;
    assert_eq!(out.code, ExitCode::from(USAGE), "an invalid AMQP_SSL is a config error");
    let expected = if cfg!(feature = "amqp-tls") {
        "error: --define AMQP_SSL.cert_reqs=maybe: AMQP_SSL.cert_reqs: expected CERT_NONE, CERT_OPTIONAL or \
         CERT_REQUIRED (or 0, 1, 2), got the string \"maybe\""
    } else {
        "error: --define AMQP_SSL.cert_reqs=maybe: AMQP_SSL: `AMQP_SSL` asks for TLS, but nameko-rs was built \
         without TLS support: enable the `amqp-tls` feature"
    };
    assert!(out.stderr.starts_with(expected), "{}", out.stderr);

    // AMQP_SSL turns the amqp:// URI to TLS (its port was given, so it stays); `run`
    // waits for RabbitMQ, so ask the transport itself, which fails fast.
    let config = nameko_core::Config::from_yaml_str(&format!("AMQP_URI: {broker}\nAMQP_SSL: true\n")).unwrap();
    let transport = Transport::select(None, &config);
    if cfg!(feature = "amqp-tls") {
        let error = match transport.unwrap().resources(&["cli-probe".to_owned()]).await {
            Ok(_) => panic!("nothing listens on port 1"),
            Err(error) => error.to_string(),
        };
        assert!(
            error.starts_with("cannot connect to RabbitMQ at amqps://app:***@127.0.0.1:1/%2F"),
            "{error}"
        );
        assert!(!error.contains("hunter2"), "{error}");
    } else {
        let Err(error) = transport else {
            panic!("TLS needs the feature")
        };
        let error = error.to_string();
        assert!(error.contains("enable the `amqp-tls` feature"), "{error}");
    }
    assert!(probe.events().is_empty(), "{:?}", probe.events());
}

#[tokio::test]
async fn memory_transport_shares_one_broker() {
    let probe = Probe::new(Mode::Quick);
    let (sender, signals) = signals();
    let driver = async {
        probe.wait_for("cli-probe started").await;
        probe.wait_for("cli-other started").await;
        assert!(sender.send(Signal::Interrupt));
    };
    let (out, ()) = tokio::join!(
        run(cli_with(&probe), &["run", "--transport", "memory"], signals),
        driver
    );
    assert_eq!(out.code, ExitCode::SUCCESS, "{}", out.stderr);
    assert_eq!(out.stderr, "");
    let brokers = probe.brokers();
    assert_eq!(brokers.len(), 2, "{brokers:?}");
    assert_eq!(brokers[0], brokers[1], "every service gets the same memory broker");
    assert!(probe.events().contains(&"resources hook".to_owned()));
}

// ===== run: stop and kill =====

#[tokio::test]
async fn first_signal_stops_gracefully() {
    let probe = Probe::new(Mode::Gated);
    let (sender, signals) = signals();
    let driver = async {
        probe.wait_for("cli-probe started").await;
        assert!(sender.send(Signal::Terminate));
        // The stop waits for the running worker.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!probe.events().contains(&"cli-probe finished".to_owned()));
        probe.gate.add_permits(1);
    };
    let (out, ()) = tokio::join!(
        run(
            cli_with(&probe),
            &["run", "cli-probe", "--transport", "memory"],
            signals
        ),
        driver
    );
    assert_eq!(out.code, ExitCode::SUCCESS, "{}", out.stderr);
    assert_eq!(probe.events().last().map(String::as_str), Some("cli-probe finished"));
    assert!(
        !probe.events().iter().any(|e| e.starts_with("cli-other")),
        "only cli-probe ran"
    );
}

#[tokio::test]
async fn second_signal_kills_a_stuck_worker() {
    let probe = Probe::new(Mode::Stuck);
    let (sender, signals) = signals();
    let driver = async {
        probe.wait_for("cli-probe started").await;
        assert!(sender.send(Signal::Terminate));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(sender.send(Signal::Interrupt));
    };
    let args = ["run", "cli-probe", "--transport", "memory", "--stop-timeout", "60"];
    let (out, ()) = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::join!(run(cli_with(&probe), &args, signals), driver)
    })
    .await
    .expect("the second signal ends the run");
    assert_eq!(out.code, ExitCode::FAILURE);
    assert!(out.stderr.contains("killed"), "{}", out.stderr);
    assert!(!probe.events().contains(&"cli-probe finished".to_owned()));
}

#[tokio::test]
async fn stop_timeout_kills_a_stuck_worker() {
    let probe = Probe::new(Mode::Stuck);
    let (sender, signals) = signals();
    let driver = async {
        probe.wait_for("cli-probe started").await;
        assert!(sender.send(Signal::Terminate));
    };
    let args = ["run", "cli-probe", "--transport", "memory", "--stop-timeout", "0.2"];
    let (out, ()) = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::join!(run(cli_with(&probe), &args, signals), driver)
    })
    .await
    .expect("the stop timeout ends the run");
    assert_eq!(out.code, ExitCode::FAILURE);
    assert!(out.stderr.contains("killed"), "{}", out.stderr);
}

// ===== run: startup failures =====

#[tokio::test]
async fn unknown_service_lists_the_known_ones() {
    let probe = Probe::new(Mode::Quick);
    let out = run_now(cli_with(&probe), &["run", "cli-probe", "nope", "--transport", "memory"]).await;
    assert_eq!(out.code, ExitCode::FAILURE);
    assert!(
        out.stderr.starts_with("error: no service named `nope`"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("known services: cli-other, cli-probe"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("use that_crate as _;"), "{}", out.stderr);
    assert!(probe.events().is_empty(), "nothing ran: {:?}", probe.events());
}

#[tokio::test]
async fn failing_resources_hook_exits_1() {
    let cli = Cli::new().resources(|_config| async { Err::<Resources, _>("the database is down") });
    let out = run_now(cli, &["run", "--transport", "memory"]).await;
    assert_eq!(out.code, ExitCode::FAILURE);
    assert_eq!(out.stderr, "error: the resources hook failed: the database is down\n");
}

#[tokio::test]
async fn a_signal_during_startup_abandons_it() {
    let cli = Cli::new().resources(|_config| std::future::pending::<Result<Resources, nameko_core::BoxError>>());
    let (sender, signals) = signals();
    assert!(sender.send(Signal::Interrupt));
    let out = tokio::time::timeout(
        Duration::from_secs(10),
        run(cli, &["run", "--transport", "memory"], signals),
    )
    .await
    .expect("the signal ends a hanging startup");
    assert_eq!(out.code, ExitCode::FAILURE);
    assert_eq!(
        out.stderr,
        "error: SIGINT (Ctrl-C) received while starting; nothing was left running\n"
    );
}

#[tokio::test]
async fn resources_hook_sees_the_merged_config() {
    let probe = Probe::new(Mode::Quick);
    let seen = Arc::new(std::sync::Mutex::new(None));
    let cli = {
        let (probe, seen) = (Arc::clone(&probe), Arc::clone(&seen));
        Cli::new().resources(move |config| async move {
            *seen.lock().unwrap() = Some((config.max_workers(), config.get_str("SALUTATION")?.to_owned()));
            Ok::<_, nameko_core::BoxError>(Resources::new().with::<Probe>(probe))
        })
    };
    let file = config_file("hook.yaml", "SALUTATION: Hello\nmax_workers: 2\n");
    let (sender, signals) = signals();
    let driver = async {
        probe.wait_for("cli-probe started").await;
        assert!(sender.send(Signal::Terminate));
    };
    let args = [
        "run",
        "cli-probe",
        "--transport",
        "memory",
        "-c",
        file.to_str().unwrap(),
        "-d",
        "max_workers=7",
    ];
    let (out, ()) = tokio::join!(run(cli, &args, signals), driver);
    assert_eq!(out.code, ExitCode::SUCCESS, "{}", out.stderr);
    assert_eq!(*seen.lock().unwrap(), Some((7, "Hello".to_owned())));
}

#[tokio::test]
async fn missing_resource_fails_startup() {
    let out = run_now(Cli::new(), &["run", "cli-probe", "--transport", "memory"]).await;
    assert_eq!(out.code, ExitCode::FAILURE);
    assert!(out.stderr.starts_with("error: service `cli-probe`"), "{}", out.stderr);
    assert!(out.stderr.contains("probe"), "{}", out.stderr);
}

#[tokio::test]
async fn config_errors_are_located() {
    let file = config_file(
        "bad-value.yaml",
        "AMQP_URI: amqp://h/\nrpc_exchange: r\nmax_workers: lots\n",
    );
    let path = file.to_str().unwrap();
    for verb in [&["run", "--transport", "memory"][..], &["show-config"]] {
        let args: Vec<&str> = verb.iter().copied().chain(["--config", path]).collect();
        let out = run_now(Cli::new(), &args).await;
        assert_eq!(out.code, ExitCode::from(USAGE), "{verb:?}");
        assert!(
            out.stderr.starts_with(&format!("error: {path}:3:14: max_workers: ")),
            "{verb:?}: {}",
            out.stderr
        );
        assert_eq!(out.stdout, "");
    }

    let file = config_file("bad-syntax.yaml", "a: 1\nb: [unclosed\n");
    let out = run_now(Cli::new(), &["show-config", "--config", file.to_str().unwrap()]).await;
    assert_eq!(out.code, ExitCode::from(USAGE));
    assert!(
        out.stderr.starts_with(&format!("error: {}:", file.display())),
        "{}",
        out.stderr
    );

    let out = run_now(Cli::new(), &["show-config", "--define", "no-equals-sign"]).await;
    assert_eq!(out.code, ExitCode::from(USAGE));
    assert!(
        out.stderr
            .starts_with("error: --define no-equals-sign: expected KEY=VALUE"),
        "{}",
        out.stderr
    );

    let out = run_now(Cli::new(), &["show-config", "--config", "/nonexistent/config.yaml"]).await;
    assert_eq!(out.code, ExitCode::from(USAGE));
    assert!(out.stderr.contains("cannot read the config file"), "{}", out.stderr);
}

// ===== show-config =====

#[tokio::test]
async fn show_config_masks_secrets_in_key_order() {
    let file = config_file(
        "show.yaml",
        "ZEBRA: 1\nAMQP_URI: amqp://u:hunter2@rabbit/\nDB:\n  url: postgres://app:hunter2@db/app\n  password: hunter2\n  \
         pool: [1, two]\napi_token: abc123\n",
    );
    let args = [
        "show-config",
        "--config",
        file.to_str().unwrap(),
        "-d",
        "max_workers=3",
        "-d",
        "EXTRA.nested=yes",
        "-d",
        "CLIENT_SECRET={id: x, key: y}",
    ];
    let out = run_now(Cli::new(), &args).await;
    assert_eq!(out.code, ExitCode::SUCCESS, "{}", out.stderr);
    let expected = "\
ZEBRA: 1
AMQP_URI: amqp://u:***@rabbit/
DB:
  url: postgres://app:***@db/app
  password: \"***\"
  pool:
    - 1
    - two
api_token: \"***\"
WEB_SERVER_ADDRESS: 0.0.0.0:8000
rpc_exchange: nameko-rpc
serializer: json
HEARTBEAT: 60
max_workers: 3
parent_calls_tracked: 10
MAX_MESSAGE_SIZE: 8388608
EXTRA:
  nested: \"yes\"
CLIENT_SECRET: \"***\"
";
    // Keys from NAMEKO_* variables of the environment running the tests (CI sets
    // NAMEKO_TEST_AMQP_URI) are config overrides too: leave their lines out.
    let from_env: Vec<String> = std::env::vars()
        .filter_map(|(name, _)| name.strip_prefix("NAMEKO_").map(|key| format!("{key}: ")))
        .collect();
    let shown: String = out
        .stdout
        .lines()
        .filter(|line| !from_env.iter().any(|prefix| line.starts_with(prefix.as_str())))
        .map(|line| format!("{line}\n"))
        .collect();
    assert_eq!(shown, expected, "{}", out.stdout);
    for secret in ["hunter2", "abc123", "key: y"] {
        assert!(!out.stdout.contains(secret), "{secret}: {}", out.stdout);
    }
}

#[tokio::test]
async fn show_config_broker_wins_and_is_masked() {
    let out = run_now(
        Cli::new(),
        &[
            "show-config",
            "-d",
            "AMQP_URI=amqp://a:first@h/",
            "--broker",
            "amqps://b:second@rabbit:5671/%2f",
        ],
    )
    .await;
    assert_eq!(out.code, ExitCode::SUCCESS);
    assert!(
        out.stdout.starts_with("AMQP_URI: amqps://b:***@rabbit:5671/%2f\n"),
        "{}",
        out.stdout
    );
    assert!(
        !out.stdout.contains("first") && !out.stdout.contains("second"),
        "{}",
        out.stdout
    );
}

// ===== list =====

#[tokio::test]
async fn list_shows_every_registered_service() {
    let out = run_now(Cli::new(), &["list"]).await;
    assert_eq!(out.code, ExitCode::SUCCESS, "{}", out.stderr);
    let blocks: Vec<&str> = out.stdout.split("\n\n").collect();
    assert_eq!(blocks.len(), 2, "{}", out.stdout);
    assert!(blocks[0].starts_with("cli-other\n"), "sorted by name: {}", out.stdout);
    assert!(blocks[0].ends_with("  entrypoints: hello (once)"), "{}", blocks[0]);

    let probe: Vec<&str> = blocks[1].lines().collect();
    assert_eq!(probe[0], "cli-probe");
    assert_eq!(probe[1], "  module:      it::support");
    assert!(probe[2].starts_with("  location:    "), "{}", probe[2]);
    assert!(
        probe[2].ends_with(&format!("tests/it/support.rs:{PROBE_LINE}")),
        "{}",
        probe[2]
    );
    assert_eq!(probe[3], "  entrypoints: start (once), ping (dummy)");
    assert_eq!(probe.len(), 4);
}

// ===== the standalone binary =====

#[tokio::test]
async fn standalone_explains_run_and_list() {
    for args in [&["run"][..], &["run", "greeting", "--transport", "memory"], &["list"]] {
        let out = run_now(Cli::standalone(), args).await;
        assert_eq!(out.code, ExitCode::from(USAGE), "{args:?}");
        assert!(
            out.stderr.contains("Rust cannot load services at run time"),
            "{}",
            out.stderr
        );
        assert!(out.stderr.contains("nameko::cli::Cli::new().main()"), "{}", out.stderr);
        assert!(out.stderr.contains("use my_services as _;"), "{}", out.stderr);
    }
    let out = run_now(Cli::standalone(), &["show-config", "--broker", "amqp://u:p@h/"]).await;
    assert_eq!(out.code, ExitCode::SUCCESS);
    assert!(out.stdout.starts_with("AMQP_URI: amqp://u:***@h/\n"), "{}", out.stdout);
}
