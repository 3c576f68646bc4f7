//! RabbitMQ over TLS (`amqps://`, `AMQP_SSL`), against the listener `.ci/run` sets up:
//! `NAMEKO_TEST_AMQPS_URI` (e.g. `amqps://guest:guest@localhost:5671/<vhost>`) and
//! `NAMEKO_TEST_TLS_DIR`, holding `ca.pem` (the CA the listener's certificate chains to,
//! for `localhost` and `127.0.0.1`), `client.pem`/`client.key` (a client certificate from
//! that CA) and `other_ca.pem`, `other_client.pem`/`other_client.key` (from a CA nobody
//! trusts). The listener asks for a client certificate and checks one when given.
//! `NAMEKO_TEST_EXTERNAL_USER` names the user `LOGIN_METHOD: EXTERNAL` logs in as: the
//! client certificate's common name, without a password, allowed on the vhost.
//!
//! Skipped, with the reason printed, when the variables are unset or the listener is
//! unreachable; under `CI=true` that is a failure.

use std::{path::PathBuf, sync::Arc, time::Duration};

use nameko_core::{Config, Entrypoints, RemoteError, Service, ServiceRunner, WorkerContext};
use nameko_extensions::{
    amqp::{AmqpBroker, AmqpOptions, AmqpUri, TlsOptions, Verify},
    broker::{Broker, BrokerError, Queue, SharedBroker, Topology},
    rpc::{ClusterRpc, RpcArgs, RpcEntrypoint},
};
use serde_json::{Value, json};

use crate::support::deps;

struct TlsEnv {
    uri: AmqpUri,
    dir: PathBuf,
}

