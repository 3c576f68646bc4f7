//! [`RabbitMq`]: a test's share of a real RabbitMQ (feature `rabbitmq`).

use std::{
    collections::BTreeSet,
    fmt,
    process::Command,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use nameko_core::Config;
use nameko_extensions::{
    amqp::{AmqpBroker, AmqpOptions, AmqpUri},
    broker::{
        Broker, BrokerError, ConnectionEvent, ConsumeOptions, Consumer, Publish, PublishOutcome, SharedBroker, Topology,
    },
};
use serde_json::{Map, Value, json};
use tokio::sync::broadcast;

/// The environment variable naming the RabbitMQ tests use.
pub const AMQP_URI_VAR: &str = "NAMEKO_TEST_AMQP_URI";

/// Why a fixture could not do what it was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FixtureError {
    /// A broker operation failed.
    #[error("RabbitMQ: {0}")]
    Broker(#[from] BrokerError),
    /// A queue did not get its consumers in time.
    #[error("queue `{queue}` had {consumers} consumer(s) after {waited:?}; waited for {wanted}")]
    NotConsuming {
        /// The queue.
        queue: String,
        /// How many consumers it had at the end (0 when it did not exist).
        consumers: u32,
        /// How many were wanted.
        wanted: u32,
        /// How long the fixture waited.
        waited: Duration,
    },
    /// A Python service did not get its consumers in time.
    #[error(
        "`{command}` was not ready: queue `{queue}` had {consumers} consumer(s) after {waited:?}; \
         waited for {wanted}\n--- output ---\n{output}"
    )]
    NotReady {
        /// The command line.
        command: String,
        /// The queue waited for.
        queue: String,
        /// How many consumers it had at the end.
        consumers: u32,
        /// How many were wanted.
        wanted: u32,
        /// How long the fixture waited.
        waited: Duration,
        /// What the process printed.
        output: String,
    },
    /// The interpreter cannot run Nameko.
    #[error("{python} cannot run Nameko: {reason}")]
    NoNameko {
        /// The interpreter.
        python: std::path::PathBuf,
        /// Why.
        reason: String,
    },
    /// A process could not be started or read.
    #[error("cannot {what}: {source}")]
    Io {
        /// What the fixture was doing.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A process ended unexpectedly or with a failure status.
    #[error("`{command}` exited with {status}\n--- output ---\n{output}")]
    Exited {
        /// The command line.
        command: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// What it printed (stdout, then stderr).
        output: String,
    },
    /// A process did not finish in time; it was killed.
    #[error("`{command}` did not finish within {timeout:?}; killed\n--- output ---\n{output}")]
    Timeout {
        /// The command line.
        command: String,
        /// The time it had.
        timeout: Duration,
        /// What it printed before it was killed.
        output: String,
    },
    /// Some of what the test declared could not be deleted.
    #[error("could not delete: {}", .0.join("; "))]
    Cleanup(Vec<String>),
}

/// What a passive declare tells about a queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueCounts {
    /// Messages ready for delivery (not counting unacknowledged ones).
    pub ready: u32,
    /// Consumers.
    pub consumers: u32,
}

/// Prints why a test skips and returns `None`, or panics under `CI=true`, where a
/// missing service is a failure.
pub(crate) fn skip<T>(what: &str, reason: &str) -> Option<T> {
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{what} cannot run under CI=true: {reason}"
    );
    eprintln!("skipping a test that needs {what}: {reason}");
    None
}

