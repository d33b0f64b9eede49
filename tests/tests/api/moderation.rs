//! Roles, moderation, direct rooms and room management end to end through
//! the gateways, on both topologies: every action and its permission
//! errors, the effects on live connections of the other gateway (and, in
//! the distributed topology, the other chat replica), expiry, the direct
//! room race, deletion with members online, and the replay of
//! `member_update` and `room_updated` events.

use std::time::{Duration, SystemTime};

use futures_util::FutureExt as _;
use parley_tests::{
    chat::room_id,
    gateway::{Account, Deployment, Settings, Topology, Ws, http_json, username},
    on_both_topologies,
};
use serde_json::{Value, json};

on_both_topologies!(
    moderation_takes_hold_on_every_connection,
    who_may_moderate_whom,
    bans_and_mutes_end_by_themselves,
    one_direct_room_per_pair_even_when_both_ask_at_once,
    owners_rename_lock_and_delete_rooms,
);

/// Frames that are timeline events.
const TIMELINE: [&str; 6] = [
    "message",
    "message_edited",
    "message_deleted",
    "reaction",
    "member_update",
    "room_updated",
];

/// The next `ack` or `error` frame, skipping everything else.
async fn answer(ws: &mut Ws) -> Value {
    loop {
        let frame = ws.next().await;
        if frame.get("ack").is_some() || frame.get("error").is_some() {
            return frame;
        }
    }
}

