//! The standalone `nameko` binary as a process: `request`, `emit`, `subscribe` and
//! `shell` against a Rust service and a Python Nameko service on RabbitMQ; exit codes,
//! config precedence, `--help` examples and completions without a broker.

use std::{
    path::PathBuf,
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use nameko_core::{
    Dependencies, DependencyError, Entrypoints, Provider, ProviderSlot, Providers, RemoteError, Service, ServiceRunner,
    WorkerBuilder, WorkerContext, deps::Dep,
};
use nameko_extensions::{
    broker::{Binding, Broker, Exchange, Queue, Topology},
    events::{EventDispatcher, EventHandler},
    rpc::{FromRpcArgs, Param, RpcArgs, RpcEntrypoint, decode_arg},
};
use nameko_testing::{PythonNameko, RabbitMq};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// The source of the `ping` events both services listen to.
const SOURCE: &str = "cliverbs_src";
/// The Rust service's name (this test binary's only user of it).
const RUST: &str = "cliverbs_rust";

// ===== the Rust service =====

/// What the Rust service's handler heard: `(payload, user_id)`.
#[derive(Debug, Default)]
struct Heard(Mutex<Vec<(Value, Value)>>);

struct Rusty {
    heard: Dep<Heard>,
    dispatch: EventDispatcher,
    cx: WorkerContext,
}

struct RustyProviders {
    heard: Provider<Dep<Heard>>,
    dispatch: Provider<EventDispatcher>,
    cx: Provider<WorkerContext>,
}

impl Providers for RustyProviders {
    type Worker = Rusty;

    fn slots(&mut self) -> Vec<(&'static str, &mut dyn ProviderSlot)> {
        vec![
            ("heard", &mut self.heard),
            ("dispatch", &mut self.dispatch),
            ("cx", &mut self.cx),
        ]
    }

    async fn build<'a>(&'a self, b: &mut WorkerBuilder<'a>) -> Result<Rusty, DependencyError> {
        Ok(Rusty {
            heard: b.get(&self.heard).await?,
            dispatch: b.get(&self.dispatch).await?,
            cx: b.get(&self.cx).await?,
        })
    }
}

impl Dependencies for Rusty {
    type Providers = RustyProviders;

    fn providers() -> RustyProviders {
        RustyProviders {
            heard: Provider::of(),
            dispatch: Provider::of(),
            cx: Provider::of(),
        }
    }
}

struct Name(String);

impl FromRpcArgs for Name {
    fn from_rpc_args(args: RpcArgs, method: &str) -> Result<Self, RemoteError> {
        let value = args.bind(method, &[Param::required("name")])?.remove(0);
        Ok(Self(decode_arg(method, "name", value)?))
    }
}

impl Service for Rusty {
    const NAME: &'static str = RUST;

    fn entrypoints(e: &mut Entrypoints<Self>) {
        e.add(
            "greet",
            RpcEntrypoint::<Name, String>::new(),
            |_: Rusty, Name(name)| async move {
                if name.is_empty() {
                    return Err(RemoteError::new("NoName", "a name is needed"));
                }
                Ok(format!("Hi, {name}!"))
            },
        )
        .add(
            "echo",
            RpcEntrypoint::<RpcArgs, Value>::new(),
            |_: Rusty, args: RpcArgs| async move {
                Ok::<_, RemoteError>(serde_json::from_slice(&args.to_body()).unwrap_or(Value::Null))
            },
        )
        .add("user", RpcEntrypoint::<(), Value>::new(), |w: Rusty, ()| async move {
            Ok::<_, RemoteError>(w.cx.data().user_id().cloned().unwrap_or(Value::Null))
        })
        .add(
            "shout",
            RpcEntrypoint::<Name, String>::new(),
            |w: Rusty, Name(name)| async move {
                w.dispatch
                    .dispatch("shouted", &json!({ "name": name }))
                    .await
                    .map_err(|err| RemoteError::new("DispatchError", err.to_string()))?;
                Ok::<_, RemoteError>(name.to_uppercase())
            },
        )
        .add(
            "on_ping",
            EventHandler::<Value>::new(SOURCE, "ping"),
            |w: Rusty, payload: Value| async move {
                let user = w.cx.data().user_id().cloned().unwrap_or(Value::Null);
                w.heard.0.lock().unwrap().push((payload, user));
                Ok::<_, RemoteError>(())
            },
        );
    }
}