/// The RabbitMQ URI tests use, `NAMEKO_TEST_AMQP_URI`, when RabbitMQ answers there;
/// otherwise prints why and gives `None` — or panics under `CI=true`, where a missing
/// broker is a failure. For tests that connect by themselves (a binary given
/// `--broker`, say); [`RabbitMq::from_env`] also cleans up.
///
/// ```no_run
/// # async fn test() {
/// let Some(uri) = nameko_testing::test_amqp_uri().await else {
///     return; // skipped, the reason printed
/// };
/// println!("testing against {uri}"); // the password is masked
/// # }
/// ```
pub async fn test_amqp_uri() -> Option<AmqpUri> {
    const WHAT: &str = "RabbitMQ";
    let Ok(text) = std::env::var(AMQP_URI_VAR) else {
        return skip(WHAT, &format!("{AMQP_URI_VAR} is not set"));
    };
    let uri = match AmqpUri::parse(&text) {
        Ok(uri) => uri,
        Err(error) => return skip(WHAT, &format!("{AMQP_URI_VAR} is invalid: {error}")),
    };
    if let Err(error) = tokio::net::TcpStream::connect((uri.host(), uri.port())).await {
        return skip(WHAT, &format!("RabbitMQ at {uri} is unreachable: {error}"));
    }
    Some(uri)
}

/// What a test declared and must delete: exact names, name prefixes, and every name
/// containing the fixture's token.
#[derive(Debug, Default)]
struct Claims {
    queues: BTreeSet<String>,
    exchanges: BTreeSet<String>,
    prefixes: BTreeSet<String>,
    fragments: BTreeSet<String>,
}

impl Claims {
    fn covers(&self, name: &str) -> bool {
        self.queues.contains(name)
            || self.exchanges.contains(name)
            || self.prefixes.iter().any(|p| name.starts_with(p.as_str()))
            || self.fragments.iter().any(|f| name.contains(f.as_str()))
    }
}

/// A test's share of the RabbitMQ at `NAMEKO_TEST_AMQP_URI`: connections, unique
/// names, a private RPC exchange, and the clean-up of everything the test declared.
///
/// - [`from_env`](Self::from_env) skips (prints why, returns `None`) when the
///   variable is unset or RabbitMQ is unreachable, and panics instead under
///   `CI=true`.
/// - [`unique`](Self::unique) names contain the fixture's token; every queue or
///   exchange whose name contains it is this test's. Names a test cannot make unique
///   (a `#[service(name = "...")]` is fixed at compile time) are claimed with
///   [`claim_service`](Self::claim_service), [`claim_queue`](Self::claim_queue),
///   [`claim_exchange`](Self::claim_exchange) or [`claim_prefix`](Self::claim_prefix).
///   A service name must then be used by one test only, or tests would share its
///   queue.
/// - [`config`](Self::config) points services at the fixture's URI and its own
///   [`rpc_exchange`](Self::rpc_exchange), so parallel tests never share
///   `nameko-rpc`.
/// - [`cleanup`](Self::cleanup) deletes every claimed queue and exchange. If the test
///   ends without it (a failed assertion), dropping the fixture does the same on a
///   thread of its own, after shutting the connections it handed out so nothing
///   re-declares what it deletes. Claimed exact names are deleted over AMQP; names
///   matched by prefix or token are found with `rabbitmqctl list_queues` /
///   `list_exchanges` (RabbitMQ on this host), and a note is printed when that is not
///   possible.
///
/// Drop order matters: make the fixture first, so Python services and runners made
/// after it are dropped (stopped) before it cleans up.
///
/// ```
/// use nameko_extensions::broker::{Exchange, Queue, Binding, Topology};
/// use nameko_testing::RabbitMq;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let Some(rabbit) = RabbitMq::from_env().await else { return };
/// let queue = rabbit.unique("jobs");
/// assert!(queue.contains(rabbit.token()));
/// rabbit
///     .broker()
///     .declare(
///         &Topology::new()
///             .exchange(Exchange::topic(rabbit.rpc_exchange()))
///             .queue(Queue::durable(&queue))
///             .binding(Binding::new(rabbit.rpc_exchange(), &queue, "jobs.*")),
///     )
///     .await
///     .unwrap();
/// assert_eq!(rabbit.consumers(&queue).await.unwrap(), Some(0));
/// rabbit.cleanup().await.unwrap(); // deletes the queue and the exchange
/// # }
/// ```
pub struct RabbitMq {
    uri: AmqpUri,
    token: String,
    rpc_exchange: String,
    admin: AmqpBroker,
    inspector: tokio::sync::Mutex<Option<lapin::Connection>>,
    handed_out: Mutex<Vec<AmqpBroker>>,
    shut: Arc<AtomicBool>,
    main: SharedBroker,
    claims: Mutex<Claims>,
    names: AtomicU64,
    cleaned: AtomicBool,
}

