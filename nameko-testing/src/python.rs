//! [`PythonNameko`]: Python Nameko services and scripts in tests (feature `python`).

use std::{
    fmt,
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, OnceLock, PoisonError},
    time::Duration,
};

use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::rabbitmq::{FixtureError, RabbitMq, skip};

/// The environment variable naming the Python interpreter of a venv with Nameko.
pub const PYTHON_VAR: &str = "NAMEKO_TEST_PYTHON";

/// The environment variable a Python process finds its config in (a JSON object:
/// `AMQP_URI`, `rpc_exchange` and the extras given).
pub const CONFIG_VAR: &str = "NAMEKO_TEST_CONFIG";

/// A Python interpreter with Nameko installed, from `NAMEKO_TEST_PYTHON` (`.ci/run`
/// makes a venv with Nameko 2.14.1 and exports it).
///
/// It runs Nameko services ([`service`](Self::service): `python -m nameko run
/// module:Class --config <file>`) and scripts ([`script`](Self::script)) against a
/// [`RabbitMq`] fixture: both get the fixture's `AMQP_URI` and its private
/// `rpc_exchange`, in the config file and as JSON in `NAMEKO_TEST_CONFIG`.
///
/// With a module `tests/py/services.py` whose `Calc` service reads its name from
/// `CALC_NAME`, and a script `tests/py/call.py` that calls its `add(1, 2)`:
///
/// ```no_run
/// use nameko_testing::{PythonNameko, RabbitMq};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let Some(rabbit) = RabbitMq::from_env().await else { return };
/// let Some(python) = PythonNameko::from_env() else { return };
/// let name = rabbit.unique("py_calc");
/// let service = python
///     .service(&rabbit, "services:Calc")
///     .dir("tests/py")
///     .env("CALC_NAME", &name)
///     .ready_when_consuming(format!("rpc-{name}"))
///     .start()
///     .await
///     .unwrap();
/// let out = python
///     .script(&rabbit, "tests/py/call.py")
///     .arg(&name)
///     .run()
///     .await
///     .unwrap();
/// assert_eq!(out.trim(), "3");
/// drop(service); // killed
/// rabbit.cleanup().await.unwrap();
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct PythonNameko {
    python: PathBuf,
    nameko_version: String,
}

impl PythonNameko {
    /// The interpreter at `NAMEKO_TEST_PYTHON`, or `None` after printing why when the
    /// variable is unset or the interpreter has no Nameko.
    ///
    /// # Panics
    ///
    /// Instead of returning `None`, when `CI=true`.
    pub fn from_env() -> Option<Self> {
        const WHAT: &str = "Python Nameko";
        let Some(python) = std::env::var_os(PYTHON_VAR) else {
            return skip(WHAT, &format!("{PYTHON_VAR} is not set (`.ci/run` makes the venv)"));
        };
        match Self::new(python) {
            Ok(found) => Some(found),
            Err(error) => skip(WHAT, &error.to_string()),
        }
    }

    /// The interpreter at `python`, checked once per process for Nameko.
    ///
    /// # Errors
    ///
    /// [`FixtureError::NoNameko`] saying why it cannot be used.
    pub fn new(python: impl Into<PathBuf>) -> Result<Self, FixtureError> {
        static CHECKED: OnceLock<Mutex<Vec<(PathBuf, Result<String, String>)>>> = OnceLock::new();
        let python = python.into();
        let mut checked = CHECKED
            .get_or_init(Mutex::default)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let version = match checked.iter().find(|(p, _)| *p == python) {
            Some((_, version)) => version.clone(),
            None => {
                let version = nameko_version(&python);
                checked.push((python.clone(), version.clone()));
                version
            }
        };
        match version {
            Ok(version) => Ok(Self {
                python,
                nameko_version: version,
            }),
            Err(reason) => Err(FixtureError::NoNameko { python, reason }),
        }
    }

    /// The interpreter's path.
    pub fn python(&self) -> &Path {
        &self.python
    }

    /// The installed Nameko version, e.g. `2.14.1`.
    pub fn nameko_version(&self) -> &str {
        &self.nameko_version
    }

