//! The hostile-input soak: the example binary on RabbitMQ takes a flood of random and
//! malformed messages on its RPC queue and its event queue — bad JSON, random bytes,
//! invalid UTF-8, 100,000 `[`, bodies at, over and far over `MAX_MESSAGE_SIZE`, wrong
//! and missing content types, context headers of the wrong types — and stays up: every
//! request with a `reply_to` is answered (an error reply of the expected type, or the
//! greeting for the valid ones), nothing stays queued, its RSS after 10,000 messages is
//! within 20 MiB of the RSS after a 500-message warm-up, and a valid call still works.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use nameko::{
    broker::{
        Binding, ConsumeOptions, Exchange, FieldValue, Headers, Properties, Publish, PublishOutcome, Queue,
        SharedBroker, Topology,
    },
    context::edge_context,
    rpc::{RpcArgs, RpcClient},
};
use nameko_testing::RabbitMq;
use serde_json::{Value, json};
use tokio::task::JoinSet;

/// The binary's `MAX_MESSAGE_SIZE` in the soak (smaller than the 8 MiB default, so
/// bodies over it stay cheap to send).
const LIMIT: usize = 64 * 1024;
const WARM_UP: usize = 500;
const FLOOD: usize = 10_000;
/// RSS growth allowed between the warm-up and the end of the flood.
const MAX_GROWTH_KIB: u64 = 20 * 1024;
const EVENT_QUEUE: &str = "evt-greeting-greeted--listen.on_greeted";

/// xorshift64*: the same messages at every run.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        usize::try_from(x % n as u64).expect("below n")
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len)
            .map(|_| u8::try_from(self.below(256)).expect("a byte"))
            .collect()
    }
}

/// One hostile message and what must come of it.
struct Message {
    routing_key: &'static str,
    content_type: Option<&'static str>,
    headers: Headers,
    body: Vec<u8>,
    /// For RPC: the reply's `exc_type`, or `None` for the greeting.
    error: Option<&'static str>,
}

fn json_body(value: &Value) -> Vec<u8> {
    serde_json::to_vec(value).expect("JSON")
}

/// A valid call of `greet("Soak")`, padded with spaces to `size` bytes if shorter.
fn padded(size: usize) -> Vec<u8> {
    let mut body = json_body(&json!({"args": ["Soak"], "kwargs": {}}));
    body.resize(size.max(body.len()), b' ');
    body
}

/// Context headers of the wrong types (the call still runs; the context ignores them).
fn wrong_headers() -> Headers {
    let mut headers = Headers::new();
    headers.insert("nameko.call_id_stack", FieldValue::I32(5));
    headers.insert("nameko.user_id", FieldValue::Table(Headers::new()));
    headers.insert("nameko.trace_id", FieldValue::Bytes(vec![0, 255, 10]));
    headers.insert(
        "nameko.language",
        FieldValue::Array(vec![FieldValue::Void, FieldValue::F64(1.5), FieldValue::Timestamp(7)]),
    );
    headers.insert("traceparent", FieldValue::String("00-not a trace-x-y".into()));
    headers.insert("x-death", FieldValue::Decimal { scale: 3, value: 12 });
    headers
}

fn rpc_message(rng: &mut Rng) -> Message {
    let greet = "greeting.greet";
    let json = Some("application/json");
    let (routing_key, content_type, headers, body, error) = match rng.below(14) {
        0 => (greet, json, Headers::new(), padded(0), None),
        1 => (
            greet,
            json,
            Headers::new(),
            json_body(&json!({"args": [1, 2, 3], "kwargs": {}})),
            Some("IncorrectSignature"),
        ),
        2 => ("greeting.nope", json, Headers::new(), padded(0), Some("MethodNotFound")),
        3 => (
            greet,
            json,
            Headers::new(),
            b"{\"args\": [\"trunc".to_vec(),
            Some("MalformedRequest"),
        ),
        4 => {
            let len = rng.below(512);
            let mut body = rng.bytes(len);
            body.insert(0, b'\x01'); // never valid JSON
            (greet, json, Headers::new(), body, Some("MalformedRequest"))
        }
        5 => {
            let mut body = b"{\"args\": [\"".to_vec();
            body.extend_from_slice(&[0xff, 0xfe, 0xc3, 0x28]);
            body.extend_from_slice(b"\"], \"kwargs\": {}}");
            (greet, json, Headers::new(), body, Some("MalformedRequest"))
        }
        // Deeper than serde_json's limit of 128, under the size limit.
        6 => (
            greet,
            json,
            Headers::new(),
            vec![b'['; LIMIT - 100],
            Some("MalformedRequest"),
        ),
        7 => (
            greet,
            json,
            Headers::new(),
            vec![b'['; 100_000],
            Some("MessageTooLarge"),
        ),
        8 => (
            greet,
            Some("text/plain"),
            Headers::new(),
            padded(0),
            Some("MalformedRequest"),
        ),
        9 => (greet, None, Headers::new(), padded(0), Some("MalformedRequest")),
        10 => (greet, json, wrong_headers(), padded(0), None),
        11 => (
            greet,
            json,
            Headers::new(),
            padded(LIMIT + 1 + rng.below(16)),
            Some("MessageTooLarge"),
        ),
        12 => (greet, json, Headers::new(), padded(LIMIT), None),
        _ => (
            greet,
            json,
            Headers::new(),
            padded(LIMIT * 4 + rng.below(LIMIT)),
            Some("MessageTooLarge"),
        ),
    };
    Message {
        routing_key,
        content_type,
        headers,
        body,
        error,
    }
}