// ===== driving the binary =====

/// What one run of the binary printed and returned.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn binary() -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_nameko"));
    command.kill_on_drop(true).env("RUST_LOG", "warn");
    command
}

/// Runs `nameko args...` with `stdin`, within 60 s.
async fn nameko(args: &[&str], stdin: Option<&str>, env: &[(&str, &str)]) -> Run {
    let mut command = binary();
    command
        .args(args)
        .envs(env.iter().copied())
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("the nameko binary starts");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(input.as_bytes()).await.unwrap();
        drop(pipe);
    }
    let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("`nameko {args:?}` did not finish in 60 s"))
        .unwrap();
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

/// The broker options of this test's commands.
fn broker_args(rabbit: &RabbitMq) -> Vec<String> {
    vec![
        "--broker".into(),
        rabbit.url(),
        "--define".into(),
        format!("rpc_exchange={}", rabbit.rpc_exchange()),
    ]
}

/// `nameko <verb> <args> --broker ... --define rpc_exchange=...`.
async fn against(rabbit: &RabbitMq, args: &[&str], stdin: Option<&str>) -> Run {
    let extra = broker_args(rabbit);
    let all: Vec<&str> = args.iter().copied().chain(extra.iter().map(String::as_str)).collect();
    nameko(&all, stdin, &[]).await
}

/// A `subscribe` running in the background, its stderr's first line read (it is bound).
struct Subscription {
    child: tokio::process::Child,
    stdout: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    queue: String,
}

impl Subscription {
    async fn start(rabbit: &RabbitMq, args: &[&str]) -> Self {
        let extra = broker_args(rabbit);
        let mut child = binary()
            .arg("subscribe")
            .args(args)
            .args(&extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the nameko binary starts");
        let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), stderr.next_line())
            .await
            .expect("subscribe says it is subscribed within 30 s")
            .unwrap()
            .unwrap_or_default();
        assert!(line.starts_with("subscribed to "), "{line}");
        let queue = line
            .split("(queue `")
            .nth(1)
            .and_then(|rest| rest.split('`').next())
            .unwrap_or_else(|| panic!("no queue in {line:?}"))
            .to_owned();
        Self {
            stdout: BufReader::new(child.stdout.take().unwrap()).lines(),
            child,
            queue,
        }
    }

    /// The next event line, decoded.
    async fn next(&mut self) -> Value {
        let line = tokio::time::timeout(Duration::from_secs(30), self.stdout.next_line())
            .await
            .expect("an event line within 30 s")
            .unwrap()
            .expect("subscribe printed a line");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"))
    }

    /// Sends SIGTERM.
    async fn terminate(&self) {
        let pid = self.child.id().unwrap().to_string();
        let status = tokio::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit; its exit code.
    async fn exit_code(mut self) -> i32 {
        tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("subscribe exits within 30 s")
            .unwrap()
            .code()
            .unwrap_or(-1)
    }
}

async fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    for _ in 0..400 {
        if let Some(value) = check() {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}

fn python_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python")
}

