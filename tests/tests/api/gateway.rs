//! The WebSocket protocol of DESIGN §4, end to end through the gateways:
//! every frame, its errors and limits, against the distributed topology
//! (clients on gateway A and gateway B meet through Redis) and against the
//! all-in-one binary.

use std::collections::HashMap;

use parley_tests::{
    chat::room_id,
    gateway::{Deployment, Settings, Topology, username},
    on_both_topologies,
};
use serde_json::{Value, json};

on_both_topologies!(
    clients_on_both_gateways_see_one_order,
    a_join_with_since_seq_replays_and_lists_members,
);

async fn clients_on_both_gateways_see_one_order(topology: Topology) {
    let deployment = Deployment::start(topology, &Settings::default()).await;
    let alice = deployment.sign_up(&username("alice")).await;
    let bob = deployment.sign_up(&username("bob")).await;
    let room = room_id("order");
    let mut on_a = deployment.ws(0, &alice).await;
    let mut on_b = deployment.ws(1, &bob).await;
    on_a.join(&room, 0).await;
    on_b.join(&room, 0).await;

    const EACH: usize = 25;
    for i in 0..EACH {
        on_a.say(&room, &format!("a{i}"), &format!("a-{i}")).await;
        on_b.say(&room, &format!("b{i}"), &format!("b-{i}")).await;
    }
    let mut seen: HashMap<&str, Vec<(i64, String)>> = HashMap::new();
    for (name, ws) in [("a", &mut on_a), ("b", &mut on_b)] {
        let mut acks = 0;
        let mut messages = Vec::new();
        while messages.len() < 2 * EACH || acks < EACH {
            let frame = ws.next().await;
            if let Some(message) = frame.get("message") {
                messages.push((
                    message["seq"].as_i64().unwrap(),
                    message["content"].as_str().unwrap().to_owned(),
                ));
                for field in [
                    "id",
                    "room_id",
                    "sender_id",
                    "sender_name",
                    "client_id",
                    "sent_at",
                ] {
                    assert!(message[field].is_string(), "message.{field} in {message}");
                }
            } else if frame.get("ack").is_some() {
                acks += 1;
            } else if let Some(error) = frame.get("error") {
                panic!("unexpected error: {error}");
            }
        }
        seen.insert(name, messages);
    }
    let seqs: Vec<i64> = seen["a"].iter().map(|(seq, _)| *seq).collect();
    assert_eq!(
        seqs,
        (1..=(2 * EACH) as i64).collect::<Vec<_>>(),
        "gap-free, in order"
    );
    assert_eq!(seen["a"], seen["b"], "both gateways deliver the same order");
    // One connection's sends are stored in the order it sent them.
    let a_order: Vec<&str> = seen["a"]
        .iter()
        .map(|(_, c)| c.as_str())
        .filter(|c| c.starts_with('a'))
        .collect();
    assert_eq!(
        a_order,
        (0..EACH).map(|i| format!("a{i}")).collect::<Vec<_>>()
    );
    on_a.close().await;
    on_b.close().await;
    deployment.stop().await;
}

async fn a_join_with_since_seq_replays_and_lists_members(topology: Topology) {
    let deployment = Deployment::start(topology, &Settings::default()).await;
    let alice = deployment.sign_up(&username("alice")).await;
    let bob = deployment.sign_up(&username("bob")).await;
    let room = room_id("replay");
    let mut on_a = deployment.ws(0, &alice).await;
    let joined = on_a.join(&room, 0).await;
    assert_eq!(joined["last_seq"], 0);
    assert_eq!(joined["replay_truncated"], false);
    for i in 1..=5 {
        on_a.say(&room, &format!("m{i}"), "").await;
        assert_eq!(on_a.next_kind("ack").await["seq"], i);
    }

    let mut on_b = deployment.ws(1, &bob).await;
    let joined = on_b.join(&room, 2).await;
    assert_eq!(joined["last_seq"], 5);
    let mut members: Vec<&str> = joined["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    members.sort_unstable();
    let mut expected = vec![alice.username.as_str(), bob.username.as_str()];
    expected.sort_unstable();
    assert_eq!(
        members, expected,
        "members are the users online, joiner included"
    );
    for seq in 3..=5 {
        let message = on_b.next_message().await;
        assert_eq!(message["seq"], seq);
        assert_eq!(message["content"], format!("m{seq}"));
        assert_eq!(message["sender_name"], Value::from(alice.username.clone()));
    }
    // Alice hears that bob arrived.
    let presence = on_a.next_kind("presence").await;
    assert_eq!(
        presence,
        json!({"room_id": room, "user_id": bob.user_id, "name": bob.username, "state": "joined"})
    );
    on_a.close().await;
    on_b.close().await;
    deployment.stop().await;
}