impl fmt::Debug for RabbitMq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitMq")
            .field("uri", &self.uri)
            .field("token", &self.token)
            .field("rpc_exchange", &self.rpc_exchange)
            .finish_non_exhaustive()
    }
}

impl RabbitMq {
    /// Connects to the RabbitMQ at `NAMEKO_TEST_AMQP_URI`, or returns `None` after
    /// printing why when the variable is unset or invalid or RabbitMQ is unreachable.
    ///
    /// # Panics
    ///
    /// Instead of returning `None`, when `CI=true`: CI must run every RabbitMQ test.
    pub async fn from_env() -> Option<Self> {
        let uri = test_amqp_uri().await?;
        match Self::connect(uri).await {
            Ok(rabbit) => Some(rabbit),
            Err(error) => skip("RabbitMQ", &error.to_string()),
        }
    }

    /// Connects to RabbitMQ at `uri` (what [`from_env`](Self::from_env) does after
    /// reading the variable).
    ///
    /// # Errors
    ///
    /// When RabbitMQ cannot be reached or refuses the login.
    pub async fn connect(uri: AmqpUri) -> Result<Self, FixtureError> {
        let token = uuid::Uuid::new_v4().simple().to_string()[..10].to_owned();
        let admin = AmqpBroker::connect(&uri, AmqpOptions::new(format!("nameko-testing admin {token}"))).await?;
        let shut = Arc::new(AtomicBool::new(false));
        let main = AmqpBroker::connect(&uri, AmqpOptions::new(format!("nameko-testing {token}"))).await?;
        let rabbit = Self {
            rpc_exchange: format!("nameko-rpc-{token}"),
            main: Arc::new(Gated {
                broker: main.clone(),
                shut: Arc::clone(&shut),
            }),
            handed_out: Mutex::new(vec![main]),
            uri,
            admin,
            inspector: tokio::sync::Mutex::new(None),
            shut,
            claims: Mutex::new(Claims::default()),
            names: AtomicU64::new(0),
            cleaned: AtomicBool::new(false),
            token,
        };
        rabbit.claims().fragments.insert(rabbit.token.clone());
        Ok(rabbit)
    }

    fn claims(&self) -> std::sync::MutexGuard<'_, Claims> {
        self.claims.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The URI (its `Display` masks the password).
    pub fn uri(&self) -> &AmqpUri {
        &self.uri
    }

    /// The URI to hand to another program (a Python service), password included.
    pub fn url(&self) -> String {
        self.uri.to_url()
    }

    /// This fixture's token: part of every [`unique`](Self::unique) name.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// A name no other test uses: `<prefix>_<token>_<n>`. Fit for service names
    /// (no dots), queues and exchanges; claimed for clean-up through the token.
    pub fn unique(&self, prefix: &str) -> String {
        format!("{prefix}_{}_{}", self.token, self.names.fetch_add(1, Ordering::Relaxed))
    }

    /// The RPC exchange of this test (`nameko-rpc-<token>`), in [`config`](Self::config).
    pub fn rpc_exchange(&self) -> &str {
        &self.rpc_exchange
    }

    /// The fixture's connection, as the runner's `dyn Broker` resource or a client's
    /// broker. Once the fixture cleans up (or is dropped) every operation on it fails
    /// with [`BrokerError::ConnectionLost`].
    pub fn broker(&self) -> SharedBroker {
        Arc::clone(&self.main)
    }