    /// A Nameko service to start: `target` is `module:Class` as `nameko run` takes it.
    pub fn service<'r>(&self, rabbit: &'r RabbitMq, target: &str) -> PythonServiceBuilder<'r> {
        PythonServiceBuilder {
            rabbit,
            python: self.python.clone(),
            target: target.to_owned(),
            config: rabbit.config_json(Value::Null),
            dir: None,
            env: Vec::new(),
            ready: Vec::new(),
            timeout: Duration::from_secs(30),
        }
    }

    /// A Python script to run to completion (`python <path> <args>...`).
    ///
    /// The script runs under a small bootstrap: the reply queues its standalone RPC
    /// proxies (`ClusterRpcProxy`, `ServiceRpcProxy`) declare are deleted when it exits,
    /// so a script written as a user would write it leaves nothing behind. Its
    /// directory is on `sys.path`, as with `python <path>`.
    pub fn script(&self, rabbit: &RabbitMq, path: impl AsRef<Path>) -> PythonScript {
        PythonScript {
            python: self.python.clone(),
            path: path.as_ref().to_owned(),
            args: Vec::new(),
            env: vec![(CONFIG_VAR.to_owned(), rabbit.config_json(Value::Null).to_string())],
            stdin: None,
            timeout: Duration::from_secs(60),
        }
    }
}

fn nameko_version(python: &Path) -> Result<String, String> {
    let output = Command::new(python)
        .args(["-c", "from importlib.metadata import version; print(version('nameko'))"])
        .output()
        .map_err(|e| format!("it does not run: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    } else {
        Err(format!(
            "it has no Nameko: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// How to start a Python Nameko service; see [`PythonNameko::service`].
#[derive(Debug)]
#[must_use = "a builder does nothing until started"]
pub struct PythonServiceBuilder<'r> {
    rabbit: &'r RabbitMq,
    python: PathBuf,
    target: String,
    config: Value,
    dir: Option<PathBuf>,
    env: Vec<(String, String)>,
    ready: Vec<(String, u32)>,
    timeout: Duration,
}

impl PythonServiceBuilder<'_> {
    /// The directory the service's module is in: the working directory and
    /// `PYTHONPATH` of the process.
    pub fn dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.dir = Some(dir.as_ref().to_owned());
        self
    }

    /// An environment variable of the process (e.g. the service's name, which a
    /// module reads with `os.environ`).
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// A config key besides `AMQP_URI` and `rpc_exchange`.
    pub fn config(mut self, key: &str, value: Value) -> Self {
        if let Value::Object(config) = &mut self.config {
            config.insert(key.to_owned(), value);
        }
        self
    }

    /// The service is ready once `queue` has a consumer; may be given several times.
    pub fn ready_when_consuming(self, queue: impl Into<String>) -> Self {
        self.ready_when(queue, 1)
    }

    /// The service is ready once `queue` has at least `consumers` consumers (e.g. 2
    /// when it shares the queue with a Rust instance already consuming).
    pub fn ready_when(mut self, queue: impl Into<String>, consumers: u32) -> Self {
        self.ready.push((queue.into(), consumers));
        self
    }

    /// How long the service may take to get ready (default 30 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Writes the config file, starts `python -m nameko run <target> --config <file>`
    /// and waits until every queue given to [`ready_when`](Self::ready_when) has its
    /// consumers.
    ///
    /// # Errors
    ///
    /// [`FixtureError::Io`] when the process cannot start, [`FixtureError::Exited`] when
    /// it exits early, [`FixtureError::NotReady`] when it is not consuming in time; the
    /// last two hold its output.
    ///
    /// # Panics
    ///
    /// When no queue was given to wait for: readiness is never a sleep.
    pub async fn start(self) -> Result<PythonService, FixtureError> {
        assert!(
            !self.ready.is_empty(),
            "say which queue the Python service consumes when ready (ready_when_consuming)"
        );
        let config_file = std::env::temp_dir().join(format!(
            "nameko-testing-{}-{}.yaml",
            self.rabbit.token(),
            uuid::Uuid::new_v4().simple()
        ));
        // JSON is YAML.
        std::fs::write(&config_file, self.config.to_string()).map_err(|source| FixtureError::Io {
            what: format!("write {}", config_file.display()),
            source,
        })?;
        let mut command = Command::new(&self.python);
        command
            .args(["-m", "nameko", "run", &self.target, "--config"])
            .arg(&config_file)
            .env("PYTHONUNBUFFERED", "1")
            .env(CONFIG_VAR, self.config.to_string())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(dir) = &self.dir {
            command.current_dir(dir).env("PYTHONPATH", dir);
        }
        let described = format!("nameko run {}", self.target);
        let mut child = command.spawn().map_err(|source| {
            let _ = std::fs::remove_file(&config_file);
            FixtureError::Io {
                what: format!("start `{described}` with {}", self.python.display()),
                source,
            }
        })?;
        let output = Arc::new(Mutex::new(String::new()));
        let readers = [
            child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>),
            child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        .map(|stream| {
            let output = Arc::clone(&output);
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let mut output = output.lock().unwrap_or_else(PoisonError::into_inner);
                    output.push_str(&line);
                    output.push('\n');
                }
            })
        })
        .collect();
        let mut service = PythonService {
            described,
            child,
            output,
            readers,
            config_file,
        };
        for (queue, wanted) in &self.ready {
            service.wait_ready(self.rabbit, queue, *wanted, self.timeout).await?;
        }
        Ok(service)
    }
}