fn event_message(rng: &mut Rng) -> Message {
    let json = Some("application/json");
    let (content_type, headers, body) = match rng.below(9) {
        0 => (json, Headers::new(), json_body(&json!({"name": "Soak"}))),
        1 => (json, Headers::new(), json_body(&json!({"name": 42}))),
        2 => (json, Headers::new(), b"not json".to_vec()),
        3 => {
            let len = rng.below(512);
            (None, Headers::new(), rng.bytes(len))
        }
        4 => (json, Headers::new(), vec![b'['; LIMIT - 100]),
        5 => (json, Headers::new(), vec![b'['; 100_000]),
        6 => (
            Some("application/x-msgpack"),
            Headers::new(),
            json_body(&json!({"name": "Soak"})),
        ),
        7 => (json, wrong_headers(), json_body(&json!({"name": "Soak"}))),
        _ => (json, Headers::new(), vec![b'{'; LIMIT * 2]),
    };
    Message {
        routing_key: "greeted",
        content_type,
        headers,
        body,
        error: None,
    }
}

/// What the flood expects back: correlation id → the reply's `exc_type` (`None` for
/// the greeting).
type Expected = Arc<Mutex<HashMap<String, Option<&'static str>>>>;

struct Flood {
    broker: SharedBroker,
    rpc_exchange: String,
    reply_to: String,
    expected: Expected,
    rng: Rng,
    sent: usize,
}

