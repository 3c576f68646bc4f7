//! Secrets stay secret, as a process against RabbitMQ: a password in the AMQP URI, an
//! `auth_token` in the context, and arguments marked sensitive — with failing workers,
//! `UnknownService`, a refused login and `show-config` — appear in no line the process
//! prints (at DEBUG), in no error a caller gets, and not in `show-config`'s output. The
//! sensitive arguments are logged redacted.

mod common;

use std::{process::Command, time::Duration};

use common::Service;
use nameko::{
    broker::{FieldValue, Headers, Properties, Publish, PublishOutcome},
    core::ContextData,
    rpc::{ClusterRpc, RpcError},
};
use nameko_testing::RabbitMq;
use serde_json::{Value, json};

/// Runs `rabbitmqctl args...`; `None` when it cannot run here.
fn rabbitmqctl(args: &[&str]) -> Option<()> {
    let output = Command::new("rabbitmqctl").arg("-q").args(args).output().ok()?;
    assert!(
        output.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Some(())
}

/// The remote error of a failed call.
fn remote(result: Result<Value, RpcError>) -> nameko::prelude::RemoteError {
    match result {
        Err(RpcError::Remote(err)) => *err,
        other => panic!("expected a remote error, got {other:?}"),
    }
}

/// The example binary's output for a one-shot command.
fn one_shot(args: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_example-slow"))
        .args(args)
        .env("RUST_LOG", "debug")
        .output()
        .expect("the example binary runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_a_log_line_an_error_or_show_config() {
    let Some(rabbit) = RabbitMq::from_env().await else {
        return;
    };
    rabbit.claim_service("vault");
    rabbit.claim_service("vault_source");
    let token = rabbit.token().to_owned();
    let secret = |what: &str| format!("{what}-secret-{token}");
    let (password, auth_token, argument, card, pin, wrong) = (
        secret("password"),
        secret("auth-token"),
        secret("argument"),
        secret("card"),
        secret("pin"),
        secret("wrong-password"),
    );

    // A user of its own, whose password is the secret in the URI.
    let user = format!("vault_{token}");
    let vhost = rabbit.uri().vhost().to_owned();
    if rabbitmqctl(&["add_user", &user, &password]).is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "the secrets test needs rabbitmqctl under CI=true"
        );
        eprintln!("skipping the secrets test: rabbitmqctl cannot run here");
        return;
    }
    rabbitmqctl(&["set_permissions", "-p", &vhost, &user, ".*", ".*", ".*"]);
    let url = |password: &str| {
        format!(
            "amqp://{user}:{password}@{}:{}/{}",
            rabbit.uri().host(),
            rabbit.uri().port(),
            vhost.replace('/', "%2F")
        )
    };

    let mut service = Service::start(&url(&password), rabbit.rpc_exchange(), &["vault"], "debug");
    for queue in ["rpc-vault", "evt-vault_source-deposit--vault.deposit"] {
        rabbit
            .wait_for_consumers(queue, 1, Duration::from_secs(60))
            .await
            .unwrap_or_else(|e| panic!("{e}; log: {:#?}", service.log()));
    }
    let rpc = ClusterRpc::connect(rabbit.broker(), &rabbit.config(Value::Null))
        .await
        .unwrap();
    rabbit.claim_queue(rpc.client().reply_queue());
    let rpc = rpc.with_data(ContextData::new().with("auth_token", auth_token.as_str()));

    let mut errors = Vec::new();
    let locked = remote(
        rpc.call(
            "vault",
            "unlock",
            json!({"user": "ada", "password": argument, "card": {"number": card, "name": "Ada"}}),
        )
        .await,
    );
    assert_eq!(locked.exc_type(), "Locked");
    errors.push(format!("{locked:?} {locked}"));
    let nobody = format!("nobody_home_{token}");
    let forwarded = remote(rpc.call("vault", "forward", json!([nobody, "x"])).await);
    assert_eq!(forwarded.exc_type(), "UnknownService");
    errors.push(format!("{forwarded:?} {forwarded}"));
    match rpc.call(&nobody, "x", json!([argument])).await {
        Err(err @ RpcError::UnknownService { .. }) => errors.push(format!("{err:?} {err}")),
        other => panic!("expected UnknownService, got {other:?}"),
    }
    let mut headers = Headers::new();
    headers.insert("nameko.auth_token", FieldValue::String(auth_token.clone()));
    let outcome = rabbit
        .broker()
        .publish(Publish {
            exchange: "vault_source.events".into(),
            routing_key: "deposit".into(),
            mandatory: true,
            properties: Properties::json(headers),
            body: json!({"pin": pin, "amount": 5}).to_string().into(),
        })
        .await
        .unwrap();
    assert_eq!(outcome, PublishOutcome::Routed);
    service.wait_for_lines("worker failed", 3).await;

    // `show-config` with the URI, and a login refused for a wrong password.
    let (shown, config) = one_shot(&["show-config", "--broker", &url(&password)]);
    assert!(shown, "{config}");
    assert!(config.contains(&format!("amqp://{user}:***@")), "{config}");
    let (called, refused) = one_shot(&["request", "vault.unlock", "{}", "--broker", &url(&wrong)]);
    assert!(!called && refused.contains("ACCESS_REFUSED"), "{refused}");

    service.signal("TERM");
    assert_eq!(service.exit_code().await, Some(0), "log: {:#?}", service.log());
    let log = service.log().join("\n");
    let everything = [log.as_str(), &errors.join("\n"), &config, &refused].join("\n");
    for (what, secret) in [
        ("the URI's password", &password),
        ("the auth token", &auth_token),
        ("a sensitive argument", &argument),
        ("a sensitive nested argument", &card),
        ("a sensitive event field", &pin),
        ("a refused password", &wrong),
    ] {
        assert!(
            !everything.contains(secret.as_str()),
            "{what} was printed: {everything}"
        );
    }
    // What is shown instead: the arguments, redacted.
    assert!(
        log.contains(r#"args={"card":{"name":"Ada","number":"********"},"password":"********","user":"ada"}"#),
        "{log}"
    );
    assert!(
        log.contains(r#"args={"deposit":{"amount":5,"pin":"********"}}"#),
        "{log}"
    );

    rpc.client().stop().await;
    rabbitmqctl(&["delete_user", &user]);
    rabbit.cleanup().await.unwrap();
}