/// The code of the next answer, which must be an error.
async fn error_code(ws: &mut Ws) -> String {
    let frame = answer(ws).await;
    frame["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("expected an error, got {frame}"))
        .to_owned()
}

/// The seq of the next answer, which must be an ack.
async fn ack_seq(ws: &mut Ws) -> i64 {
    let frame = answer(ws).await;
    frame["ack"]["seq"]
        .as_i64()
        .unwrap_or_else(|| panic!("expected an ack, got {frame}"))
}

/// The next `member_update` about `user`, skipping those about others.
async fn update_about(ws: &mut Ws, user: &Account) -> Value {
    loop {
        let update = ws.next_kind("member_update").await;
        if update["user_id"] == user.user_id.as_str() {
            return update;
        }
    }
}

/// Sends a `moderate` frame; `extra` adds `role` or `duration`.
async fn moderate(
    ws: &mut Ws,
    room: &str,
    user: &Account,
    action: &str,
    extra: Value,
    client_id: &str,
) {
    let mut body = json!({
        "room_id": room, "user_id": user.user_id, "action": action, "client_id": client_id,
    });
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    ws.send(json!({ "moderate": body })).await;
}

async fn send(ws: &mut Ws, room: &str, content: &str, client_id: &str) {
    ws.say(room, content, client_id).await;
}

/// A REST call on gateway `index`.
async fn rest(
    deployment: &Deployment,
    index: usize,
    method: &str,
    path: &str,
    account: &Account,
    body: &Value,
) -> (u16, Value) {
    let response = http_json(
        deployment.gateway(index),
        method,
        path,
        Some(&account.access_token),
        body,
    )
    .await;
    let json = if response.body.is_empty() {
        Value::Null
    } else {
        response.json()
    };
    (response.status, json)
}

/// `POST /api/v1/dms` on gateway `index`, from `from` to `to`.
async fn open_dm(
    deployment: &Deployment,
    index: usize,
    from: &Account,
    to: &Account,
) -> (u16, Value) {
    let body = json!({ "user_id": to.user_id });
    rest(deployment, index, "POST", "/api/v1/dms", from, &body).await
}

/// Waits until the wall clock is past an RFC 3339 time a frame gave: the
/// end of a ban or mute is a time, not an event.
async fn wait_past(until: &str) {
    let until = humantime::parse_rfc3339(until).unwrap();
    if let Ok(left) = until.duration_since(SystemTime::now()) {
        tokio::time::sleep(left + Duration::from_millis(20)).await;
    }
}

async fn moderation_takes_hold_on_every_connection(topology: Topology) {
    let (deployment, alice, bob) =
        Deployment::start_with_pair(topology, &Settings::default()).await;
    let carol = deployment.sign_up(&username("carol")).await;
    let room = room_id("moderated");
    // The first joiner of a public room owns it.
    let mut ann = deployment.ws(0, &alice).await;
    assert_eq!(ann.join(&room, 0).await["role"], "owner");
    let mut ben = deployment.ws(1, &bob).await;
    let joined = ben.join(&room, 0).await;
    assert_eq!(
        (joined["role"].as_str(), joined["muted"].as_bool()),
        (Some("member"), Some(false))
    );
    let mut cat = deployment.ws(1, &carol).await;
    cat.join(&room, 0).await;
    send(&mut cat, &room, "hi all", "c1").await;
    let carols = ack_seq(&mut cat).await;

    // A mute reaches bob on the other gateway; sends, edits and
    // reactions are refused until the unmute.
    moderate(&mut ann, &room, &bob, "mute", json!({}), "m1").await;
    ack_seq(&mut ann).await;
    let update = ben.next_kind("member_update").await;
    assert_eq!(
        (
            update["action"].as_str(),
            update["user_id"].as_str(),
            update["by"].as_str()
        ),
        (
            Some("mute"),
            Some(bob.user_id.as_str()),
            Some(alice.user_id.as_str())
        )
    );
    assert_eq!(update["name"], bob.username.as_str());
    assert_eq!(update["until"], "", "a mute without a duration has no end");
    send(&mut ben, &room, "can I talk?", "b1").await;
    assert_eq!(error_code(&mut ben).await, "PERMISSION_DENIED");
    ben.send(json!({"react": {"room_id": room, "seq": carols, "emoji": "👍", "client_id": "b2"}}))
        .await;
    assert_eq!(error_code(&mut ben).await, "PERMISSION_DENIED");
    moderate(&mut ann, &room, &bob, "unmute", json!({}), "m2").await;
    ack_seq(&mut ann).await;
    assert_eq!(ben.next_kind("member_update").await["action"], "unmute");
    send(&mut ben, &room, "thanks", "b3").await;
    ack_seq(&mut ben).await;

    // Bob made a moderator kicks carol: her connection on his gateway
    // hears it and leaves the room; she may join again.
    moderate(
        &mut ann,
        &room,
        &bob,
        "set_role",
        json!({"role": "moderator"}),
        "m3",
    )
    .await;
    ack_seq(&mut ann).await;
    let update = ben.next_kind("member_update").await;
    assert_eq!(
        (update["action"].as_str(), update["role"].as_str()),
        (Some("set_role"), Some("moderator"))
    );
    moderate(&mut ben, &room, &carol, "kick", json!({}), "k1").await;
    ack_seq(&mut ben).await;
    let update = update_about(&mut cat, &carol).await;
    assert_eq!(
        (update["action"].as_str(), update["role"].as_str()),
        (Some("kick"), Some(""))
    );
    assert_eq!(cat.next_kind("left").await["room_id"], room.as_str());
    send(&mut cat, &room, "still here?", "c2").await;
    assert_eq!(error_code(&mut cat).await, "FAILED_PRECONDITION");
    // A connection resuming from before the kick (a reconnect that missed
    // it) stays out; joining again afresh is allowed.
    cat.send(json!({"join": {"room_id": room, "since_seq": carols}}))
        .await;
    assert_eq!(error_code(&mut cat).await, "FAILED_PRECONDITION");
    cat.join(&room, 0).await;

    // A moderator deletes anyone's message.
    ben.send(json!({"delete": {"room_id": room, "seq": carols, "client_id": "b4"}}))
        .await;
    ack_seq(&mut ben).await;

    // A ban (from alice, on gateway A) keeps carol out until the unban.
    moderate(&mut ann, &room, &carol, "ban", json!({}), "m4").await;
    ack_seq(&mut ann).await;
    assert_eq!(update_about(&mut cat, &carol).await["action"], "ban");
    cat.next_kind("left").await;
    cat.send(json!({"join": {"room_id": room}})).await;
    assert_eq!(error_code(&mut cat).await, "PERMISSION_DENIED");
    moderate(&mut ben, &room, &carol, "unban", json!({}), "k2").await;
    let unbanned = ack_seq(&mut ben).await;
    // A retry answers the same event.
    moderate(&mut ben, &room, &carol, "unban", json!({}), "k2").await;
    assert_eq!(ack_seq(&mut ben).await, unbanned);
    cat.join(&room, 0).await;

    // A replay sends every member_update in order, with the rest.
    let mut late = deployment.ws(1, &alice).await;
    late.join(&room, 0).await;
    late.send(json!({"join": {"room_id": room, "since_seq": 1}}))
        .await;
    late.next_kind("joined").await;
    let mut updates = Vec::new();
    let mut seq = 1;
    while seq < unbanned {
        let frame = late.next().await;
        let Some((kind, body)) = frame.as_object().and_then(|o| o.iter().next()) else {
            continue;
        };
        if !TIMELINE.contains(&kind.as_str()) {
            continue;
        }
        if let Some(at) = body["seq"].as_i64() {
            assert_eq!(at, seq + 1, "gap-free replay");
            seq = at;
            if kind == "member_update" {
                updates.push(body["action"].as_str().unwrap().to_owned());
            }
        }
    }
    assert_eq!(
        updates,
        ["mute", "unmute", "set_role", "kick", "ban", "unban"]
    );
    for ws in [ann, ben, cat, late] {
        ws.close().await;
    }
    deployment.stop().await;
}

async fn who_may_moderate_whom(topology: Topology) {
    let (deployment, alice, bob) =
        Deployment::start_with_pair(topology, &Settings::default()).await;
    let (carol, dave) = (
        deployment.sign_up(&username("carol")).await,
        deployment.sign_up(&username("dave")).await,
    );
    let admin = deployment.admin().await;
    let room = room_id("ranks");
    let mut ann = deployment.ws(0, &alice).await;
    ann.join(&room, 0).await;
    let mut ben = deployment.ws(1, &bob).await;
    ben.join(&room, 0).await;
    let mut cat = deployment.ws(1, &carol).await;
    cat.join(&room, 0).await;
    let mut dan = deployment.ws(0, &dave).await;
    dan.join(&room, 0).await;

    // A member moderates nobody.
    moderate(&mut ben, &room, &carol, "kick", json!({}), "x1").await;
    assert_eq!(error_code(&mut ben).await, "PERMISSION_DENIED");
    // Bob and carol become moderators.
    for (user, id) in [(&bob, "r1"), (&carol, "r2")] {
        moderate(
            &mut ann,
            &room,
            user,
            "set_role",
            json!({"role": "moderator"}),
            id,
        )
        .await;
        ack_seq(&mut ann).await;
    }
    // A moderator gives no roles, and acts on members only.
    moderate(
        &mut ben,
        &room,
        &dave,
        "set_role",
        json!({"role": "moderator"}),
        "x2",
    )
    .await;
    assert_eq!(error_code(&mut ben).await, "PERMISSION_DENIED");
    moderate(&mut ben, &room, &carol, "mute", json!({}), "x3").await;
    assert_eq!(error_code(&mut ben).await, "PERMISSION_DENIED");
    moderate(&mut ben, &room, &alice, "kick", json!({}), "x4").await;
    assert_eq!(error_code(&mut ben).await, "PERMISSION_DENIED");
    moderate(
        &mut ben,
        &room,
        &dave,
        "mute",
        json!({"duration": "1h"}),
        "ok1",
    )
    .await;
    ack_seq(&mut ben).await;
    // Nobody acts on the owner, the owner included, but an admin.
    moderate(&mut ann, &room, &alice, "mute", json!({}), "x5").await;
    assert_eq!(error_code(&mut ann).await, "PERMISSION_DENIED");
    // Bad requests are INVALID_ARGUMENT; acting on a non-member or lifting
    // what is not in force is FAILED_PRECONDITION.
    for (action, extra, code) in [
        ("promote", json!({}), "INVALID_ARGUMENT"),
        ("set_role", json!({"role": "owner"}), "INVALID_ARGUMENT"),
        ("ban", json!({"duration": "soon"}), "INVALID_ARGUMENT"),
        ("kick", json!({"duration": "1h"}), "INVALID_ARGUMENT"),
        ("unban", json!({}), "FAILED_PRECONDITION"),
        ("unmute", json!({}), "FAILED_PRECONDITION"),
    ] {
        moderate(&mut ann, &room, &bob, action, extra, "").await;
        assert_eq!(error_code(&mut ann).await, code, "{action}");
    }
    moderate(&mut ann, &room, &admin, "kick", json!({}), "").await;
    assert_eq!(
        error_code(&mut ann).await,
        "FAILED_PRECONDITION",
        "not a member"
    );

    // The global admin may do what an owner may, to the owner too.
    let mut root = deployment.ws(1, &admin).await;
    root.join(&room, 0).await;
    moderate(&mut root, &room, &alice, "kick", json!({}), "a1").await;
    ack_seq(&mut root).await;
    assert_eq!(ann.next_kind("left").await["room_id"], room.as_str());
    for ws in [ann, ben, cat, dan, root] {
        ws.close().await;
    }
    deployment.stop().await;
}

/// The sanctions last 3 s: long enough that the refused send and join are
/// answered inside them even on a loaded machine, short enough to wait out.
async fn bans_and_mutes_end_by_themselves(topology: Topology) {
    let (deployment, alice, bob) =
        Deployment::start_with_pair(topology, &Settings::default()).await;
    let room = room_id("timed");
    let mut ann = deployment.ws(0, &alice).await;
    ann.join(&room, 0).await;
    let mut ben = deployment.ws(1, &bob).await;
    ben.join(&room, 0).await;

    moderate(
        &mut ann,
        &room,
        &bob,
        "mute",
        json!({"duration": "3s"}),
        "m1",
    )
    .await;
    ack_seq(&mut ann).await;
    let until = ben.next_kind("member_update").await["until"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(!until.is_empty(), "a timed mute says when it ends");
    send(&mut ben, &room, "muted?", "b1").await;
    assert_eq!(error_code(&mut ben).await, "PERMISSION_DENIED");
    wait_past(&until).await;
    send(&mut ben, &room, "free again", "b2").await;
    ack_seq(&mut ben).await;

    moderate(
        &mut ann,
        &room,
        &bob,
        "ban",
        json!({"duration": "3s"}),
        "m2",
    )
    .await;
    ack_seq(&mut ann).await;
    let until = ben.next_kind("member_update").await["until"]
        .as_str()
        .unwrap()
        .to_owned();
    ben.next_kind("left").await;
    ben.send(json!({"join": {"room_id": room}})).await;
    assert_eq!(error_code(&mut ben).await, "PERMISSION_DENIED");
    wait_past(&until).await;
    // The ban has ended by itself; a new connection (any replica) may join.
    let mut again = deployment.ws(0, &bob).await;
    assert_eq!(again.join(&room, 0).await["role"], "member");
    for ws in [ann, ben, again] {
        ws.close().await;
    }
    deployment.stop().await;
}

async fn one_direct_room_per_pair_even_when_both_ask_at_once(topology: Topology) {
    let (deployment, alice, bob) =
        Deployment::start_with_pair(topology, &Settings::default()).await;
    let carol = deployment.sign_up(&username("carol")).await;
    // Several pairs, each asking from both sides at once on both gateways
    // (and replicas): one room per pair, created by exactly one call.
    let mut pairs = vec![(alice.clone(), bob.clone())];
    for n in 0..4 {
        pairs.push((
            deployment.sign_up(&username(&format!("p{n}a"))).await,
            deployment.sign_up(&username(&format!("p{n}b"))).await,
        ));
    }
    let asks = pairs.iter().flat_map(|(a, b)| {
        [
            open_dm(&deployment, 0, a, b).boxed(),
            open_dm(&deployment, 1, b, a).boxed(),
        ]
    });
    let answers = futures_util::future::join_all(asks).await;
    for (pair, answer) in pairs.iter().zip(answers.chunks(2)) {
        let statuses = [answer[0].0, answer[1].0];
        assert!(
            statuses == [201, 200] || statuses == [200, 201],
            "one call creates the room: {statuses:?} {answer:?}"
        );
        assert_eq!(answer[0].1["id"], answer[1].1["id"], "one room per pair");
        assert_eq!(answer[0].1["direct"], true);
        assert_eq!(answer[0].1["short_code"], "");
        assert_eq!(
            answer[0].1["name"],
            pair.1.username.as_str(),
            "named after the other"
        );
        assert_eq!(answer[1].1["name"], pair.0.username.as_str());
    }
    let dm = answers[0].1["id"].as_str().unwrap().to_owned();

    // Only the two may join or read it.
    let mut cat = deployment.ws(0, &carol).await;
    cat.send(json!({"join": {"room_id": dm}})).await;
    assert_eq!(error_code(&mut cat).await, "PERMISSION_DENIED");
    let (status, _) = rest(
        &deployment,
        1,
        "GET",
        &format!("/api/v1/rooms/{dm}/messages"),
        &carol,
        &Value::Null,
    )
    .await;
    assert_eq!(status, 403);
    let mut ann = deployment.ws(0, &alice).await;
    let joined = ann.join(&dm, 0).await;
    assert_eq!(
        (
            joined["direct"].as_bool(),
            joined["private"].as_bool(),
            joined["name"].as_str()
        ),
        (Some(true), Some(true), Some(bob.username.as_str()))
    );
    let mut ben = deployment.ws(1, &bob).await;
    ben.join(&dm, 0).await;
    send(&mut ann, &dm, "psst", "d1").await;
    ack_seq(&mut ann).await;
    assert_eq!(ben.next_message().await["content"], "psst");
    // Direct rooms have no moderation and no management.
    moderate(&mut ann, &dm, &bob, "kick", json!({}), "").await;
    assert_eq!(error_code(&mut ann).await, "FAILED_PRECONDITION");
    let (status, _) = rest(
        &deployment,
        0,
        "DELETE",
        &format!("/api/v1/rooms/{dm}"),
        &alice,
        &Value::Null,
    )
    .await;
    assert_eq!(status, 400);

    // Both room lists show it, named after the other user.
    for (account, other) in [(&alice, &bob), (&bob, &alice)] {
        let (status, rooms) = rest(
            &deployment,
            1,
            "GET",
            "/api/v1/rooms",
            account,
            &Value::Null,
        )
        .await;
        assert_eq!(status, 200);
        let listed = rooms["rooms"]
            .as_array()
            .unwrap()
            .iter()
            .find(|room| room["id"] == dm.as_str())
            .cloned()
            .unwrap_or_else(|| panic!("the direct room is listed: {rooms}"));
        assert_eq!(
            (listed["direct"].as_bool(), listed["name"].as_str()),
            (Some(true), Some(other.username.as_str()))
        );
        assert_eq!(listed["role"], "member");
    }
    // Bad peers.
    let (status, _) = rest(
        &deployment,
        0,
        "POST",
        "/api/v1/dms",
        &alice,
        &json!({"user_id": alice.user_id}),
    )
    .await;
    assert_eq!(status, 400, "not with oneself");
    let (status, _) = rest(
        &deployment,
        0,
        "POST",
        "/api/v1/dms",
        &alice,
        &json!({"user_id": "00000000-0000-0000-0000-000000000000"}),
    )
    .await;
    assert_eq!(status, 404, "not with nobody");
    for ws in [ann, ben, cat] {
        ws.close().await;
    }
    deployment.stop().await;
}

async fn owners_rename_lock_and_delete_rooms(topology: Topology) {
    let (deployment, alice, bob) =
        Deployment::start_with_pair(topology, &Settings::default()).await;
    let carol = deployment.sign_up(&username("carol")).await;
    let (status, room) = rest(
        &deployment,
        0,
        "POST",
        "/api/v1/rooms",
        &alice,
        &json!({"name": "Plans"}),
    )
    .await;
    assert_eq!(status, 201);
    let id = room["id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/rooms/{id}");
    // The creator of a room owns it.
    let mut ann = deployment.ws(0, &alice).await;
    assert_eq!(ann.join(&id, 0).await["role"], "owner");
    let mut ben = deployment.ws(1, &bob).await;
    ben.join(&id, 0).await;
    send(&mut ben, &id, "hello", "b1").await;
    ack_seq(&mut ben).await;

    // Members see each change live; only the owner makes them.
    let (status, _) = rest(
        &deployment,
        1,
        "PATCH",
        &path,
        &bob,
        &json!({"name": "Mine"}),
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = rest(&deployment, 0, "PATCH", &path, &alice, &json!({})).await;
    assert_eq!(status, 400, "nothing to change");
    let (status, renamed) = rest(
        &deployment,
        0,
        "PATCH",
        &path,
        &alice,
        &json!({"name": "Launch"}),
    )
    .await;
    assert_eq!((status, renamed["name"].as_str()), (200, Some("Launch")));
    let update = ben.next_kind("room_updated").await;
    assert_eq!(
        (
            update["name"].as_str(),
            update["private"].as_bool(),
            update["by"].as_str()
        ),
        (Some("Launch"), Some(false), Some(alice.user_id.as_str()))
    );
    let (status, locked) = rest(
        &deployment,
        0,
        "PATCH",
        &path,
        &alice,
        &json!({"password": "s3cret-pass"}),
    )
    .await;
    assert_eq!((status, locked["private"].as_bool()), (200, Some(true)));
    assert_eq!(ben.next_kind("room_updated").await["private"], true);
    let mut cat = deployment.ws(1, &carol).await;
    cat.send(json!({"join": {"room_id": id}})).await;
    assert_eq!(
        error_code(&mut cat).await,
        "PERMISSION_DENIED",
        "a password now"
    );
    let (status, _) = rest(
        &deployment,
        0,
        "PATCH",
        &path,
        &alice,
        &json!({"password": ""}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(ben.next_kind("room_updated").await["private"], false);
    cat.join(&id, 0).await;

    // A replay carries the room's updates.
    let mut late = deployment.ws(0, &bob).await;
    late.send(json!({"join": {"room_id": id, "since_seq": 1}}))
        .await;
    late.next_kind("joined").await;
    let updates: Vec<bool> = [
        late.next_kind("room_updated").await,
        late.next_kind("room_updated").await,
        late.next_kind("room_updated").await,
    ]
    .iter()
    .map(|u| u["private"].as_bool().unwrap())
    .collect();
    assert_eq!(updates, [false, true, false]);

    // Deleting: members online on both gateways get `left`; the room, its
    // history and its id are gone.
    let (status, _) = rest(&deployment, 1, "DELETE", &path, &bob, &Value::Null).await;
    assert_eq!(status, 403);
    let (status, _) = rest(&deployment, 0, "DELETE", &path, &alice, &Value::Null).await;
    assert_eq!(status, 204);
    for ws in [&mut ann, &mut ben, &mut cat, &mut late] {
        assert_eq!(ws.next_kind("left").await["room_id"], id.as_str());
    }
    send(&mut ben, &id, "anyone?", "b2").await;
    assert_eq!(error_code(&mut ben).await, "FAILED_PRECONDITION");
    let (status, _) = rest(
        &deployment,
        1,
        "GET",
        &format!("{path}/messages"),
        &bob,
        &Value::Null,
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = rest(&deployment, 0, "DELETE", &path, &alice, &Value::Null).await;
    assert_eq!(status, 404);
    ben.send(json!({"join": {"room_id": id}})).await;
    assert_eq!(
        error_code(&mut ben).await,
        "NOT_FOUND",
        "a deleted id is never reused"
    );
    let (_, rooms) = rest(&deployment, 0, "GET", "/api/v1/rooms", &bob, &Value::Null).await;
    assert!(
        rooms["rooms"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["id"] != id.as_str()),
        "{rooms}"
    );
    for ws in [ann, ben, cat, late] {
        ws.close().await;
    }
    deployment.stop().await;
}