impl TlsEnv {
    async fn new() -> Option<Self> {
        let skip = |reason: String| crate::support::skip("the TLS listener", &reason);
        let (Ok(text), Ok(dir)) = (
            std::env::var("NAMEKO_TEST_AMQPS_URI"),
            std::env::var("NAMEKO_TEST_TLS_DIR"),
        ) else {
            return skip("NAMEKO_TEST_AMQPS_URI or NAMEKO_TEST_TLS_DIR is not set (`.ci/run` sets both)".to_owned());
        };
        let uri = match AmqpUri::parse(&text) {
            Ok(uri) if uri.is_tls() => uri,
            Ok(uri) => return skip(format!("NAMEKO_TEST_AMQPS_URI is not amqps://: {uri}")),
            Err(error) => return skip(format!("NAMEKO_TEST_AMQPS_URI is invalid: {error}")),
        };
        let dir = PathBuf::from(dir);
        if !dir.join("ca.pem").is_file() {
            return skip(format!("{} has no ca.pem", dir.display()));
        }
        let address = format!("{}:{}", uri.host(), uri.port());
        if let Err(error) = tokio::net::TcpStream::connect(&address).await {
            return skip(format!("the TLS listener at {uri} is unreachable: {error}"));
        }
        Some(Self { uri, dir })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn trusting_the_ca(&self) -> TlsOptions {
        TlsOptions::new().ca_certs(self.path("ca.pem")).expect("the test CA")
    }

    async fn connect(&self, tls: TlsOptions) -> Result<AmqpBroker, BrokerError> {
        AmqpBroker::connect(&self.uri, AmqpOptions::new("nameko-rs tls test").tls(tls)).await
    }
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

deps!(TlsEcho, TlsEchoProviders { cx: WorkerContext });

impl Service for TlsEcho {
    const NAME: &'static str = "tls_echo";

    fn entrypoints(e: &mut Entrypoints<Self>) {
        e.add(
            "echo",
            RpcEntrypoint::<RpcArgs, Value>::new(),
            |w: TlsEcho, args: RpcArgs| async move {
                let hops = w.cx.call_id_stack().len();
                Ok::<_, RemoteError>(json!({"args": args.args, "kwargs": args.kwargs, "hops": hops}))
            },
        );
    }
}

#[tokio::test]
async fn a_service_is_served_and_called_over_tls() {
    let Some(env) = TlsEnv::new().await else { return };
    let exchange = unique("tls-rpc");

    // The service's connection: amqps:// with the test CA.
    let server = env.connect(env.trusting_the_ca()).await.expect("TLS with the test CA");
    assert!(server.uri().is_tls());

    // The caller's, from a config as a Python service would write it: an amqp:// URI
    // without a port, turned to TLS on 5671 by AMQP_SSL (as kombu does), with a client
    // certificate.
    let yaml = format!(
        "AMQP_URI: amqp://{user}:guest@{host}/{vhost}\nrpc_exchange: {exchange}\nAMQP_SSL:\n  ca_certs: {ca}\n  \
         certfile: {cert}\n  keyfile: {key}\n  cert_reqs: CERT_REQUIRED\n",
        user = env.uri.username(),
        host = env.uri.host(),
        vhost = env.uri.vhost().replace('/', "%2F"),
        ca = env.path("ca.pem").display(),
        cert = env.path("client.pem").display(),
        key = env.path("client.key").display(),
    );
    let config = Config::from_yaml_str(&yaml).expect("the config");
    let client = AmqpBroker::connect_config(&config, "nameko-rs tls caller")
        .await
        .expect("TLS from AMQP_SSL with a client certificate");
    assert_eq!(
        (client.uri().is_tls(), client.uri().port()),
        (true, 5671),
        "AMQP_SSL makes amqp:// TLS on the TLS port: {}",
        client.uri()
    );

    let server: SharedBroker = Arc::new(server);
    let running = ServiceRunner::new(config.clone())
        .resource::<dyn Broker>(Arc::clone(&server))
        .stop_timeout(Duration::from_secs(5))
        .with_service::<TlsEcho>()
        .start()
        .await
        .expect("the service starts over TLS");
    let client: SharedBroker = Arc::new(client);
    let rpc = ClusterRpc::connect(Arc::clone(&client), &config)
        .await
        .expect("the standalone proxy over TLS");
    let reply = rpc.call("tls_echo", "echo", json!({"over": "tls"})).await;

    let reply_queue = rpc.client().reply_queue().to_owned();
    rpc.client().stop().await;
    running.stop().await;
    client.delete_queue(&reply_queue).await.expect("delete the reply queue");
    client.delete_queue("rpc-tls_echo").await.expect("delete the rpc queue");
    client.delete_exchange(&exchange).await.expect("delete the exchange");
    client.close().await;
    server.close().await;
    assert_eq!(
        reply.expect("the reply"),
        json!({"args": [], "kwargs": {"over": "tls"}, "hops": 2})
    );
}

#[tokio::test]
async fn a_certificate_from_an_untrusted_ca_fails_the_handshake_clearly() {
    let Some(env) = TlsEnv::new().await else { return };
    let wrong = TlsOptions::new()
        .ca_certs(env.path("other_ca.pem"))
        .expect("the other CA");
    let error = env.connect(wrong).await.expect_err("the server's CA is not trusted");
    let text = error.to_string();
    assert!(matches!(error, BrokerError::ConnectionLost(_)), "{error:?}");
    assert!(
        text.contains(&format!("TLS handshake with {} failed", env.uri.host())),
        "{text}"
    );
    assert!(text.contains("UnknownIssuer"), "names the cause: {text}");
    assert!(text.contains(&format!("amqps://{}:***@", env.uri.username())), "{text}");
    assert!(!text.contains(":guest@"), "the password is masked: {text}");
}

#[tokio::test]
async fn the_host_name_is_checked_unless_cert_none() {
    let Some(env) = TlsEnv::new().await else { return };
    let elsewhere = env
        .trusting_the_ca()
        .server_hostname("rabbit.example.invalid")
        .expect("a DNS name");
    let error = env
        .connect(elsewhere)
        .await
        .expect_err("the certificate is for localhost");
    assert!(error.to_string().contains("not valid for name"), "{error}");

    // The certificate names 127.0.0.1 too.
    let by_address = env.trusting_the_ca().server_hostname("127.0.0.1").expect("an address");
    env.connect(by_address).await.expect("an IP address SAN").close().await;

    // CERT_NONE accepts a server no CA here vouches for, whatever its name.
    let unverified = TlsOptions::new()
        .ca_certs(env.path("other_ca.pem"))
        .expect("the other CA")
        .server_hostname("rabbit.example.invalid")
        .expect("a DNS name")
        .verify(Verify::None);
    let broker = env.connect(unverified).await.expect("CERT_NONE connects");
    assert!(broker.is_connected());
    broker.close().await;
}

#[tokio::test]
async fn the_server_checks_a_client_certificate() {
    let Some(env) = TlsEnv::new().await else { return };
    let trusted = env
        .trusting_the_ca()
        .client_cert(env.path("client.pem"), env.path("client.key"))
        .expect("the client certificate");
    let broker = env.connect(trusted).await.expect("a client certificate from the CA");
    broker.close().await;

    // A certificate from another CA is refused by the listener: proof it is presented.
    let untrusted = env
        .trusting_the_ca()
        .client_cert(env.path("other_client.pem"), env.path("other_client.key"))
        .expect("the other client certificate");
    let error = env.connect(untrusted).await.expect_err("the listener refuses it");
    assert!(matches!(error, BrokerError::ConnectionLost(_)), "{error:?}");
}

#[tokio::test]
async fn external_login_takes_the_user_from_the_client_certificate() {
    let Some(env) = TlsEnv::new().await else { return };
    if std::env::var("NAMEKO_TEST_EXTERNAL_USER").is_err() {
        crate::support::skip::<()>(
            "RabbitMQ's EXTERNAL mechanism",
            "NAMEKO_TEST_EXTERNAL_USER is not set (`.ci/run` sets it up)",
        );
        return;
    }
    // The URI's user and password are wrong on purpose: EXTERNAL does not send them.
    let yaml = format!(
        "AMQP_URI: amqps://nobody:not-the-password@{host}:{port}/{vhost}\nLOGIN_METHOD: external\nAMQP_SSL:\n  \
         ca_certs: {ca}\n  certfile: {cert}\n  keyfile: {key}\n",
        host = env.uri.host(),
        port = env.uri.port(),
        vhost = env.uri.vhost().replace('/', "%2F"),
        ca = env.path("ca.pem").display(),
        cert = env.path("client.pem").display(),
        key = env.path("client.key").display(),
    );
    let config = Config::from_yaml_str(&yaml).expect("the config");
    let broker = AmqpBroker::connect_config(&config, "nameko-rs external login")
        .await
        .expect("EXTERNAL logs in with the client certificate");
    // The certificate's user may use the vhost.
    let queue = unique("external");
    broker
        .declare(&Topology::new().queue(Queue::durable(&queue)))
        .await
        .expect("a declare as the certificate's user");
    broker.delete_queue(&queue).await.expect("delete the queue");
    broker.close().await;

    // The same URI with PLAIN sends the wrong password: refused.
    let plain = Config::from_yaml_str(&yaml.replace("LOGIN_METHOD: external", "LOGIN_METHOD: PLAIN")).unwrap();
    let error = AmqpBroker::connect_config(&plain, "nameko-rs plain login")
        .await
        .expect_err("PLAIN with a wrong password");
    assert!(error.to_string().contains("ACCESS_REFUSED"), "{error}");
    assert!(!error.to_string().contains("not-the-password"), "{error}");
}