// ===== against RabbitMQ: a Rust service and a Python one =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verbs_talk_to_rust_and_python_services() {
    let Some(rabbit) = RabbitMq::from_env().await else {
        return;
    };
    let python = PythonNameko::from_env();
    for service in [RUST, SOURCE] {
        rabbit.claim_service(service);
    }
    let heard = Arc::new(Heard::default());
    let running = ServiceRunner::new(rabbit.config(Value::Null))
        .resource::<dyn Broker>(rabbit.broker())
        .resource(Arc::clone(&heard))
        .with_service::<Rusty>()
        .stop_timeout(Duration::from_secs(5))
        .start()
        .await
        .unwrap();
    let py_name = rabbit.unique("clipy");
    rabbit.claim_service(&py_name);
    let py = match &python {
        Some(python) => Some(
            python
                .service(&rabbit, "cli_verbs:Greeter")
                .dir(python_dir())
                .env("CLI_PY_NAME", &py_name)
                .env("CLI_PY_SOURCE", SOURCE)
                .ready_when_consuming(format!("rpc-{py_name}"))
                .ready_when_consuming(format!("evt-{SOURCE}-ping--{py_name}.on_ping"))
                .start()
                .await
                .unwrap(),
        ),
        None => None,
    };

    // ----- request: results, kwargs and args, --raw, context -----
    let out = against(
        &rabbit,
        &["request", &format!("{RUST}.greet"), r#"{"name": "Ada"}"#],
        None,
    )
    .await;
    assert_eq!(
        (out.code, out.stdout.as_str(), out.stderr.as_str()),
        (0, "\"Hi, Ada!\"\n", "")
    );
    let out = against(&rabbit, &["request", &format!("{RUST}.greet"), r#"["Grace"]"#], None).await;
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "\"Hi, Grace!\"\n"),
        "{}",
        out.stderr
    );
    let out = against(
        &rabbit,
        &["request", &format!("{RUST}.echo"), r#"{"b": [1, 2], "a": null}"#],
        None,
    )
    .await;
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (
            0,
            "{\n  \"args\": [],\n  \"kwargs\": {\n    \"a\": null,\n    \"b\": [\n      1,\n      2\n    ]\n  }\n}\n"
        ),
        "{}",
        out.stderr
    );
    let out = against(
        &rabbit,
        &[
            "request",
            &format!("{RUST}.echo"),
            r#"{"b": [1, 2], "a": null}"#,
            "--raw",
        ],
        None,
    )
    .await;
    assert_eq!(
        out.stdout, "{\"args\":[],\"kwargs\":{\"a\":null,\"b\":[1,2]}}\n",
        "{}",
        out.stderr
    );
    let out = against(
        &rabbit,
        &["request", &format!("{RUST}.user"), "--context", "user_id=u-42"],
        None,
    )
    .await;
    assert_eq!(out.stdout, "\"u-42\"\n", "{}", out.stderr);
    // The JSON from standard input.
    let out = against(
        &rabbit,
        &["request", &format!("{RUST}.greet"), "-"],
        Some(r#"{"name": "Stdin"}"#),
    )
    .await;
    assert_eq!(out.stdout, "\"Hi, Stdin!\"\n", "{}", out.stderr);

    // ----- request: remote error, unknown service, timeout -----
    let out = against(&rabbit, &["request", &format!("{RUST}.greet"), r#"{"name": ""}"#], None).await;
    assert_eq!(
        (out.code, out.stdout.as_str(), out.stderr.as_str()),
        (1, "", "NoName: a name is needed\n")
    );
    let out = against(&rabbit, &["request", &format!("{RUST}.nope")], None).await;
    assert_eq!(out.code, 1);
    assert!(out.stderr.starts_with("MethodNotFound: "), "{}", out.stderr);
    let nobody = rabbit.unique("nobody");
    let out = against(&rabbit, &["request", &format!("{nobody}.hello")], None).await;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.starts_with(&format!(
            "error: Unknown service `{nobody}`: nothing consumes `rpc-{nobody}`"
        )),
        "{}",
        out.stderr
    );
    // A queue nobody consumes: routed, never answered.
    let silent = rabbit.unique("silent");
    rabbit.claim_queue(format!("rpc-{silent}"));
    rabbit
        .broker()
        .declare(
            &Topology::new()
                .exchange(Exchange::topic(rabbit.rpc_exchange()))
                .queue(Queue::durable(format!("rpc-{silent}")))
                .binding(Binding::new(
                    rabbit.rpc_exchange(),
                    format!("rpc-{silent}"),
                    format!("{silent}.*"),
                )),
        )
        .await
        .unwrap();
    let out = against(
        &rabbit,
        &["request", &format!("{silent}.wait"), "--timeout", "0.5"],
        None,
    )
    .await;
    assert_eq!(out.code, 1);
    assert_eq!(
        out.stderr,
        format!("error: no reply from `{silent}.wait` within 0.5s (--timeout sets another limit; 0 waits forever)\n")
    );

    // ----- request against Python -----
    if python.is_some() {
        let out = against(
            &rabbit,
            &["request", &format!("{py_name}.greet"), r#"["Ada", "?"]"#],
            None,
        )
        .await;
        assert_eq!(
            (out.code, out.stdout.as_str()),
            (0, "\"Hello, Ada?\"\n"),
            "{}",
            out.stderr
        );
        let out = against(
            &rabbit,
            &["request", &format!("{py_name}.greet"), r#"{"name": "Bo"}"#],
            None,
        )
        .await;
        assert_eq!(out.stdout, "\"Hello, Bo!\"\n", "{}", out.stderr);
        let out = against(
            &rabbit,
            &["request", &format!("{py_name}.greet"), r#"{"name": ""}"#],
            None,
        )
        .await;
        assert_eq!((out.code, out.stderr.as_str()), (1, "NoName: a name is needed\n"));
        let out = against(
            &rabbit,
            &["request", &format!("{py_name}.user"), "--context", "user_id=u-7"],
            None,
        )
        .await;
        assert_eq!(out.stdout, "\"u-7\"\n", "{}", out.stderr);
    }

    // ----- emit reaches the Rust and the Python handler, with context -----
    let out = against(
        &rabbit,
        &["emit", SOURCE, "ping", r#"{"n": 1}"#, "--context", "user_id=u-9"],
        None,
    )
    .await;
    assert_eq!((out.code, out.stdout.as_str(), out.stderr.as_str()), (0, "", ""));
    let got = eventually("the Rust handler hears the ping", || {
        heard.0.lock().unwrap().first().cloned()
    })
    .await;
    assert_eq!(got, (json!({"n": 1}), json!("u-9")));
    if let Some(py) = &py {
        eventually("the Python handler hears the ping", || {
            py.output()
                .contains("python heard ping {'n': 1} from user u-9")
                .then_some(())
        })
        .await;
    }

    // ----- subscribe prints events dispatched by Rust and by Python -----
    let mut rust_events = Subscription::start(&rabbit, &[RUST, "shouted", "--count", "1"]).await;
    let mut every_event = Subscription::start(&rabbit, &[RUST, "#"]).await;
    let out = against(&rabbit, &["request", &format!("{RUST}.shout"), r#"["ada"]"#], None).await;
    assert_eq!(out.stdout, "\"ADA\"\n", "{}", out.stderr);
    for subscription in [&mut rust_events, &mut every_event] {
        let event = subscription.next().await;
        assert_eq!(event["service"], json!(RUST));
        assert_eq!(event["event"], json!("shouted"));
        assert_eq!(event["payload"], json!({"name": "ada"}));
        assert!(event["headers"]["nameko.trace_id"].is_string(), "{event}");
    }
    let queue = rust_events.queue.clone();
    assert_eq!(rust_events.exit_code().await, 0, "--count 1 stops after one event");
    assert_eq!(rabbit.consumers(&queue).await.unwrap(), None, "the queue is gone");
    // SIGTERM stops the other cleanly and leaves nothing behind.
    let queue = every_event.queue.clone();
    every_event.terminate().await;
    assert_eq!(every_event.exit_code().await, 0);
    assert_eq!(rabbit.consumers(&queue).await.unwrap(), None, "the queue is gone");

    if python.is_some() {
        let mut py_events = Subscription::start(&rabbit, &[&py_name, "*"]).await;
        let out = against(&rabbit, &["request", &format!("{py_name}.shout"), r#"["grace"]"#], None).await;
        assert_eq!(out.stdout, "\"GRACE\"\n", "{}", out.stderr);
        let event = py_events.next().await;
        assert_eq!(event["service"], json!(py_name));
        assert_eq!(event["event"], json!("shouted"));
        assert_eq!(event["payload"], json!({"name": "grace"}));
        assert!(event["headers"]["nameko.call_id_stack"].is_array(), "{event}");
        let queue = py_events.queue.clone();
        py_events.terminate().await;
        assert_eq!(py_events.exit_code().await, 0);
        assert_eq!(rabbit.consumers(&queue).await.unwrap(), None, "the queue is gone");
    }

    // ----- the shell in scripted mode -----
    let script = format!(
        "# a comment, then a blank line\n\
         \n\
         request {RUST}.greet {{\"name\": \"Shell\"}}\n\
         request {RUST}.greet {{\"name\": \"\"}}\n\
         bogus\n\
         request {RUST}.greet --raw '[\"Quoted\"]'\n\
         emit {SOURCE} ping {{\"n\": 2}}\n\
         request {RUST}.user --context user_id=shell-user\n\
         exit\n\
         request {RUST}.greet {{\"name\": \"never\"}}\n"
    );
    let out = against(&rabbit, &["shell"], Some(&script)).await;
    assert_eq!(out.code, 1, "two commands failed: {}", out.stderr);
    assert_eq!(
        out.stdout, "\"Hi, Shell!\"\n\"Hi, Quoted!\"\n\"shell-user\"\n",
        "{}",
        out.stderr
    );
    let errors: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(errors[0], "NoName: a name is needed", "{}", out.stderr);
    assert!(
        errors[1].starts_with("error: unrecognized subcommand 'bogus'"),
        "{}",
        out.stderr
    );
    assert_eq!(
        errors.last(),
        Some(&"error: 2 shell command(s) failed"),
        "{}",
        out.stderr
    );
    eventually("the Rust handler hears the shell's ping", || {
        heard
            .0
            .lock()
            .unwrap()
            .iter()
            .any(|(payload, _)| *payload == json!({"n": 2}))
            .then_some(())
    })
    .await;

    drop(py);
    running.stop().await;
    rabbit.cleanup().await.unwrap();
}

// ===== without a broker =====

#[tokio::test]
async fn bad_json_and_bad_config_exit_2_naming_the_problem() {
    let out = nameko(&["request", "greeting.greet", r#"{"name": Ada}"#], None, &[]).await;
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.starts_with(
            "error: the JSON argument is not valid JSON: expected value at line 1 column 10\n  {\"name\": Ada}\n           ^\n"
        ),
        "{}",
        out.stderr
    );
    let out = nameko(&["emit", "greeting", "greeted", "[1, 2"], None, &[]).await;
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("EOF while parsing a list at line 1 column 5"),
        "{}",
        out.stderr
    );
    let out = nameko(&["request", "greeting"], None, &[]).await;
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("expected SERVICE.METHOD"), "{}", out.stderr);
    let out = nameko(&["request", "a.b", "--context", "nokey"], None, &[]).await;
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("expected KEY=VALUE, got `nokey`"), "{}", out.stderr);

    let dir = std::env::temp_dir().join(format!("nameko-cli-verbs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad_yaml = dir.join("bad.yaml");
    std::fs::write(&bad_yaml, "a: 1\nb: [unclosed\n").unwrap();
    let bad_yaml = bad_yaml.to_str().unwrap();
    for verb in [
        &["show-config"][..],
        &["request", "a.b"],
        &["emit", "a", "b"],
        &["subscribe", "a", "b"],
    ] {
        let args: Vec<&str> = verb.iter().copied().chain(["--config", bad_yaml]).collect();
        let out = nameko(&args, None, &[]).await;
        assert_eq!(out.code, 2, "{verb:?}: {}", out.stderr);
        assert!(
            out.stderr.starts_with(&format!("error: {bad_yaml}:")),
            "{verb:?}: {}",
            out.stderr
        );
    }
    let out = nameko(&["request", "a.b", "--define", "no-equals"], None, &[]).await;
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.starts_with("error: --define no-equals: expected KEY=VALUE"),
        "{}",
        out.stderr
    );
    let out = nameko(&["show-config"], None, &[("NAMEKO_MAX_WORKERS", "[unclosed")]).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("NAMEKO_MAX_WORKERS"), "{}", out.stderr);
    let out = nameko(&["request", "a.b", "--broker", "amqp://u:secret@h:port/"], None, &[]).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.starts_with("error: invalid AMQP_URI"), "{}", out.stderr);
    assert!(!out.stderr.contains("secret"), "{}", out.stderr);
    // Bad values of the cluster verbs' own settings are config errors too.
    let out = nameko(
        &["discover", "--define", "MANAGEMENT_URI=ftp://admin:hunter2@rabbit/"],
        None,
        &[],
    )
    .await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.starts_with("error: invalid MANAGEMENT_URI"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("hunter2"), "{}", out.stderr);
    let out = nameko(&["tail", "greeting", "--define", "LOG_EXCHANGE=[1]"], None, &[]).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("LOG_EXCHANGE: expected an exchange name"),
        "{}",
        out.stderr
    );
    // RabbitMQ unreachable is not a usage error.
    let out = nameko(
        &["request", "a.b", "--broker", "amqp://u:secret@127.0.0.1:1/"],
        None,
        &[],
    )
    .await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr
            .starts_with("error: cannot connect to RabbitMQ at amqp://u:***@127.0.0.1:1/"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("secret"), "{}", out.stderr);
    let out = nameko(&["frobnicate"], None, &[]).await;
    assert_eq!(out.code, 2);
}

#[tokio::test]
async fn config_precedence_file_env_define_broker() {
    let dir = std::env::temp_dir().join(format!("nameko-cli-verbs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("layers.yaml");
    std::fs::write(
        &file,
        "AMQP_URI: amqp://file:pw@file-host/\nA: from-file\nB: from-file\nC: from-file\nNESTED:\n  key: from-file\n",
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let env = [
        ("NAMEKO_B", "from-env"),
        ("NAMEKO_C", "from-env"),
        ("NAMEKO_NESTED__KEY", "from-env"),
    ];
    let out = nameko(
        &["show-config", "--config", file, "--define", "C=from-define"],
        None,
        &env,
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    for line in [
        "AMQP_URI: amqp://file:***@file-host/",
        "A: from-file",
        "B: from-env",
        "C: from-define",
        "  key: from-env",
    ] {
        assert!(out.stdout.lines().any(|l| l == line), "{line}: {}", out.stdout);
    }
    // --broker wins over the file, the environment and --define, also with --config.
    let env = [("NAMEKO_AMQP_URI", "amqp://env:pw@env-host/")];
    let args = [
        "show-config",
        "--config",
        file,
        "--define",
        "AMQP_URI=amqp://define:pw@define-host/",
        "--broker",
        "amqp://broker:pw@broker-host/",
    ];
    let out = nameko(&args, None, &env).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.starts_with("AMQP_URI: amqp://broker:***@broker-host/\n"),
        "{}",
        out.stdout
    );
    let out = nameko(&args[..5], None, &env).await;
    assert!(
        out.stdout.starts_with("AMQP_URI: amqp://define:***@define-host/\n"),
        "{}",
        out.stdout
    );
    let out = nameko(&args[..3], None, &env).await;
    assert!(
        out.stdout.starts_with("AMQP_URI: amqp://env:***@env-host/\n"),
        "{}",
        out.stdout
    );
}

#[tokio::test]
async fn every_verb_has_examples_and_completions_cover_three_shells() {
    // Every verb `--help` lists, whoever added it.
    let out = nameko(&["--help"], None, &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("`nameko COMMAND --help` shows"), "{}", out.stdout);
    let verbs: Vec<&str> = out
        .stdout
        .split("Commands:\n")
        .nth(1)
        .unwrap()
        .lines()
        .take_while(|line| !line.is_empty())
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    for verb in [
        "run",
        "list",
        "show-config",
        "request",
        "emit",
        "subscribe",
        "shell",
        "completions",
    ] {
        assert!(verbs.contains(&verb), "{verb}: {verbs:?}");
    }
    for verb in verbs {
        let out = nameko(&[verb, "--help"], None, &[]).await;
        assert_eq!(out.code, 0, "{verb}: {}", out.stderr);
        assert!(out.stdout.contains("\nExamples:\n  nameko "), "{verb}: {}", out.stdout);
    }
    for shell in ["bash", "zsh", "fish"] {
        let out = nameko(&["completions", shell], None, &[]).await;
        assert_eq!(out.code, 0, "{shell}: {}", out.stderr);
        assert!(out.stdout.len() > 500, "{shell}: {}", out.stdout);
        for word in ["request", "subscribe", "show-config", "broker"] {
            assert!(out.stdout.contains(word), "{shell} lacks {word}: {}", out.stdout);
        }
    }
    let out = nameko(&["completions", "tcsh"], None, &[]).await;
    assert_eq!(out.code, 2);
}

#[tokio::test]
async fn the_shell_reads_a_script_without_a_broker() {
    let script = "help\nshow-config --define max_workers=7\nlist\nshell\nrequest a.b -\n";
    let out = nameko(
        &["shell", "--define", "max_workers=3", "--define", "EXTRA=1"],
        Some(script),
        &[],
    )
    .await;
    assert_eq!(
        out.code, 1,
        "`list` and `shell` fail in the standalone binary: {}",
        out.stderr
    );
    assert!(
        out.stdout
            .starts_with("Commands (as on the command line, without `nameko`):\n"),
        "{}",
        out.stdout
    );
    for verb in ["request", "emit", "subscribe", "show-config", "completions"] {
        assert!(out.stdout.contains(&format!("\n  {verb} ")), "{verb}: {}", out.stdout);
    }
    assert!(!out.stdout.contains("\n  run "), "{}", out.stdout);
    // The shell's options are the defaults, the line's own win.
    assert!(out.stdout.contains("\nmax_workers: 7\n"), "{}", out.stdout);
    assert!(out.stdout.contains("\nEXTRA: 1\n"), "{}", out.stdout);
    assert!(
        out.stderr.contains("Rust cannot load services at run time"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("error: `shell` is not a shell command"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("error: `-` (JSON from standard input) cannot be used in the shell"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.ends_with("error: 3 shell command(s) failed\n"),
        "{}",
        out.stderr
    );

    let out = nameko(&["shell"], Some("show-config\n"), &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
}

#[tokio::test]
async fn a_scripted_shell_ends_at_sigterm() {
    let mut child = binary()
        .args(["shell", "--define", "max_workers=5"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the nameko binary starts");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"show-config\n").await.unwrap();
    stdin.flush().await.unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    loop {
        let line = tokio::time::timeout(Duration::from_secs(30), stdout.next_line())
            .await
            .expect("show-config answers within 30 s")
            .unwrap()
            .expect("the shell printed the config");
        if line == "max_workers: 5" {
            break;
        }
    }
    // Waiting for the next line, with standard input still open.
    let pid = child.id().unwrap().to_string();
    let status = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(status.success());
    let output = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("the shell exits within 30 s")
        .unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr, "error: SIGTERM received: the command was cancelled\n");
    drop(stdin);
}

/// The interactive shell on a terminal (`script` gives it a pty): tab completes a verb,
/// the command runs, and the line lands in the history file.
#[tokio::test]
async fn the_interactive_shell_completes_and_keeps_history() {
    if std::process::Command::new("script").arg("--version").output().is_err() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "`script` (util-linux) is needed for the interactive shell test"
        );
        eprintln!("skipping the interactive shell test: no `script` command (util-linux)");
        return;
    }
    let state = std::env::temp_dir().join(format!("nameko-cli-shell-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state);
    let command = format!("{} shell --define answer=42", env!("CARGO_BIN_EXE_nameko"));
    let mut child = tokio::process::Command::new("script")
        .args(["-qfec", &command, "/dev/null"])
        .env("TERM", "xterm")
        .env("XDG_STATE_HOME", &state)
        .kill_on_drop(true)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("script starts");
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut seen = String::new();
    // Reads the terminal until `needle` has appeared `times` times in all.
    let mut wait_for = async |needle: &str, times: usize, seen: &mut String| {
        use tokio::io::AsyncReadExt;
        let mut buffer = [0_u8; 4096];
        while seen.matches(needle).count() < times {
            let read = tokio::time::timeout(Duration::from_secs(30), stdout.read(&mut buffer))
                .await
                .unwrap_or_else(|_| panic!("no {needle:?} in 30 s; the terminal showed {seen:?}"))
                .unwrap();
            assert!(read > 0, "the shell ended; the terminal showed {seen:?}");
            seen.push_str(&String::from_utf8_lossy(&buffer[..read]));
        }
    };
    wait_for("nameko> ", 1, &mut seen).await;
    stdin.write_all(b"show-c\t").await.unwrap();
    stdin.flush().await.unwrap();
    wait_for("show-config", 1, &mut seen).await;
    stdin.write_all(b" --define extra=1\r").await.unwrap();
    stdin.flush().await.unwrap();
    wait_for("answer: 42", 1, &mut seen).await;
    wait_for("nameko> ", 2, &mut seen).await;
    stdin.write_all(b"exit\r").await.unwrap();
    stdin.flush().await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("the shell exits within 30 s")
        .unwrap();
    assert!(status.success(), "{status:?}; the terminal showed {seen:?}");
    assert!(seen.contains("extra: 1"), "{seen:?}");
    let history = std::fs::read_to_string(state.join("nameko/history")).expect("the history file");
    assert!(
        history.lines().any(|line| line == "show-config --define extra=1"),
        "{history:?}"
    );
    assert!(history.lines().any(|line| line == "exit"), "{history:?}");
    let _ = std::fs::remove_dir_all(&state);
}
