//! Conversations end to end through the gateways, on both topologies:
//! replies, edits, deletions and reactions as timeline events, their
//! errors and retries, replays and history, read markers and the room
//! list.

use std::collections::{BTreeMap, VecDeque};

use parley_tests::{
    chat::room_id,
    gateway::{Account, Deployment, Settings, Topology, Ws, http_json},
    on_both_topologies,
};
use serde_json::{Value, json};

on_both_topologies!(
    timeline_events_reach_both_gateways_in_one_order,
    each_change_has_its_error,
    a_replay_sends_every_event_and_history_the_current_state,
    retries_of_each_kind_make_one_event,
    concurrent_reactions_end_in_exact_counts,
    read_markers_and_the_room_list,
);

/// The timeline frames of a room a connection receives, by seq: their kind
/// and body.
const TIMELINE: [&str; 4] = ["message", "message_edited", "message_deleted", "reaction"];

/// A connection that keeps the timeline frames it meets while waiting for
/// an answer, so none is lost to a test that reads them later.
struct Conn {
    ws: Ws,
    stash: VecDeque<(String, Value)>,
}

impl Conn {
    async fn open(deployment: &Deployment, gateway: usize, account: &Account) -> Self {
        Self {
            ws: deployment.ws(gateway, account).await,
            stash: VecDeque::new(),
        }
    }

    async fn send(&mut self, frame: Value) {
        self.ws.send(frame).await;
    }

    async fn join(&mut self, room: &str, since_seq: i64) -> Value {
        self.ws.join(room, since_seq).await
    }

    /// The body of the next `kind` frame; other frames are skipped.
    async fn next_kind(&mut self, kind: &str) -> Value {
        self.ws.next_kind(kind).await
    }

    async fn close(self) {
        self.ws.close().await;
    }
}

fn timeline_frame(frame: &Value) -> Option<(String, Value)> {
    TIMELINE
        .iter()
        .find_map(|kind| Some(((*kind).to_owned(), frame.get(*kind)?.clone())))
}

/// The next timeline frame, skipping acks, presence, typing and reads; an
/// error fails the test.
async fn next_event(conn: &mut Conn) -> (String, Value) {
    if let Some(event) = conn.stash.pop_front() {
        return event;
    }
    loop {
        let frame = conn.ws.next().await;
        if let Some(error) = frame.get("error") {
            panic!("unexpected error: {error}");
        }
        if let Some(event) = timeline_frame(&frame) {
            return event;
        }
    }
}

/// The next `ack` or `error` frame; the room's timeline frames met on the
/// way are kept for [`next_event`].
async fn next_answer(conn: &mut Conn) -> Value {
    loop {
        let frame = conn.ws.next().await;
        if frame.get("ack").is_some() || frame.get("error").is_some() {
            return frame;
        }
        if let Some(event) = timeline_frame(&frame) {
            conn.stash.push_back(event);
        }
    }
}