/// A running `nameko run` process, killed when dropped. When the test is panicking,
/// dropping it prints what the process printed.
pub struct PythonService {
    described: String,
    child: Child,
    output: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
    config_file: PathBuf,
}

impl fmt::Debug for PythonService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PythonService")
            .field("command", &self.described)
            .field("pid", &self.child.id())
            .finish_non_exhaustive()
    }
}

impl PythonService {
    async fn wait_ready(
        &mut self,
        rabbit: &RabbitMq,
        queue: &str,
        wanted: u32,
        timeout: Duration,
    ) -> Result<(), FixtureError> {
        let start = tokio::time::Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.join_readers();
                return Err(FixtureError::Exited {
                    command: self.described.clone(),
                    status,
                    output: self.output(),
                });
            }
            let remaining = timeout.saturating_sub(start.elapsed());
            match rabbit
                .wait_for_consumers(queue, wanted, remaining.min(Duration::from_millis(250)))
                .await
            {
                Ok(()) => return Ok(()),
                Err(FixtureError::NotConsuming { .. }) if !remaining.is_zero() => {}
                Err(FixtureError::NotConsuming {
                    queue,
                    consumers,
                    wanted,
                    ..
                }) => {
                    return Err(FixtureError::NotReady {
                        command: self.described.clone(),
                        queue,
                        consumers,
                        wanted,
                        waited: start.elapsed(),
                        output: self.output(),
                    });
                }
                Err(other) => return Err(other),
            }
        }
    }

    fn join_readers(&mut self) {
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }

    /// What the process has printed so far (stdout and stderr, line by line).
    pub fn output(&self) -> String {
        self.output.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process (as a crash would: unacknowledged messages return to their
    /// queues) and returns what it printed.
    pub fn kill(mut self) -> String {
        self.stop_child();
        self.output()
    }

    fn stop_child(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.join_readers();
    }
}

impl Drop for PythonService {
    fn drop(&mut self) {
        self.stop_child();
        let _ = std::fs::remove_file(&self.config_file);
        if std::thread::panicking() {
            eprintln!("--- `{}` printed ---\n{}--- end ---", self.described, self.output());
        }
    }
}

/// Runs the script at `sys.argv[1]` as `__main__`, deleting the reply queues of its
/// standalone RPC proxies at exit.
const BOOTSTRAP: &str = r#"
import atexit, importlib.machinery, json, os, runpy, sys

path = sys.argv[1]
sys.argv = sys.argv[1:]
sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
reply_queues = []


def record_reply_queues(rpc):
    setup = rpc.ReplyListener.setup

    def recording_setup(self):
        setup(self)
        reply_queues.append(self.queue.name)

    rpc.ReplyListener.setup = recording_setup


class PatchOnImport:
    """Patches nameko.rpc when the script imports it (importing it here is slow)."""

    def find_spec(self, name, import_path, target=None):
        if name != "nameko.rpc":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, import_path)
        if spec is not None:
            exec_module = spec.loader.exec_module

            def exec_and_patch(module):
                exec_module(module)
                record_reply_queues(module)

            spec.loader.exec_module = exec_and_patch
        return spec


