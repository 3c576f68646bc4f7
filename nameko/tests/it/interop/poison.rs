//! Hand-made requests from a raw AMQP client (py-amqp): malformed requests are
//! answered with `MalformedRequest` as Nameko's client reads it, and poison messages
//! never stop a Rust service.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use nameko::prelude::*;
use serde_json::{Value, json};

use super::Interop;

/// How often the poison service's method ran.
#[derive(Debug, Default)]
pub(crate) struct Runs(AtomicU64);

#[derive(Debug, nameko::Dependencies)]
pub(crate) struct Malformed {}

#[nameko::service(name = "interop_malformed")]
impl Malformed {
    #[rpc]
    async fn echo(&self, value: Value) -> Result<Value, RemoteError> {
        Ok(value)
    }
}

fn request(id: &str, method: &str, body: &str, content_type: Option<&str>, reply_to: bool) -> Value {
    json!({"id": id, "method": method, "body": body, "content_type": content_type, "reply_to": reply_to})
}

const JSON: Option<&str> = Some("application/json");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_malformed_request_as_python_reads_it() {
    let Some(t) = Interop::new().await else { return };
    t.rabbit.claim_service("interop_malformed");
    let running = t.runner(Value::Null).with_service::<Malformed>().start().await.unwrap();

    let replies = t
        .script(
            "raw_rpc.py",
            &json!({
                "service": "interop_malformed",
                "requests": [
                    request("no-kwargs", "echo", r#"{"args": [1]}"#, JSON, true),
                    request("not-an-object", "echo", "[1, 2]", JSON, true),
                    request("undecodable", "echo", "{not json", JSON, true),
                    request("no-content-type", "echo", r#"{"args": [1], "kwargs": {}}"#, None, true),
                    request("text", "echo", r#"{"args": [1], "kwargs": {}}"#, Some("text/plain"), true),
                    request("fine", "echo", r#"{"args": [], "kwargs": {"value": "ok"}}"#, JSON, true),
                ],
            }),
        )
        .await;
    running.stop().await;

    for id in ["no-kwargs", "not-an-object", "undecodable", "no-content-type", "text"] {
        let reply = &replies[id];
        assert_eq!(reply["result"], Value::Null, "{id}: {reply}");
        assert_eq!(
            reply["error"]["exc_path"], "nameko.exceptions.MalformedRequest",
            "{id}: {reply}"
        );
        // What Nameko's client raises for it: its own MalformedRequest.
        assert_eq!(
            (&reply["raised"]["module"], &reply["raised"]["class"]),
            (&json!("nameko.exceptions"), &json!("MalformedRequest")),
            "{id}: {reply}"
        );
    }
    assert_eq!(
        replies["no-kwargs"]["error"]["value"],
        "Message missing `args` or `kwargs`"
    );
    assert_eq!(replies["fine"], json!({"result": "ok", "error": null}));

    t.finish(vec![], None).await;
}

#[derive(Debug, nameko::Dependencies)]
pub(crate) struct Poison {
    runs: Dep<Runs>,
}

#[nameko::service(name = "interop_poison")]
impl Poison {
    #[rpc]
    async fn bump(&self) -> Result<u64, RemoteError> {
        Ok(self.runs.0.fetch_add(1, Ordering::SeqCst) + 1)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_leave_a_rust_service_serving() {
    let Some(t) = Interop::new().await else { return };
    t.rabbit.claim_service("interop_poison");
    let runs = Arc::new(Runs::default());
    let running = t
        .runner(Value::Null)
        .resource(Arc::clone(&runs))
        .with_service::<Poison>()
        .start()
        .await
        .unwrap();

    // Each would kill a Nameko 2.14 container or be dropped without a reply.
    let valid = r#"{"args": [], "kwargs": {}}"#;
    let replies = t
        .script(
            "raw_rpc.py",
            &json!({
                "service": "interop_poison",
                "requests": [
                    request("no-reply-to", "bump", valid, JSON, false),
                    request("no-content-type-no-reply-to", "bump", valid, None, false),
                    request("undecodable-no-reply-to", "bump", "\u{0}\u{1}garbage", JSON, false),
                    request("no-content-type", "bump", valid, None, true),
                    request("undecodable", "bump", "\u{0}\u{1}garbage", JSON, true),
                    request("not-an-object", "bump", "42", JSON, true),
                    request("after", "bump", valid, JSON, true),
                ],
            }),
        )
        .await;

    for id in ["no-content-type", "undecodable", "not-an-object"] {
        assert_eq!(replies[id]["error"]["exc_type"], "MalformedRequest", "{id}: {replies}");
    }
    assert_eq!(replies["after"], json!({"result": 1, "error": null}), "{replies}");
    for id in ["no-reply-to", "no-content-type-no-reply-to", "undecodable-no-reply-to"] {
        assert!(replies.get(id).is_none(), "{id} asked for no reply: {replies}");
    }
    // Requests without reply_to were rejected, not run, and not requeued.
    assert_eq!(runs.0.load(Ordering::SeqCst), 1);
    let counts = t.rabbit.queue_counts("rpc-interop_poison").await.unwrap().unwrap();
    assert_eq!((counts.ready, counts.consumers), (0, 1));

    // And a Nameko client is still served.
    let outcomes = t
        .python_calls(json!({"calls": [{"service": "interop_poison", "method": "bump"}]}))
        .await;
    assert_eq!(outcomes, [json!({"result": 2})]);

    running.stop().await;
    t.finish(vec![], None).await;
}

#[derive(Debug, nameko::Dependencies)]
pub(crate) struct Hostile {}

#[nameko::service(name = "interop_hostile")]
impl Hostile {
    #[rpc]
    async fn echo(&self, value: Value) -> Result<Value, RemoteError> {
        Ok(value)
    }
}

/// Through RabbitMQ from py-amqp: a header nested 5,000 levels deep (it aborted any
/// lapin consumer before the AMQP header guard) is answered with `MalformedRequest`,
/// a body over `MAX_MESSAGE_SIZE` with `MessageTooLarge` (a `RemoteError` to a Python
/// caller), and the service keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_headers_and_oversized_requests_are_refused_as_python_reads_it() {
    let Some(t) = Interop::new().await else { return };
    t.rabbit.claim_service("interop_hostile");
    let running = t
        .runner(json!({"MAX_MESSAGE_SIZE": 1024}))
        .with_service::<Hostile>()
        .start()
        .await
        .unwrap();
    let valid = r#"{"args": ["ok"], "kwargs": {}}"#;
    let mut deep = request("deep", "echo", valid, JSON, true);
    deep["header_depth"] = json!(5000);
    let mut at_limit = request("at-limit", "echo", valid, JSON, true);
    at_limit["header_depth"] = json!(64);
    let large = format!(r#"{{"args": ["{}"], "kwargs": {{}}}}"#, "x".repeat(2000));
    let replies = t
        .script(
            "raw_rpc.py",
            &json!({
                "service": "interop_hostile",
                "requests": [
                    deep,
                    at_limit,
                    request("too-large", "echo", &large, JSON, true),
                    request("after", "echo", valid, JSON, true),
                ],
            }),
        )
        .await;
    running.stop().await;

    let deep = &replies["deep"];
    assert_eq!(
        deep["error"]["exc_path"], "nameko.exceptions.MalformedRequest",
        "{replies}"
    );
    assert!(
        deep["error"]["value"]
            .as_str()
            .unwrap_or("")
            .contains("nested more than 64 levels"),
        "{replies}"
    );
    assert_eq!(replies["at-limit"], json!({"result": "ok", "error": null}), "{replies}");
    let large = &replies["too-large"];
    assert_eq!(large["error"]["exc_type"], "MessageTooLarge", "{replies}");
    assert_eq!(
        (&large["raised"]["module"], &large["raised"]["class"]),
        (&json!("nameko.exceptions"), &json!("RemoteError")),
        "{replies}"
    );
    assert_eq!(replies["after"], json!({"result": "ok", "error": null}), "{replies}");
    let counts = t.rabbit.queue_counts("rpc-interop_hostile").await.unwrap().unwrap();
    assert_eq!(counts.ready, 0);
    t.finish(vec![], None).await;
}
