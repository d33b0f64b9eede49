//! Faults under load: traffic flows while a dependency fails, and at the
//! end every acknowledged message has reached every member exactly once,
//! in order (README: "Behaviour").

use std::time::Duration;

use parley_tests::{
    chat::room_id,
    gateway::{Deployment, Settings, Topology, Ws, username},
};
use serde_json::json;

/// Messages sent in all.
const COUNT: usize = 150;
/// Messages in flight at once: a cut lands among writes under way.
const WINDOW: usize = 10;

/// Sends `client_ids` at once, then collects an answer for each: an ack,
/// or UNAVAILABLE (storage failed under the write; retryable), after which
/// the same `client_id` goes again. Answers the acked seqs.
async fn send_window(ws: &mut Ws, room: &str, client_ids: &[String]) -> Vec<i64> {
    let mut acked = Vec::new();
    let mut waiting: Vec<String> = client_ids.to_vec();
    for attempt in 0..50 {
        for client_id in &waiting {
            ws.say(room, &format!("text of {client_id}"), client_id)
                .await;
        }
        let mut retry = Vec::new();
        for _ in 0..waiting.len() {
            let frame = loop {
                let frame = ws.next().await;
                if frame.get("ack").is_some() || frame.get("error").is_some() {
                    break frame;
                }
            };
            if let Some(ack) = frame.get("ack") {
                acked.push(ack["seq"].as_i64().unwrap());
            } else {
                let error = &frame["error"];
                assert_eq!(
                    error["code"], "UNAVAILABLE",
                    "only retryable failures: {error}"
                );
                retry.push(error["client_id"].as_str().unwrap().to_owned());
            }
        }
        if retry.is_empty() {
            return acked;
        }
        waiting = retry;
        // The retry waits as a client library's would.
        tokio::time::sleep(Duration::from_millis(20 * (attempt + 1))).await;
    }
    panic!("sends still failing after 50 attempts: {waiting:?}");
}

/// Every database connection of chat (and of auth and user, which share
/// the database) is cut several times while messages are written: the
/// writes caught by a cut fail UNAVAILABLE and succeed when retried with
/// their `client_id`, storage recovers by itself, and the member on the
/// other gateway and replica receives every message once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_connections_cut_under_load_lose_nothing() {
    let deployment = Deployment::start(Topology::Distributed, &Settings::default()).await;
    let alice = deployment.sign_up(&username("alice")).await;
    let bob = deployment.sign_up(&username("bob")).await;
    let room = room_id("pg-cut");
    let mut sender = deployment.ws(0, &alice).await;
    sender.join(&room, 0).await;
    let mut watcher = deployment.ws(1, &bob).await;
    watcher.join(&room, 0).await;

    let mut acked = Vec::new();
    let mut cut = 0;
    for window in 0..COUNT / WINDOW {
        let ids: Vec<String> = (0..WINDOW)
            .map(|i| format!("c-{}", window * WINDOW + i))
            .collect();
        let sending = send_window(&mut sender, &room, &ids);
        // Every other window, the connections are cut while it is written.
        if window % 2 == 1 {
            let (seqs, ended) = tokio::join!(sending, deployment.terminate_database_connections());
            cut += ended;
            acked.extend(seqs);
        } else {
            acked.extend(sending.await);
        }
    }
    assert!(cut > 0, "the connections were cut");
    acked.sort_unstable();
    assert_eq!(
        acked,
        (1..=COUNT as i64).collect::<Vec<_>>(),
        "one seq per message"
    );

    let mut seen: Vec<(i64, String)> = Vec::new();
    while seen.len() < COUNT {
        let message = watcher.next_message().await;
        seen.push((
            message["seq"].as_i64().unwrap(),
            message["client_id"].as_str().unwrap().to_owned(),
        ));
    }
    let seqs: Vec<i64> = seen.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(
        seqs,
        (1..=COUNT as i64).collect::<Vec<_>>(),
        "in order, once each"
    );
    let mut ids: Vec<&str> = seen.iter().map(|(_, id)| id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), COUNT, "every message, none twice");
    // Nothing more arrives: a ping is answered before any late duplicate.
    watcher.send(json!({"ping": {"nonce": "end"}})).await;
    let pong = watcher.next().await;
    assert_eq!(pong["pong"]["nonce"], "end", "{pong}");
    sender.close().await;
    watcher.close().await;
    deployment.stop().await;
}