    /// Another connection, e.g. to run a second instance of a service as another
    /// process would; shut like [`broker`](Self::broker).
    ///
    /// # Errors
    ///
    /// When RabbitMQ refuses the connection.
    pub async fn new_connection(&self) -> Result<SharedBroker, FixtureError> {
        let broker = AmqpBroker::connect(&self.uri, AmqpOptions::new(format!("nameko-testing {}", self.token))).await?;
        self.handed_out
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(broker.clone());
        Ok(Arc::new(Gated {
            broker,
            shut: Arc::clone(&self.shut),
        }))
    }

    /// The config services of this test run with: `AMQP_URI` and `rpc_exchange`, plus
    /// `extra` (a JSON object of more keys, e.g. `{"max_workers": 2}`; `null` for none).
    ///
    /// # Panics
    ///
    /// When `extra` is neither an object nor null.
    pub fn config(&self, extra: Value) -> Config {
        let json = self.config_json(extra);
        // JSON is YAML; the keys are plain, so this cannot fail.
        Config::from_yaml_str(&json.to_string()).expect("a JSON object is a valid config")
    }

    /// The same config as a JSON object, e.g. to write a Python service's config file.
    ///
    /// # Panics
    ///
    /// When `extra` is neither an object nor null.
    pub fn config_json(&self, extra: Value) -> Value {
        let mut config = Map::new();
        config.insert("AMQP_URI".into(), json!(self.url()));
        config.insert("rpc_exchange".into(), json!(self.rpc_exchange));
        match extra {
            Value::Null => {}
            Value::Object(more) => config.extend(more),
            other => panic!("config extras must be a JSON object, not {other}"),
        }
        Value::Object(config)
    }

    /// Claims everything a service named `name` declares or is the source of:
    /// `rpc-<name>`, its reply queues `rpc.reply-<name>-*`, its handlers' queues
    /// (`*--<name>.*`), the `<name>.events` exchange and the queues bound to it
    /// (`evt-<name>-*`).
    pub fn claim_service(&self, name: &str) {
        let mut claims = self.claims();
        claims.queues.insert(format!("rpc-{name}"));
        claims.exchanges.insert(format!("{name}.events"));
        claims.prefixes.insert(format!("rpc.reply-{name}-"));
        claims.prefixes.insert(format!("evt-{name}-"));
        claims.fragments.insert(format!("--{name}."));
    }

    /// Claims a queue by name.
    pub fn claim_queue(&self, name: impl Into<String>) {
        self.claims().queues.insert(name.into());
    }

    /// Claims an exchange by name.
    pub fn claim_exchange(&self, name: impl Into<String>) {
        self.claims().exchanges.insert(name.into());
    }

    /// Claims every queue and exchange whose name starts with `prefix` (found with
    /// `rabbitmqctl` at clean-up).
    pub fn claim_prefix(&self, prefix: impl Into<String>) {
        self.claims().prefixes.insert(prefix.into());
    }

    /// How many consumers `queue` has, `None` when it does not exist.
    ///
    /// # Errors
    ///
    /// When the connection fails.
    pub async fn consumers(&self, queue: &str) -> Result<Option<u32>, FixtureError> {
        Ok(self.queue_counts(queue).await?.map(|counts| counts.consumers))
    }