/// The code of the next answer, which must be an error.
async fn next_error_code(conn: &mut Conn) -> String {
    let answer = next_answer(conn).await;
    answer["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("expected an error, got {answer}"))
        .to_owned()
}

/// The seq acknowledged by the next answer, which must be an ack.
async fn next_ack_seq(conn: &mut Conn) -> i64 {
    let answer = next_answer(conn).await;
    answer["ack"]["seq"]
        .as_i64()
        .unwrap_or_else(|| panic!("expected an ack, got {answer}"))
}

async fn send(ws: &mut Conn, room: &str, content: &str, client_id: &str, reply_to: i64) -> i64 {
    ws.send(json!({"send": {"room_id": room, "content": content, "client_id": client_id, "reply_to": reply_to}}))
        .await;
    next_ack_seq(ws).await
}

async fn edit(ws: &mut Conn, room: &str, seq: i64, content: &str, client_id: &str) {
    ws.send(
        json!({"edit": {"room_id": room, "seq": seq, "content": content, "client_id": client_id}}),
    )
    .await;
}

async fn delete(ws: &mut Conn, room: &str, seq: i64, client_id: &str) {
    ws.send(json!({"delete": {"room_id": room, "seq": seq, "client_id": client_id}}))
        .await;
}

async fn react(ws: &mut Conn, room: &str, seq: i64, emoji: &str, remove: bool, client_id: &str) {
    ws.send(json!({"react": {"room_id": room, "seq": seq, "emoji": emoji, "remove": remove, "client_id": client_id}}))
        .await;
}

/// A room's history through the REST API, oldest first.
async fn history(deployment: &Deployment, account: &Account, room: &str) -> Vec<Value> {
    let response = http_json(
        deployment.gateway(0),
        "GET",
        &format!("/api/v1/rooms/{room}/messages"),
        Some(&account.access_token),
        &Value::Null,
    )
    .await;
    assert_eq!(response.status, 200, "{}", response.body);
    response.json()["messages"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The caller's room list through the REST API.
async fn my_rooms(deployment: &Deployment, account: &Account) -> Vec<Value> {
    let response = http_json(
        deployment.gateway(1),
        "GET",
        "/api/v1/rooms",
        Some(&account.access_token),
        &Value::Null,
    )
    .await;
    assert_eq!(response.status, 200, "{}", response.body);
    response.json()["rooms"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

async fn timeline_events_reach_both_gateways_in_one_order(topology: Topology) {
    let (deployment, alice, bob) =
        Deployment::start_with_pair(topology, &Settings::default()).await;
    let room = room_id("timeline");
    let mut on_a = Conn::open(&deployment, 0, &alice).await;
    let mut on_b = Conn::open(&deployment, 1, &bob).await;
    on_a.join(&room, 0).await;
    on_b.join(&room, 0).await;

    let first = send(&mut on_a, &room, "hello", "s1", 0).await;
    let reply = send(&mut on_b, &room, "hi alice", "s2", first).await;
    edit(&mut on_a, &room, first, "hello, bob", "e1").await;
    assert!(next_ack_seq(&mut on_a).await > reply);
    react(&mut on_b, &room, first, "👍", false, "r1").await;
    next_ack_seq(&mut on_b).await;
    react(&mut on_a, &room, reply, "🎉", false, "r2").await;
    next_ack_seq(&mut on_a).await;
    delete(&mut on_b, &room, reply, "d1").await;
    next_ack_seq(&mut on_b).await;

    let mut seen: BTreeMap<&str, Vec<(i64, String)>> = BTreeMap::new();
    for (name, ws) in [("a", &mut on_a), ("b", &mut on_b)] {
        let mut events = Vec::new();
        while events.len() < 6 {
            let (kind, body) = next_event(ws).await;
            events.push((body["seq"].as_i64().unwrap(), kind));
            if body["seq"] == reply && body.get("content").is_some() {
                assert_eq!(body["reply_to"], first, "a reply names its message");
            }
        }
        seen.insert(name, events);
    }
    let seqs: Vec<i64> = seen["a"].iter().map(|(seq, _)| *seq).collect();
    assert_eq!(seqs, (1..=6).collect::<Vec<_>>(), "gap-free, in order");
    assert_eq!(seen["a"], seen["b"], "both gateways deliver one order");
    let kinds: Vec<&str> = seen["a"].iter().map(|(_, kind)| kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "message",
            "message",
            "message_edited",
            "reaction",
            "reaction",
            "message_deleted"
        ]
    );
    on_a.close().await;
    on_b.close().await;
    deployment.stop().await;
}

async fn each_change_has_its_error(topology: Topology) {
    let (deployment, alice, bob) =
        Deployment::start_with_pair(topology, &Settings::default()).await;
    let room = room_id("errors");
    let mut ann = Conn::open(&deployment, 0, &alice).await;
    let mut ben = Conn::open(&deployment, 1, &bob).await;
    ann.join(&room, 0).await;
    ben.join(&room, 0).await;
    let mine = send(&mut ann, &room, "mine", "", 0).await;

    edit(&mut ben, &room, mine, "theirs", "c1").await;
    assert_eq!(next_error_code(&mut ben).await, "PERMISSION_DENIED");
    delete(&mut ben, &room, mine, "c2").await;
    assert_eq!(next_error_code(&mut ben).await, "PERMISSION_DENIED");
    edit(&mut ann, &room, 99, "nothing there", "c3").await;
    assert_eq!(next_error_code(&mut ann).await, "NOT_FOUND");
    react(&mut ann, &room, mine, &"x".repeat(65), false, "c4").await;
    assert_eq!(next_error_code(&mut ann).await, "INVALID_ARGUMENT");
    ann.send(json!({"send": {"room_id": room, "content": "to nothing", "client_id": "c5", "reply_to": 42}}))
        .await;
    assert_eq!(next_error_code(&mut ann).await, "INVALID_ARGUMENT");
    edit(&mut ann, &room, mine, " ", "c6").await;
    assert_eq!(next_error_code(&mut ann).await, "INVALID_ARGUMENT");
    edit(&mut ann, &room_id("elsewhere"), mine, "x", "c7").await;
    assert_eq!(next_error_code(&mut ann).await, "FAILED_PRECONDITION");

    delete(&mut ann, &room, mine, "c8").await;
    let deleted_at = next_ack_seq(&mut ann).await;
    edit(&mut ann, &room, mine, "back again", "c9").await;
    assert_eq!(next_error_code(&mut ann).await, "FAILED_PRECONDITION");
    delete(&mut ann, &room, mine, "c10").await;
    assert_eq!(next_error_code(&mut ann).await, "FAILED_PRECONDITION");
    react(&mut ben, &room, mine, "👍", false, "c11").await;
    assert_eq!(next_error_code(&mut ben).await, "FAILED_PRECONDITION");

    // A reaction that changes nothing answers the message's seq and makes
    // no event: the next event anyone sees is the next real one.
    let other = send(&mut ben, &room, "another", "", 0).await;
    react(&mut ben, &room, other, "👍", true, "c12").await;
    assert_eq!(next_ack_seq(&mut ben).await, other, "nothing to remove");
    react(&mut ben, &room, other, "👍", false, "c13").await;
    assert_eq!(next_ack_seq(&mut ben).await, other + 1);
    react(&mut ben, &room, other, "👍", false, "c14").await;
    assert_eq!(next_ack_seq(&mut ben).await, other, "already there");
    let mut events = Vec::new();
    while events.len() < 4 {
        let (kind, body) = next_event(&mut ann).await;
        events.push((kind, body["seq"].as_i64().unwrap()));
    }
    assert_eq!(
        events.iter().map(|(_, seq)| *seq).collect::<Vec<_>>(),
        [mine, deleted_at, other, other + 1],
        "refused changes made no event"
    );
    ann.send(json!({"read": {"room_id": room_id("not-joined"), "seq": 1}}))
        .await;
    assert_eq!(next_error_code(&mut ann).await, "FAILED_PRECONDITION");
    ann.close().await;
    ben.close().await;
    deployment.stop().await;
}

async fn a_replay_sends_every_event_and_history_the_current_state(topology: Topology) {
    let (deployment, alice, bob) =
        Deployment::start_with_pair(topology, &Settings::default()).await;
    let room = room_id("replay");
    let mut ann = Conn::open(&deployment, 0, &alice).await;
    ann.join(&room, 0).await;
    let first = send(&mut ann, &room, "first", "", 0).await;
    let second = send(&mut ann, &room, "second", "", first).await;
    let third = send(&mut ann, &room, "third", "", 0).await;
    edit(&mut ann, &room, second, "second, edited", "e").await;
    next_ack_seq(&mut ann).await;
    react(&mut ann, &room, first, "👍", false, "r").await;
    next_ack_seq(&mut ann).await;
    delete(&mut ann, &room, third, "d").await;
    let last = next_ack_seq(&mut ann).await;

    // A client that saw the first message replays the rest: each message
    // as it was sent (a deleted one without its text), then every change.
    let mut ben = Conn::open(&deployment, 1, &bob).await;
    ben.join(&room, first).await;
    let mut replayed = Vec::new();
    while replayed.len() < 5 {
        replayed.push(next_event(&mut ben).await);
    }
    let kinds: Vec<&str> = replayed.iter().map(|(kind, _)| kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "message",
            "message",
            "message_edited",
            "reaction",
            "message_deleted"
        ]
    );
    assert_eq!(replayed[0].1["content"], "second", "as it was sent");
    assert_eq!(replayed[0].1["reply_to"], first);
    assert_eq!(replayed[1].1["content"], "", "a deleted text stays gone");
    assert_eq!(replayed[2].1["content"], "second, edited");
    assert_eq!(replayed[4].1["seq"], last);

    let messages = history(&deployment, &bob, &room).await;
    assert_eq!(messages.len(), 3, "history holds messages only");
    assert_eq!(messages[0]["reactions"][0]["emoji"], "👍");
    assert_eq!(messages[0]["reactions"][0]["count"], 1);
    assert_eq!(
        messages[0]["reactions"][0]["user_ids"],
        json!([alice.user_id])
    );
    assert_eq!(messages[1]["content"], "second, edited");
    assert_ne!(messages[1]["edited_at"], "");
    assert_eq!(messages[1]["reply_to"], first);
    assert_eq!(messages[2]["deleted"], true);
    assert_eq!(messages[2]["content"], "");
    assert_eq!(messages[2]["edited_at"], "");
    ann.close().await;
    ben.close().await;
    deployment.stop().await;
}

async fn retries_of_each_kind_make_one_event(topology: Topology) {
    let (deployment, alice, _bob) =
        Deployment::start_with_pair(topology, &Settings::default()).await;
    let room = room_id("retries");
    let mut ann = Conn::open(&deployment, 0, &alice).await;
    ann.join(&room, 0).await;
    let target = send(&mut ann, &room, "target", "m1", 0).await;
    assert_eq!(send(&mut ann, &room, "target", "m1", 0).await, target);
    edit(&mut ann, &room, target, "edited", "e1").await;
    let edited = next_ack_seq(&mut ann).await;
    edit(&mut ann, &room, target, "edited again?", "e1").await;
    assert_eq!(next_ack_seq(&mut ann).await, edited);
    react(&mut ann, &room, target, "👍", false, "r1").await;
    let reacted = next_ack_seq(&mut ann).await;
    react(&mut ann, &room, target, "👍", false, "r1").await;
    assert_eq!(next_ack_seq(&mut ann).await, reacted);
    react(&mut ann, &room, target, "👍", true, "r2").await;
    let removed = next_ack_seq(&mut ann).await;
    react(&mut ann, &room, target, "👍", false, "r1").await;
    assert_eq!(
        next_ack_seq(&mut ann).await,
        reacted,
        "a retry answers the first event, not the state now"
    );
    delete(&mut ann, &room, target, "d1").await;
    let deleted = next_ack_seq(&mut ann).await;
    delete(&mut ann, &room, target, "d1").await;
    assert_eq!(next_ack_seq(&mut ann).await, deleted);
    assert_eq!(
        [target, edited, reacted, removed, deleted],
        [1, 2, 3, 4, 5],
        "one event each"
    );
    // The stream carried each event once.
    let mut seqs = Vec::new();
    while seqs.len() < 5 {
        seqs.push(next_event(&mut ann).await.1["seq"].as_i64().unwrap());
    }
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    assert!(ann.stash.is_empty(), "no second event: {:?}", ann.stash);
    ann.send(json!({"ping": {"nonce": "end"}})).await;
    loop {
        let frame = ann.ws.next().await;
        if frame.get("pong").is_some() {
            break;
        }
        assert!(
            TIMELINE.iter().all(|kind| frame.get(*kind).is_none()),
            "no second event: {frame}"
        );
    }
    ann.close().await;
    deployment.stop().await;
}

async fn concurrent_reactions_end_in_exact_counts(topology: Topology) {
    let deployment = Deployment::start(topology, &Settings::default()).await;
    let room = room_id("reactions");
    const USERS: usize = 6;
    let mut accounts = Vec::new();
    for i in 0..USERS {
        accounts.push(
            deployment
                .sign_up(&parley_tests::gateway::username(&format!("r{i}")))
                .await,
        );
    }
    let mut sockets = Vec::new();
    for (i, account) in accounts.iter().enumerate() {
        let mut ws = Conn::open(&deployment, i % 2, account).await;
        ws.join(&room, 0).await;
        sockets.push(ws);
    }
    let target = send(&mut sockets[0], &room, "react to me", "", 0).await;

    // Every user adds two emoji at once on both gateways; then the odd
    // users take one back.
    for (i, ws) in sockets.iter_mut().enumerate() {
        react(ws, &room, target, "👍", false, &format!("up-{i}")).await;
        react(ws, &room, target, "🎉", false, &format!("party-{i}")).await;
    }
    for ws in &mut sockets {
        next_ack_seq(ws).await;
        next_ack_seq(ws).await;
    }
    for (i, ws) in sockets.iter_mut().enumerate().filter(|(i, _)| i % 2 == 1) {
        react(ws, &room, target, "🎉", true, &format!("unparty-{i}")).await;
    }
    for ws in sockets.iter_mut().skip(1).step_by(2) {
        next_ack_seq(ws).await;
    }
    let messages = history(&deployment, &accounts[0], &room).await;
    let counts: BTreeMap<String, i64> = messages[0]["reactions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["emoji"].as_str().unwrap().to_owned(),
                r["count"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(counts["👍"], USERS as i64);
    assert_eq!(counts["🎉"], (USERS / 2) as i64);
    // Every member saw every change, once and in one order.
    let changes = 2 * USERS + USERS / 2;
    let mut orders = Vec::new();
    for ws in &mut sockets {
        let mut seqs = Vec::new();
        while seqs.len() < changes {
            let (kind, body) = next_event(ws).await;
            if kind == "reaction" {
                seqs.push(body["seq"].as_i64().unwrap());
            }
        }
        orders.push(seqs);
    }
    let expected: Vec<i64> = (target + 1..=target + changes as i64).collect();
    for order in &orders {
        assert_eq!(order, &expected);
    }
    for ws in sockets {
        ws.close().await;
    }
    deployment.stop().await;
}

async fn read_markers_and_the_room_list(topology: Topology) {
    let (deployment, alice, bob) =
        Deployment::start_with_pair(topology, &Settings::default()).await;
    let quiet = room_id("quiet");
    let busy = room_id("busy");
    let mut ann = Conn::open(&deployment, 0, &alice).await;
    let mut ben = Conn::open(&deployment, 1, &bob).await;
    for room in [&quiet, &busy] {
        ann.join(room, 0).await;
        ben.join(room, 0).await;
    }
    send(&mut ann, &quiet, "anyone?", "", 0).await;
    let mine = send(&mut ann, &busy, "mine", "", 0).await;
    let mut ben_says = Vec::new();
    for i in 0..3 {
        ben_says.push(send(&mut ben, &busy, &format!("b{i}"), "", 0).await);
    }

    let rooms = my_rooms(&deployment, &alice).await;
    let names: Vec<&str> = rooms.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [busy.as_str(), quiet.as_str()],
        "latest activity first"
    );
    assert_eq!(rooms[0]["unread"], 3, "bob's three after hers");
    assert_eq!(rooms[0]["last_message"]["content"], "b2");
    assert_eq!(rooms[0]["last_seq"], 4);
    assert_eq!(
        rooms[0]["read_seq"], mine,
        "sending marks the room read up to it"
    );
    assert_eq!(rooms[1]["unread"], 0);
    for field in ["name", "private", "direct", "role"] {
        assert!(rooms[0].get(field).is_some(), "{field} in {}", rooms[0]);
    }

    // Reading moves the marker forward only, and bob hears of it.
    ann.send(json!({"read": {"room_id": busy, "seq": ben_says[1]}}))
        .await;
    let notice = ben.next_kind("read").await;
    assert_eq!(notice["user_id"], alice.user_id.as_str());
    assert_eq!(notice["seq"], ben_says[1]);
    ann.send(json!({"read": {"room_id": busy, "seq": 1}})).await;
    let rooms = my_rooms(&deployment, &alice).await;
    assert_eq!(
        (rooms[0]["read_seq"].as_i64(), rooms[0]["unread"].as_i64()),
        (Some(ben_says[1]), Some(1))
    );

    // A deleted message no longer counts.
    delete(&mut ben, &busy, ben_says[2], "d").await;
    next_ack_seq(&mut ben).await;
    let rooms = my_rooms(&deployment, &alice).await;
    assert_eq!(rooms[0]["unread"], 0);

    // Reading past the end stops at the end; a rejoin tells the marker.
    // Nothing answers a read, and a ping is not ordered after it (reads run
    // beside the session's other frames), so bob's notice is the event that
    // says the marker is stored.
    ann.send(json!({"read": {"room_id": busy, "seq": 1000}}))
        .await;
    let notice = ben.next_kind("read").await;
    assert_eq!(notice["user_id"], alice.user_id.as_str());
    let rooms = my_rooms(&deployment, &alice).await;
    assert_eq!(notice["seq"], rooms[0]["last_seq"]);
    assert_eq!(rooms[0]["read_seq"], rooms[0]["last_seq"]);
    let mut again = Conn::open(&deployment, 1, &alice).await;
    let joined = again.join(&busy, 0).await;
    assert_eq!(joined["read_seq"], rooms[0]["last_seq"]);

    let nobody = deployment
        .sign_up(&parley_tests::gateway::username("lonely"))
        .await;
    assert!(my_rooms(&deployment, &nobody).await.is_empty());
    let unauthenticated = http_json(
        deployment.gateway(0),
        "GET",
        "/api/v1/rooms",
        None,
        &Value::Null,
    )
    .await;
    assert_eq!(unauthenticated.status, 401);
    ann.close().await;
    ben.close().await;
    again.close().await;
    deployment.stop().await;
}