def delete_reply_queues():
    """Deletes the recorded reply queues, retrying a failed attempt; when that keeps
    failing, says so and exits with status 3, so the test fails instead of leaving
    queues behind unnoticed."""
    if not reply_queues:
        return
    import time
    from kombu import Connection
    uri = json.loads(os.environ["NAMEKO_TEST_CONFIG"])["AMQP_URI"]
    for attempt in range(5):
        try:
            with Connection(uri, connect_timeout=10) as connection:
                channel = connection.default_channel
                while reply_queues:
                    channel.queue_delete(reply_queues[0])
                    reply_queues.pop(0)
            return
        except Exception as error:
            failure = error
            time.sleep(0.5 * (attempt + 1))
    sys.stderr.write("could not delete the reply queues %r: %r\n" % (reply_queues, failure))
    sys.stderr.flush()
    os._exit(3)


sys.meta_path.insert(0, PatchOnImport())
atexit.register(delete_reply_queues)
runpy.run_path(path, run_name="__main__")
"#;

/// A Python script to run; see [`PythonNameko::script`].
#[derive(Debug)]
#[must_use = "a script does nothing until run"]
pub struct PythonScript {
    python: PathBuf,
    path: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    stdin: Option<String>,
    timeout: Duration,
}

impl PythonScript {
    /// A command-line argument.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// An environment variable.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Text written to the script's standard input.
    pub fn stdin(mut self, text: impl Into<String>) -> Self {
        self.stdin = Some(text.into());
        self
    }

    /// How long it may run (default 60 s); it is killed after that.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Runs the script to completion and returns its standard output.
    ///
    /// # Errors
    ///
    /// [`FixtureError::Exited`] for a failure status, [`FixtureError::Timeout`] when it
    /// runs too long; both hold its output.
    pub async fn run(self) -> Result<String, FixtureError> {
        let command = format!("python {} {}", self.path.display(), self.args.join(" "));
        let mut child = tokio::process::Command::new(&self.python)
            .args(["-c", BOOTSTRAP])
            .arg(&self.path)
            .args(&self.args)
            .env("PYTHONUNBUFFERED", "1")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| FixtureError::Io {
                what: format!("start `{command}` with {}", self.python.display()),
                source,
            })?;
        if let (Some(text), Some(mut stdin)) = (self.stdin, child.stdin.take()) {
            stdin
                .write_all(text.as_bytes())
                .await
                .map_err(|source| FixtureError::Io {
                    what: format!("write to `{command}`"),
                    source,
                })?;
        }
        let stdout = tokio::spawn(read_all(child.stdout.take()));
        let stderr = tokio::spawn(read_all(child.stderr.take()));
        let waited = tokio::time::timeout(self.timeout, child.wait()).await;
        if waited.is_err() {
            let _ = child.kill().await;
        }
        let stdout = stdout.await.unwrap_or_default();
        let stderr = stderr.await.unwrap_or_default();
        let status = match waited {
            Ok(status) => status.map_err(|source| FixtureError::Io {
                what: format!("wait for `{command}`"),
                source,
            })?,
            Err(_) => {
                return Err(FixtureError::Timeout {
                    command,
                    timeout: self.timeout,
                    output: format!("{stdout}{stderr}"),
                });
            }
        };
        if status.success() {
            Ok(stdout)
        } else {
            Err(FixtureError::Exited {
                command,
                status,
                output: format!("{stdout}{stderr}"),
            })
        }
    }
}

async fn read_all(stream: Option<impl AsyncRead + Unpin>) -> String {
    let mut bytes = Vec::new();
    if let Some(mut stream) = stream {
        let _ = stream.read_to_end(&mut bytes).await;
    }
    String::from_utf8_lossy(&bytes).into_owned()
}