    /// The ready messages and consumers of `queue`, `None` when it does not exist (a
    /// passive declare, on a connection of its own).
    ///
    /// # Errors
    ///
    /// When the connection fails.
    pub async fn queue_counts(&self, queue: &str) -> Result<Option<QueueCounts>, FixtureError> {
        use lapin::options::QueueDeclareOptions;

        let amqp = |e: lapin::Error| FixtureError::Broker(BrokerError::Other(e.to_string()));
        let name = lapin::types::ShortString::try_new(queue)
            .map_err(|_| FixtureError::Broker(BrokerError::Other(format!("queue name too long: {queue:.40}…"))))?;
        let mut inspector = self.inspector.lock().await;
        let connection = match inspector.as_ref() {
            Some(connection) if connection.status().connected() => connection,
            _ => {
                let properties = lapin::ConnectionProperties::default()
                    .with_connection_name(format!("nameko-testing inspector {}", self.token).into());
                inspector.insert(
                    lapin::Connection::connect(&self.url(), properties)
                        .await
                        .map_err(amqp)?,
                )
            }
        };
        let channel = connection.create_channel().await.map_err(amqp)?;
        let options = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        match channel.queue_declare(name, options, Default::default()).await {
            Ok(declared) => {
                let _ = channel.close(200, "OK".into()).await;
                Ok(Some(QueueCounts {
                    ready: declared.message_count(),
                    consumers: declared.consumer_count(),
                }))
            }
            // NOT_FOUND closes the channel.
            Err(error) if error.to_string().contains("NOT_FOUND") => Ok(None),
            // Another connection's exclusive queue refuses even a passive declare.
            Err(error) if error.to_string().contains("RESOURCE_LOCKED") => {
                drop(inspector);
                let vhost = self.uri.vhost().to_owned();
                let queue = queue.to_owned();
                tokio::task::spawn_blocking(move || listed_counts(&vhost, &queue))
                    .await
                    .unwrap_or_else(|e| Err(format!("the rabbitmqctl task failed: {e}")))
                    .map_err(|reason| {
                        FixtureError::Broker(BrokerError::ResourceLocked(format!(
                            "queue `{}` is another connection's exclusive queue and cannot be listed: {reason}",
                            declared_name(&error)
                        )))
                    })
            }
            Err(error) => Err(amqp(error)),
        }
    }

