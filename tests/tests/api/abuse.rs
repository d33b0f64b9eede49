//! Misbehaving clients in the middle of real traffic: a member that stops
//! reading, one that sends garbage and oversized frames over and over.
//! The well-behaved members must not notice (RELIABILITY.md).

use std::net::SocketAddr;

use parley_tests::{
    chat::room_id,
    gateway::{Deployment, Event, Settings, Topology, Ws, metric, username},
    on_both_topologies,
};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

on_both_topologies!(misbehaving_clients_change_nothing_for_the_others);

/// Garbage a broken client sends: each gets an `error` frame.
const BAD_FRAMES: &[&str] = &[
    "not json",
    "{}",
    r#"{"send": {"room_id": 7}}"#,
    r#"{"shout": {"room_id": "x"}}"#,
    r#"{"ping":{},"typing":{}}"#,
    r#"{"send": {"room_id": "nobody-joined-this", "content": "x"}}"#,
    r#"{"edit": {"room_id": "nobody-joined-this", "seq": -1}}"#,
];

/// Reads `frames` until `count` messages have arrived in all, failing on
/// an error frame or a close; returns their seqs.
async fn messages(ws: &mut Ws, seqs: &mut Vec<i64>, count: usize) {
    while seqs.len() < count {
        let frame: Value = ws.next().await;
        assert!(
            frame.get("error").is_none(),
            "a well-behaved client got {frame}"
        );
        if let Some(message) = frame.get("message") {
            seqs.push(message["seq"].as_i64().unwrap());
        }
    }
}

/// The rogue: joins, sends every bad frame and reads their errors, then
/// sends a frame over the limit, which closes it with 1009.
async fn rogue_round(gateway: SocketAddr, token: &str, room: &str) {
    let mut ws = Ws::connect(gateway, token).await;
    ws.join(room, 0).await;
    for bad in BAD_FRAMES {
        ws.send_text(bad).await;
    }
    let mut errors = 0;
    while errors < BAD_FRAMES.len() {
        if ws.next().await.get("error").is_some() {
            errors += 1;
        }
    }
    let huge = json!({"send": {"room_id": room, "content": "x".repeat(20_000)}});
    // The gateway may close before the whole frame is written.
    let _ = ws.send_message(Message::text(huge.to_string())).await;
    assert_eq!(ws.closed().await, Some(1009));
}

async fn misbehaving_clients_change_nothing_for_the_others(topology: Topology) {
    let settings = Settings {
        send_queue: 32,
        max_frame_bytes: 8192,
        ..Settings::default()
    };
    let (deployment, alice, bob) = Deployment::start_with_pair(topology, &settings).await;
    let sleepy = deployment.sign_up(&username("sleepy")).await;
    let rogue = deployment.sign_up(&username("rogue")).await;
    let room = room_id("mixed");
    let mut on_a = deployment.ws(0, &alice).await;
    let mut on_b = deployment.ws(1, &bob).await;
    let mut sleeper = deployment.ws(0, &sleepy).await;
    on_a.join(&room, 0).await;
    on_b.join(&room, 0).await;
    sleeper.join(&room, 0).await;

    // Alice and Bob talk in large messages while the sleeper reads
    // nothing, until the gateway has cut the sleeper, and a little more;
    // between their rounds the rogue does its worst on either gateway.
    let admin = deployment.gateway_admins[0];
    let cut = |value: Option<f64>| value.unwrap_or(0.0);
    let before = cut(metric(admin, "parley_ws_slow_consumer_disconnects_total").await);
    let content = "z".repeat(3000);
    let (mut seen_a, mut seen_b) = (Vec::new(), Vec::new());
    let mut sent = 0;
    let mut after_cut = 0;
    while after_cut < 5 {
        for i in 0..4 {
            on_a.say(&room, &content, &format!("a{sent}-{i}")).await;
            on_b.say(&room, &content, &format!("b{sent}-{i}")).await;
        }
        let gateway = deployment.gateway((sent / 8) % deployment.gateways.len());
        rogue_round(gateway, &rogue.access_token, &room).await;
        sent += 8;
        messages(&mut on_a, &mut seen_a, sent).await;
        messages(&mut on_b, &mut seen_b, sent).await;
        if cut(metric(admin, "parley_ws_slow_consumer_disconnects_total").await) > before {
            after_cut += 1;
        }
        assert!(sent < 20_000, "the sleeper was never cut");
    }
    // Every message reached both once, in order, with no error between.
    let expected: Vec<i64> = (1..=sent as i64).collect();
    assert_eq!(seen_a, expected);
    assert_eq!(seen_b, expected);
    let ending = loop {
        if let Event::Closed(code) = sleeper.next_event().await {
            break code;
        }
    };
    assert!(matches!(ending, Some(4008) | None), "{ending:?}");
    on_a.close().await;
    on_b.close().await;
    deployment.stop().await;
}
