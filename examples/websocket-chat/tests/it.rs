//! The chat over real sockets, and its methods with a recording hub.

use std::{sync::Arc, time::Duration};

use example_websocket_chat::{Chat, ChatError};
use futures_util::{SinkExt, StreamExt};
use nameko::{
    core::{Config, ServiceRunner},
    http::WebServer,
    prelude::WebSocketHub,
};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, tungstenite::Message};

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn connect(addr: std::net::SocketAddr) -> (Client, String) {
    let (mut client, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .unwrap();
    let connected = next(&mut client).await;
    assert_eq!(connected["event"], "connected");
    (client, connected["data"]["socket_id"].as_str().unwrap().to_owned())
}

async fn next(client: &mut Client) -> Value {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), client.next())
            .await
            .expect("no frame within 10 s")
            .expect("the socket closed")
            .expect("the socket failed");
        if let Message::Text(text) = message {
            return serde_json::from_str(text.as_str()).unwrap();
        }
    }
}

async fn send(client: &mut Client, method: &str, data: Value) {
    let frame = json!({ "method": method, "data": data, "correlation_id": method });
    client.send(Message::Text(frame.to_string().into())).await.unwrap();
}

#[tokio::test]
async fn two_people_chat_in_a_room() {
    // `/ws` on the runner's own web server, on a free port.
    let web = WebServer::new();
    let running = ServiceRunner::new(Config::from_yaml_str("WEB_SERVER_ADDRESS: 127.0.0.1:0").unwrap())
        .resource(Arc::new(web.clone()))
        .with_service::<Chat>()
        .start()
        .await
        .unwrap();
    let addr = web.local_addr().expect("bound once started");

    let (mut ada, ada_id) = connect(addr).await;
    let (mut bob, bob_id) = connect(addr).await;

    send(&mut ada, "join", json!({"room": "lobby"})).await;
    assert_eq!(next(&mut ada).await["event"], "joined");
    assert_eq!(next(&mut ada).await["data"], json!(["lobby"]));
    send(&mut bob, "join", json!({"room": "lobby"})).await;
    let joined = json!({"type": "event", "event": "joined", "data": {"room": "lobby", "socket_id": bob_id}});
    assert_eq!(next(&mut bob).await, joined);
    assert_eq!(next(&mut bob).await["data"], json!(["lobby"]));
    assert_eq!(next(&mut ada).await, joined);

    send(&mut ada, "say", json!({"room": "lobby", "text": "hi Bob"})).await;
    let said = json!({"type": "event", "event": "said", "data": {"room": "lobby", "from": ada_id, "text": "hi Bob"}});
    assert_eq!(next(&mut ada).await, said);
    assert_eq!(
        next(&mut ada).await,
        json!({"type": "result", "success": true, "data": 2, "correlation_id": "say"})
    );
    assert_eq!(next(&mut bob).await, said);

    send(&mut ada, "leave", json!({"room": "lobby"})).await;
    assert_eq!(next(&mut ada).await["data"], true);
    assert_eq!(next(&mut bob).await["event"], "left");
    send(&mut bob, "say", json!({"room": "lobby", "text": "bye"})).await;
    assert_eq!(next(&mut bob).await["event"], "said");
    assert_eq!(next(&mut bob).await["data"], 1);
    // Ada left: the next frame she sees is her own call's.
    send(&mut ada, "say", json!({"room": "lobby", "text": "wait"})).await;
    let reply = next(&mut ada).await;
    assert_eq!(reply["success"], false);
    assert_eq!(reply["error"]["exc_type"], "NotInRoom");
    assert_eq!(reply["error"]["value"], "join `lobby` before saying something there");

    running.stop().await;
}

#[tokio::test]
async fn the_methods_with_a_recording_hub() {
    let (hub, log) = WebSocketHub::recording();
    let chat = Chat::worker_factory().hub(hub).build();
    let me = log.connect();
    assert_eq!(chat.join(me.clone(), "a".into()).await.unwrap(), ["a"]);
    assert!(matches!(
        chat.join(me.clone(), String::new()).await,
        Err(ChatError::NoRoom)
    ));
    assert_eq!(chat.say(me.clone(), "a".into(), "hello".into()).await.unwrap(), 1);
    assert!(matches!(
        chat.say(me.clone(), "b".into(), "hello".into()).await,
        Err(ChatError::NotInRoom(room)) if room == "b"
    ));
    assert!(chat.leave(me.clone(), "a".into()).await.unwrap());
    assert!(!chat.leave(me.clone(), "a".into()).await.unwrap());
    let events: Vec<Value> = log
        .frames(&me)
        .into_iter()
        .map(|frame| frame["event"].clone())
        .collect();
    assert_eq!(events, ["joined", "said"]);
}