    /// Waits until `queue` has at least `wanted` consumers, polling every 50 ms.
    ///
    /// # Errors
    ///
    /// [`FixtureError::NotConsuming`] after `timeout`.
    pub async fn wait_for_consumers(&self, queue: &str, wanted: u32, timeout: Duration) -> Result<(), FixtureError> {
        let start = tokio::time::Instant::now();
        loop {
            let consumers = self.consumers(queue).await?.unwrap_or(0);
            if consumers >= wanted {
                return Ok(());
            }
            if start.elapsed() >= timeout {
                return Err(FixtureError::NotConsuming {
                    queue: queue.to_owned(),
                    consumers,
                    wanted,
                    waited: start.elapsed(),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Deletes every claimed queue and exchange, and shuts the connections handed out.
    /// Call it at the end of the test, after stopping the services.
    ///
    /// # Errors
    ///
    /// [`FixtureError::Cleanup`] naming what could not be deleted.
    pub async fn cleanup(self) -> Result<(), FixtureError> {
        self.cleaned.store(true, Ordering::SeqCst);
        self.shut.store(true, Ordering::SeqCst);
        let handed_out = std::mem::take(&mut *self.handed_out.lock().unwrap_or_else(PoisonError::into_inner));
        for broker in handed_out {
            broker.close().await;
        }
        if let Some(inspector) = self.inspector.lock().await.take() {
            let _ = inspector.close(200, "OK".into()).await;
        }
        let (queues, exchanges) = self.doomed().await;
        let result = delete(&self.admin, &queues, &exchanges).await;
        self.admin.close().await;
        result
    }

    /// The claimed queues and exchanges that exist (or, without `rabbitmqctl`, the
    /// exact names claimed).
    async fn doomed(&self) -> (Vec<String>, Vec<String>) {
        let vhost = self.uri.vhost().to_owned();
        let listed = tokio::task::spawn_blocking(move || list_entities(&vhost))
            .await
            .unwrap_or_else(|e| Err(format!("the listing task failed: {e}")));
        doomed(&self.claims(), listed)
    }
}

fn doomed(claims: &Claims, listed: Result<(Vec<String>, Vec<String>), String>) -> (Vec<String>, Vec<String>) {
    let mut queues: BTreeSet<String> = claims.queues.clone();
    let mut exchanges: BTreeSet<String> = claims.exchanges.clone();
    match listed {
        Ok((all_queues, all_exchanges)) => {
            queues.extend(all_queues.into_iter().filter(|q| claims.covers(q)));
            exchanges.extend(all_exchanges.into_iter().filter(|e| claims.covers(e)));
        }
        Err(reason) => eprintln!(
            "nameko-testing: cannot list RabbitMQ entities ({reason}); only names claimed exactly are deleted, \
             and queues or exchanges named by prefix or token may remain"
        ),
    }
    (queues.into_iter().collect(), exchanges.into_iter().collect())
}

/// Queue and exchange names of `vhost`, from `rabbitmqctl` (the broker's own `amq.*`
/// exchanges and the default exchange left out).
fn list_entities(vhost: &str) -> Result<(Vec<String>, Vec<String>), String> {
    let list = |what: &str| -> Result<Vec<String>, String> {
        let output = Command::new("rabbitmqctl")
            .args(["-q", what, "-p", vhost, "name", "--no-table-headers"])
            .output()
            .map_err(|e| format!("rabbitmqctl: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "rabbitmqctl {what}: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(str::trim)
            .filter(|name| !name.is_empty() && !name.starts_with("amq."))
            .map(str::to_owned)
            .collect())
    };
    Ok((list("list_queues")?, list("list_exchanges")?))
}

/// The counts of one queue from `rabbitmqctl list_queues` (for exclusive queues of
/// other connections).
fn listed_counts(vhost: &str, queue: &str) -> Result<Option<QueueCounts>, String> {
    let output = Command::new("rabbitmqctl")
        .args([
            "-q",
            "list_queues",
            "-p",
            vhost,
            "name",
            "messages_ready",
            "consumers",
            "--no-table-headers",
        ])
        .output()
        .map_err(|e| format!("rabbitmqctl: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "rabbitmqctl list_queues: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    let text = String::from_utf8_lossy(&output.stdout);
    for line in text.lines() {
        let fields: Vec<&str> = line.split('\t').collect();
        if let [name, ready, consumers] = fields.as_slice()
            && *name == queue
        {
            let number = |text: &str| text.trim().parse::<u32>().map_err(|e| format!("`{text}`: {e}"));
            return Ok(Some(QueueCounts {
                ready: number(ready)?,
                consumers: number(consumers)?,
            }));
        }
    }
    Ok(None)
}

fn declared_name(error: &lapin::Error) -> String {
    let text = error.to_string();
    text.split('\'').nth(1).unwrap_or("?").to_owned()
}

async fn delete(broker: &AmqpBroker, queues: &[String], exchanges: &[String]) -> Result<(), FixtureError> {
    let mut failed = Vec::new();
    for queue in queues {
        // An exclusive queue of a connection still open goes when that connection does.
        if let Err(error) = broker.delete_queue(queue).await
            && !matches!(error, BrokerError::NotFound(_) | BrokerError::ResourceLocked(_))
        {
            failed.push(format!("queue {queue}: {error}"));
        }
    }
    for exchange in exchanges {
        if let Err(error) = broker.delete_exchange(exchange).await
            && !matches!(error, BrokerError::NotFound(_))
        {
            failed.push(format!("exchange {exchange}: {error}"));
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(FixtureError::Cleanup(failed))
    }
}

impl Drop for RabbitMq {
    /// Without [`cleanup`](Self::cleanup): shuts the handed-out connections (every
    /// operation on them fails from now on) and deletes what was claimed over a new
    /// connection, on a thread with a runtime of its own (a test's runtime cannot be
    /// blocked on from inside).
    fn drop(&mut self) {
        if self.cleaned.swap(true, Ordering::SeqCst) {
            return;
        }
        self.shut.store(true, Ordering::SeqCst);
        let uri = self.uri.clone();
        let token = self.token.clone();
        let claims = std::mem::take(&mut *self.claims());
        let cleaner = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("cannot build a runtime: {e}"))?;
            runtime.block_on(async {
                let broker = AmqpBroker::connect(&uri, AmqpOptions::new(format!("nameko-testing cleanup {token}")))
                    .await
                    .map_err(|e| e.to_string())?;
                let vhost = uri.vhost().to_owned();
                let (queues, exchanges) = doomed(&claims, list_entities(&vhost));
                let result = delete(&broker, &queues, &exchanges).await;
                broker.close().await;
                result.map_err(|e| e.to_string())
            })
        });
        match cleaner.join() {
            Ok(Ok(())) => {}
            Ok(Err(error)) => eprintln!("nameko-testing: cleaning up RabbitMQ after the test failed: {error}"),
            Err(_) => eprintln!("nameko-testing: the RabbitMQ clean-up thread panicked"),
        }
    }
}

/// A connection handed out by the fixture: usable until the fixture cleans up.
struct Gated {
    broker: AmqpBroker,
    shut: Arc<AtomicBool>,
}

impl fmt::Debug for Gated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gated")
            .field("broker", &self.broker)
            .field("shut", &self.shut.load(Ordering::Relaxed))
            .finish()
    }
}

impl Gated {
    fn open(&self) -> Result<&AmqpBroker, BrokerError> {
        if self.shut.load(Ordering::SeqCst) {
            Err(BrokerError::ConnectionLost(
                "the test's RabbitMq fixture has cleaned up".into(),
            ))
        } else {
            Ok(&self.broker)
        }
    }
}

#[async_trait]
impl Broker for Gated {
    async fn declare(&self, topology: &Topology) -> Result<(), BrokerError> {
        self.open()?.declare(topology).await
    }

    async fn delete_queue(&self, name: &str) -> Result<(), BrokerError> {
        self.open()?.delete_queue(name).await
    }

    async fn delete_exchange(&self, name: &str) -> Result<(), BrokerError> {
        self.open()?.delete_exchange(name).await
    }

    async fn publish(&self, message: Publish) -> Result<PublishOutcome, BrokerError> {
        self.open()?.publish(message).await
    }

    async fn consume(&self, queue: &str, options: ConsumeOptions) -> Result<Consumer, BrokerError> {
        self.open()?.consume(queue, options).await
    }

    fn events(&self) -> broadcast::Receiver<ConnectionEvent> {
        self.broker.events()
    }

    async fn close(&self) {
        self.broker.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_cover_exact_names_prefixes_and_fragments() {
        let mut claims = Claims::default();
        claims.fragments.insert("tok".into());
        claims.queues.insert("rpc-svc".into());
        claims.prefixes.insert("rpc.reply-svc-".into());
        claims.fragments.insert("--svc.".into());
        for name in [
            "rpc-svc",
            "rpc.reply-svc-1234",
            "evt-src-ev--svc.handle",
            "py_tok_1.events",
        ] {
            assert!(claims.covers(name), "{name}");
        }
        for name in [
            "rpc-svc2",
            "rpc.reply-svc2-1234",
            "evt-src-ev--svc2.handle",
            "nameko-rpc",
        ] {
            assert!(!claims.covers(name), "{name}");
        }
    }

    #[test]
    fn without_a_listing_only_exact_names_are_deleted() {
        let mut claims = Claims::default();
        claims.queues.insert("q".into());
        claims.exchanges.insert("x".into());
        claims.prefixes.insert("p-".into());
        let listed = Ok((vec!["p-1".into(), "other".into()], vec!["x".into(), "p-x".into()]));
        assert_eq!(
            doomed(&claims, listed),
            (vec!["p-1".into(), "q".into()], vec!["p-x".into(), "x".into()])
        );
        assert_eq!(
            doomed(&claims, Err("no rabbitmqctl".into())),
            (vec!["q".into()], vec!["x".into()])
        );
    }
}