impl Flood {
    /// Sends `count` messages, four RPC requests to one event, 64 at a time.
    async fn send(&mut self, count: usize) {
        let mut batch = JoinSet::new();
        for i in 0..count {
            let n = self.sent + i;
            let (exchange, message) = if n % 5 == 4 {
                ("greeting.events".to_owned(), event_message(&mut self.rng))
            } else {
                (self.rpc_exchange.clone(), rpc_message(&mut self.rng))
            };
            let mut properties = Properties::default();
            properties.content_type = message.content_type.map(str::to_owned);
            properties.headers = (!message.headers.is_empty()).then_some(message.headers);
            if exchange == self.rpc_exchange {
                let correlation_id = format!("soak-{n}");
                properties.reply_to = Some(self.reply_to.clone());
                properties.correlation_id = Some(correlation_id.clone());
                self.expected.lock().unwrap().insert(correlation_id, message.error);
            }
            let publish = Publish {
                exchange,
                routing_key: message.routing_key.to_owned(),
                mandatory: true,
                properties,
                body: Bytes::from(message.body),
            };
            let broker = Arc::clone(&self.broker);
            batch.spawn(async move { broker.publish(publish).await });
            if batch.len() == 64 || i + 1 == count {
                while let Some(outcome) = batch.join_next().await {
                    assert_eq!(outcome.unwrap().unwrap(), PublishOutcome::Routed);
                }
            }
        }
        self.sent += count;
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the service's /proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|kib| kib.trim().parse().ok())
        .expect("a VmRSS line")
}

/// A child process killed if the test fails before it stops it.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "serial: a subprocess soak with an RSS measurement"]
async fn the_binary_survives_a_flood_of_hostile_messages_within_its_memory() {
    let Some(rabbit) = RabbitMq::from_env().await else {
        return;
    };
    for service in ["greeting", "listen", "web"] {
        rabbit.claim_service(service);
    }
    let started = Instant::now();
    let mut binary = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_example-greeting"))
            .args([
                "run",
                "--broker",
                &rabbit.url(),
                "--define",
                &format!("rpc_exchange={}", rabbit.rpc_exchange()),
                "--define",
                "WEB_SERVER_ADDRESS=127.0.0.1:0",
                "--define",
                &format!("MAX_MESSAGE_SIZE={LIMIT}"),
            ])
            .env("RUST_LOG", "warn")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("the example binary starts"),
    );
    let pid = binary.0.id();
    // The last lines of its log, for failure messages; reading keeps the pipe open.
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    {
        let log = Arc::clone(&log);
        let stderr = binary.0.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut log = log.lock().unwrap();
                if log.len() == 200 {
                    log.remove(0);
                }
                log.push(line);
            }
        });
    }
    let tail = || log.lock().unwrap().join("\n");
    for queue in ["rpc-greeting", EVENT_QUEUE] {
        rabbit
            .wait_for_consumers(queue, 1, Duration::from_secs(60))
            .await
            .unwrap_or_else(|e| panic!("{e}; log:\n{}", tail()));
    }

    // Our reply queue, bound to the test's RPC exchange.
    let broker = rabbit.broker();
    let reply_to = uuid_like(&rabbit);
    let reply_queue = rabbit.unique("soak-replies");
    rabbit.claim_queue(&reply_queue);
    broker
        .declare(
            &Topology::new()
                .exchange(Exchange::topic(rabbit.rpc_exchange()))
                .queue(Queue::durable(&reply_queue).auto_delete(true))
                .binding(Binding::new(rabbit.rpc_exchange(), &reply_queue, &reply_to)),
        )
        .await
        .unwrap();
    let mut replies = broker
        .consume(&reply_queue, ConsumeOptions::prefetch(500))
        .await
        .unwrap();
    let expected: Expected = Arc::default();
    let answered = Arc::new(Mutex::new(0_usize));
    let wrong = Arc::new(Mutex::new(Vec::<String>::new()));
    let reader = {
        let (expected, answered, wrong) = (Arc::clone(&expected), Arc::clone(&answered), Arc::clone(&wrong));
        tokio::spawn(async move {
            while let Ok(reply) = replies.next().await {
                let _ = reply.ack().await;
                let id = reply.properties.correlation_id.clone().unwrap_or_default();
                let want = expected.lock().unwrap().remove(&id);
                let body: Value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
                let got = body["error"]["exc_type"].as_str();
                let right = match want {
                    Some(Some(exc_type)) => got == Some(exc_type),
                    Some(None) => body["result"] == json!("Hi, Soak!"),
                    None => false,
                };
                if !right {
                    wrong.lock().unwrap().push(format!("{id}: wanted {want:?}, got {body}"));
                }
                *answered.lock().unwrap() += 1;
            }
        })
    };
    let mut flood = Flood {
        broker: Arc::clone(&broker),
        rpc_exchange: rabbit.rpc_exchange().to_owned(),
        reply_to,
        expected: Arc::clone(&expected),
        rng: Rng(0x9e37_79b9_7f4a_7c15),
        sent: 0,
    };
    let settle = async |flood: &Flood| {
        let rpc_sent = (0..flood.sent).filter(|n| n % 5 != 4).count();
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let done = *answered.lock().unwrap() == rpc_sent;
            let queued = rabbit
                .queue_counts("rpc-greeting")
                .await
                .unwrap()
                .map_or(0, |c| c.ready)
                + rabbit.queue_counts(EVENT_QUEUE).await.unwrap().map_or(0, |c| c.ready);
            if done && queued == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "after 90 s, {} of {rpc_sent} requests answered, {queued} messages queued; log:\n{}",
                answered.lock().unwrap(),
                tail()
            );
            assert!(binary_alive(pid), "the service died; log:\n{}", tail());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };

    flood.send(WARM_UP).await;
    settle(&flood).await;
    let warm = rss_kib(pid);
    flood.send(FLOOD).await;
    settle(&flood).await;
    let after = rss_kib(pid);
    let wrong = wrong.lock().unwrap().clone();
    assert!(
        wrong.is_empty(),
        "{} wrong replies, e.g. {:#?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
    assert!(expected.lock().unwrap().is_empty(), "requests left unanswered");
    eprintln!(
        "soak: {} messages in {:.1} s; RSS after the warm-up {warm} KiB, after the flood {after} KiB ({:+} KiB)",
        flood.sent,
        started.elapsed().as_secs_f64(),
        i128::from(after) - i128::from(warm),
    );
    assert!(
        after <= warm + MAX_GROWTH_KIB,
        "RSS grew from {warm} KiB to {after} KiB, over {MAX_GROWTH_KIB} KiB"
    );

    // Still alive, still consuming both queues, and a valid call still works.
    assert!(binary_alive(pid), "the service died; log:\n{}", tail());
    for queue in ["rpc-greeting", EVENT_QUEUE] {
        assert_eq!(rabbit.consumers(queue).await.unwrap(), Some(1), "{queue}");
    }
    let client = RpcClient::start(
        Arc::clone(&broker),
        rabbit.rpc_exchange(),
        "standalone_rpc_proxy",
        Some(Duration::from_secs(10)),
    )
    .await
    .unwrap();
    rabbit.claim_queue(client.reply_queue());
    let greeting = client
        .call(
            "greeting",
            "greet",
            RpcArgs::from(json!(["Ada"])),
            &edge_context(),
            None,
        )
        .await
        .unwrap();
    assert_eq!(greeting, json!("Hi, Ada!"));
    client.stop().await;
    reader.abort();

    let status = Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
    assert!(status.success());
    let status = binary.0.wait().unwrap();
    assert!(status.success(), "exit {status:?}; log:\n{}", tail());
    rabbit.cleanup().await.unwrap();
}

/// A routing key for the reply queue, unique to this run.
fn uuid_like(rabbit: &RabbitMq) -> String {
    rabbit.unique("soak-reply-key")
}

fn binary_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .is_ok_and(|status| !status.lines().any(|l| l.starts_with("State:") && l.contains("zombie")))
}
