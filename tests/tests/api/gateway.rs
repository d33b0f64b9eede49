//! The WebSocket protocol of the README ("WebSocket protocol"), end to end
//! through the gateways: every frame, its errors and limits, against the
//! distributed topology (clients on gateway A and gateway B meet through
//! Redis) and against the all-in-one binary.

use std::{collections::HashMap, time::Duration};

use parley_tests::{
    chat::room_id,
    gateway::{Deployment, Event, Settings, Topology, Ws, http_json, metric, username},
    http_get, on_both_topologies,
};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{
    self, Message,
    protocol::frame::{
        Frame,
        coding::{Data, OpCode},
    },
};

on_both_topologies!(
    clients_on_both_gateways_see_one_order,
    a_join_with_since_seq_replays_and_lists_members,
    every_frame_gets_its_answer,
    bad_frames_get_error_frames_and_the_connection_stays,
    upgrades_need_a_valid_token_in_one_of_three_places,
    pages_of_other_origins_cannot_open_websockets,
    limits_answer_with_429_1009_and_error_frames,
    an_expired_token_closes_with_4001_unless_refreshed,
    a_client_that_stops_reading_is_closed_with_4008,
    the_gateway_exports_its_metrics,
);

/// The `error` body of the next frame, which must be an error.
async fn next_error(ws: &mut Ws) -> Value {
    let frame = ws.next().await;
    frame
        .get("error")
        .unwrap_or_else(|| panic!("expected an error frame, got {frame}"))
        .clone()
}

/// Checks the connection still answers.
async fn still_usable(ws: &mut Ws) {
    ws.send(json!({"ping": {"nonce": "still-here"}})).await;
    assert_eq!(ws.next_kind("pong").await, json!({"nonce": "still-here"}));
}

async fn clients_on_both_gateways_see_one_order(topology: Topology) {
    let (deployment, alice, bob) =
        Deployment::start_with_pair(topology, &Settings::default()).await;
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
    let (deployment, alice, bob) =
        Deployment::start_with_pair(topology, &Settings::default()).await;
    let room = room_id("replay");
    let mut on_a = deployment.ws(0, &alice).await;
    let joined = on_a.join(&room, 0).await;
    assert_eq!(joined["last_seq"], 0);
    assert_eq!(joined["replay_truncated"], false);
    assert_eq!(joined["members_truncated"], false, "every member is listed");
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

async fn every_frame_gets_its_answer(topology: Topology) {
    let (deployment, alice, bob) =
        Deployment::start_with_pair(topology, &Settings::default()).await;
    let room = room_id("frames");
    let mut on_a = deployment.ws(0, &alice).await;
    let mut on_b = deployment.ws(1, &bob).await;
    on_a.join(&room, 0).await;
    on_b.join(&room, 0).await;
    on_a.next_kind("presence").await;

    // ping
    on_a.send(json!({"ping": {"nonce": "7"}})).await;
    assert_eq!(on_a.next_kind("pong").await, json!({"nonce": "7"}));

    // typing reaches the others, never the typist
    on_b.send(json!({"typing": {"room_id": room}})).await;
    assert_eq!(
        on_a.next_kind("typing").await,
        json!({"room_id": room, "user_id": bob.user_id, "name": bob.username})
    );
    on_b.send(json!({"ping": {"nonce": "after-typing"}})).await;
    assert_eq!(
        on_b.next().await,
        json!({"pong": {"nonce": "after-typing"}})
    );

    // send: ack to the sender, message to everyone
    for i in 1..=3 {
        on_a.say(&room, &format!("m{i}"), &format!("c{i}")).await;
        let ack = on_a.next_kind("ack").await;
        assert_eq!(ack["client_id"], format!("c{i}"));
        assert_eq!(ack["seq"], i);
        assert!(ack["message_id"].is_string());
        assert_eq!(on_b.next_message().await["seq"], i);
    }

    // get_chat_history: newest last, has_more
    on_b.send(json!({"get_chat_history": {"room_id": room, "limit": 2, "before_seq": 0}}))
        .await;
    let history = on_b.next_kind("history").await;
    assert_eq!(history["room_id"], Value::from(room.clone()));
    let seqs: Vec<i64> = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, vec![2, 3]);
    assert_eq!(history["has_more"], true);

    // refresh: a new token of the same user; another user's or garbage is
    // refused and the connection keeps its token
    let tokens = http_json(
        deployment.gateway(0),
        "POST",
        "/api/v1/auth/refresh",
        None,
        &json!({"refresh_token": alice.refresh_token}),
    )
    .await
    .json();
    on_a.send(json!({"refresh": {"token": tokens["access_token"]}}))
        .await;
    let refreshed = on_a.next_kind("refreshed").await;
    let expires_at = refreshed["expires_at"].as_str().unwrap();
    assert!(
        expires_at.ends_with('Z') && expires_at.len() == "2026-01-01T00:00:00.000Z".len(),
        "RFC 3339 with milliseconds: {expires_at}"
    );
    for token in [bob.access_token.as_str(), "not-a-token"] {
        on_a.send(json!({"refresh": {"token": token}})).await;
        assert_eq!(next_error(&mut on_a).await["code"], "UNAUTHENTICATED");
    }
    still_usable(&mut on_a).await;

    // leave: left to the leaver, presence to the others
    on_b.send(json!({"leave": {"room_id": room}})).await;
    assert_eq!(on_b.next_kind("left").await, json!({"room_id": room}));
    assert_eq!(
        on_a.next_kind("presence").await,
        json!({"room_id": room, "user_id": bob.user_id, "name": bob.username, "state": "left"})
    );

    // private rooms: made over REST, joined by short code and password
    let created = http_json(
        deployment.gateway(0),
        "POST",
        "/api/v1/rooms",
        Some(&alice.access_token),
        &json!({"name": "secret", "password": "open sesame"}),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let created = created.json();
    assert_eq!(created["private"], true);
    let code = created["short_code"].as_str().unwrap();
    on_b.send(json!({"join": {"short_code": code, "password": "wrong"}}))
        .await;
    let error = next_error(&mut on_b).await;
    assert_eq!(error["code"], "PERMISSION_DENIED");
    on_b.send(json!({"join": {"short_code": code, "password": "open sesame"}}))
        .await;
    assert_eq!(on_b.next_kind("joined").await["room_id"], created["id"]);

    on_a.close().await;
    on_b.close().await;
    deployment.stop().await;
}

async fn bad_frames_get_error_frames_and_the_connection_stays(topology: Topology) {
    let deployment = Deployment::start(topology, &Settings::default()).await;
    let alice = deployment.sign_up(&username("alice")).await;
    let room = room_id("bad");
    let mut ws = deployment.ws(0, &alice).await;

    for text in [
        "not json",
        "[1,2]",
        "{}",
        r#"{"ping":{},"typing":{}}"#,
        r#"{"dance":{}}"#,
        r#"{"join":"general"}"#,
        r#"{"join":{"room_id":"general","since_seq":"forty"}}"#,
    ] {
        ws.send_text(text).await;
        let error = next_error(&mut ws).await;
        assert_eq!(error["code"], "INVALID_ARGUMENT", "{text}: {error}");
        assert_eq!(error["client_id"], "");
    }
    ws.send_message(Message::binary(vec![1u8, 2, 3]))
        .await
        .unwrap();
    assert_eq!(next_error(&mut ws).await["code"], "INVALID_ARGUMENT");

    // A field of the wrong type is named, and string ids are echoed.
    ws.send_text(r#"{"send":{"room_id":"r1","client_id":"c-9","content":5}}"#)
        .await;
    let error = next_error(&mut ws).await;
    assert!(
        error["message"].as_str().unwrap().contains("content"),
        "{error}"
    );
    assert_eq!(
        (error["client_id"].as_str(), error["room_id"].as_str()),
        (Some("c-9"), Some("r1"))
    );

    // Rules of rooms and content.
    ws.send(json!({"join": {"room_id": "no spaces!"}})).await;
    assert_eq!(next_error(&mut ws).await["code"], "INVALID_ARGUMENT");
    ws.send(json!({"join": {"room_id": room, "short_code": "ABCDEF"}}))
        .await;
    assert_eq!(next_error(&mut ws).await["code"], "INVALID_ARGUMENT");
    ws.send(json!({"join": {"short_code": "ZZZZZZ", "password": "x"}}))
        .await;
    assert_eq!(next_error(&mut ws).await["code"], "NOT_FOUND");
    ws.say(&room, "hi", "c-1").await;
    let error = next_error(&mut ws).await;
    assert_eq!(error["code"], "FAILED_PRECONDITION");
    assert_eq!(
        (error["client_id"].as_str(), error["room_id"].as_str()),
        (Some("c-1"), Some(room.as_str()))
    );
    ws.join(&room, 0).await;
    // A NUL could not be stored, and would fail the batch it shared.
    for content in ["", "   \n", &"x".repeat(4097), "nul\0inside"] {
        ws.say(&room, content, "c-2").await;
        let error = next_error(&mut ws).await;
        assert_eq!(
            error["code"],
            "INVALID_ARGUMENT",
            "content of {} bytes",
            content.len()
        );
        assert_eq!(error["client_id"], "c-2");
    }
    still_usable(&mut ws).await;
    ws.close().await;
    deployment.stop().await;
}

async fn upgrades_need_a_valid_token_in_one_of_three_places(topology: Topology) {
    let deployment = Deployment::start(topology, &Settings::default()).await;
    let alice = deployment.sign_up(&username("alice")).await;
    let gateway = deployment.gateway(0);

    for query in ["", "?token=not-a-jwt"] {
        let Err(err) = Ws::try_connect(Ws::request(gateway, query)).await else {
            panic!("an upgrade with {query:?} was accepted");
        };
        let tungstenite::Error::Http(response) = *err else {
            panic!("expected an HTTP refusal, got {err}");
        };
        assert_eq!(response.status(), 401, "{query:?}");
        let body: Value = serde_json::from_slice(response.body().as_deref().unwrap()).unwrap();
        assert_eq!(body["error"]["code"], "UNAUTHENTICATED");
    }
    // A plain GET is no upgrade: 400 whatever the token.
    for path in [
        "/ws".to_owned(),
        format!("/ws?token={}", alice.access_token),
    ] {
        let response = parley_tests::gateway::http(gateway, "GET", &path, &[], None).await;
        assert_eq!(response.status, 400, "{path}: {}", response.body);
        assert_eq!(response.json()["error"]["code"], "INVALID_ARGUMENT");
    }

    let mut request = Ws::request(gateway, "");
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {}", alice.access_token).parse().unwrap(),
    );
    let (mut ws, _) = Ws::try_connect(request)
        .await
        .expect("bearer header accepted");
    still_usable(&mut ws).await;
    ws.close().await;

    let protocol = format!("bearer.{}", alice.access_token);
    let mut request = Ws::request(gateway, "");
    request
        .headers_mut()
        .insert("sec-websocket-protocol", protocol.parse().unwrap());
    let (mut ws, response) = Ws::try_connect(request)
        .await
        .expect("subprotocol accepted");
    assert_eq!(
        response.headers()["sec-websocket-protocol"]
            .to_str()
            .unwrap(),
        protocol,
        "the server selects the bearer subprotocol, as browsers require"
    );
    still_usable(&mut ws).await;
    ws.close().await;
    deployment.stop().await;
}

async fn limits_answer_with_429_1009_and_error_frames(topology: Topology) {
    let settings = Settings {
        max_connections_per_user: 2,
        max_frame_bytes: 1024,
        max_rooms_per_connection: 2,
        sends_per_second: 1,
        send_burst: 3,
        ..Settings::default()
    };
    let deployment = Deployment::start(topology, &settings).await;
    let alice = deployment.sign_up(&username("alice")).await;

    // Connections per user, per gateway.
    let mut first = deployment.ws(0, &alice).await;
    let second = deployment.ws(0, &alice).await;
    let request = Ws::request(
        deployment.gateway(0),
        &format!("?token={}", alice.access_token),
    );
    match Ws::try_connect(request).await {
        Err(err) => match *err {
            tungstenite::Error::Http(response) => {
                assert_eq!(response.status(), 429);
                let body: Value =
                    serde_json::from_slice(response.body().as_deref().unwrap()).unwrap();
                assert_eq!(body["error"]["code"], "RESOURCE_EXHAUSTED");
            }
            other => panic!("expected 429, got {other}"),
        },
        Ok(_) => panic!("a third connection was accepted"),
    }
    second.close().await;

    // Rooms per connection.
    let rooms: Vec<String> = (0..3).map(|i| room_id(&format!("lim{i}"))).collect();
    first.join(&rooms[0], 0).await;
    first.join(&rooms[1], 0).await;
    first.send(json!({"join": {"room_id": rooms[2]}})).await;
    let error = next_error(&mut first).await;
    assert_eq!(error["code"], "RESOURCE_EXHAUSTED");
    assert_eq!(error["room_id"], Value::from(rooms[2].clone()));

    // Send rate: a burst of 3, then refusals that echo the client_id.
    for i in 0..6 {
        first.say(&rooms[0], "fast", &format!("r{i}")).await;
    }
    let (mut acks, mut refused) = (0, 0);
    while acks + refused < 6 {
        let frame = first.next().await;
        if frame.get("ack").is_some() {
            acks += 1;
        } else if let Some(error) = frame.get("error") {
            assert_eq!(error["code"], "RESOURCE_EXHAUSTED", "{error}");
            assert!(error["client_id"].as_str().unwrap().starts_with('r'));
            refused += 1;
        }
    }
    assert!(acks >= 3 && refused >= 1, "acks {acks}, refused {refused}");

    // Frames: exactly the limit is accepted, one byte more closes with 1009.
    let padding = |total: usize| {
        let bare = json!({"ping": {"nonce": ""}}).to_string().len();
        json!({"ping": {"nonce": "x".repeat(total - bare)}}).to_string()
    };
    let exact = padding(1024);
    assert_eq!(exact.len(), 1024);
    first.send_text(&exact).await;
    assert!(first.next_kind("pong").await["nonce"].is_string());
    first.send_text(&padding(1025)).await;
    assert_eq!(first.closed().await, Some(1009));

    // A message sent in fragments, each under the limit but together far
    // over it, is just as big: 1009 too, not a dropped connection.
    let mut fragmented = deployment.ws(0, &alice).await;
    let text = padding(2 * 1024 * 1024);
    let chunks: Vec<&[u8]> = text.as_bytes().chunks(1000).collect();
    let frames = chunks
        .iter()
        .enumerate()
        .map(|(i, chunk)| {
            let opcode = if i == 0 {
                OpCode::Data(Data::Text)
            } else {
                OpCode::Data(Data::Continue)
            };
            Message::Frame(Frame::message(
                chunk.to_vec(),
                opcode,
                i + 1 == chunks.len(),
            ))
        })
        .collect();
    // Written back to back, as a client streaming a large message does; the
    // server may close before the last fragments are written.
    let _ = fragmented.send_all(frames).await;
    assert_eq!(fragmented.closed().await, Some(1009));
    deployment.stop().await;
}

async fn an_expired_token_closes_with_4001_unless_refreshed(topology: Topology) {
    let settings = Settings {
        access_token_ttl: Duration::from_secs(4),
        ..Settings::default()
    };
    let deployment = Deployment::start(topology, &settings).await;
    let alice = deployment.sign_up(&username("alice")).await;
    let mut lapsing = deployment.ws(0, &alice).await;
    let mut refreshing = deployment.ws(1, &alice).await;
    // The scenario needs time to pass: refresh halfway through the
    // token's life, with a token that lives past the first one.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let tokens = http_json(
        deployment.gateway(0),
        "POST",
        "/api/v1/auth/refresh",
        None,
        &json!({"refresh_token": alice.refresh_token}),
    )
    .await
    .json();
    refreshing
        .send(json!({"refresh": {"token": tokens["access_token"]}}))
        .await;
    refreshing.next_kind("refreshed").await;

    assert_eq!(lapsing.closed().await, Some(4001));
    still_usable(&mut refreshing).await;
    refreshing.close().await;
    deployment.stop().await;
}

async fn a_client_that_stops_reading_is_closed_with_4008(topology: Topology) {
    let settings = Settings {
        send_queue: 32,
        ..Settings::default()
    };
    let (deployment, alice, bob) = Deployment::start_with_pair(topology, &settings).await;
    let room = room_id("slow");
    let mut sender = deployment.ws(0, &alice).await;
    let mut sleeper = deployment.ws(0, &bob).await;
    sender.join(&room, 0).await;
    sleeper.join(&room, 0).await;

    // The sleeper reads nothing while the room floods with large messages,
    // until the gateway has given up on it.
    let content = "z".repeat(4000);
    let admin = deployment.gateway_admins[0];
    let mut sent = 0;
    let mut received = 0;
    let before = metric(admin, "parley_ws_slow_consumer_disconnects_total")
        .await
        .unwrap_or(0.0);
    while metric(admin, "parley_ws_slow_consumer_disconnects_total")
        .await
        .is_none_or(|n| n <= before)
    {
        // Small rounds, read in full, keep the sender itself well inside
        // its own queue.
        for _ in 0..8 {
            sender.say(&room, &content, "").await;
            sent += 1;
        }
        while received < sent {
            if sender.next().await.get("message").is_some() {
                received += 1;
            }
        }
        assert!(sent < 20_000, "the sleeper was never cut");
    }
    // The fast member got everything; the sleeper ends after what was
    // already on the wire, with 4008 if the close frame got through.
    assert_eq!(received, sent);
    let ending = loop {
        if let Event::Closed(code) = sleeper.next_event().await {
            break code;
        }
    };
    assert!(matches!(ending, Some(4008) | None), "{ending:?}");
    still_usable(&mut sender).await;
    deployment.stop().await;
}

async fn the_gateway_exports_its_metrics(topology: Topology) {
    let deployment = Deployment::start(topology, &Settings::default()).await;
    let alice = deployment.sign_up(&username("alice")).await;
    let room = room_id("metrics");
    let mut ws = deployment.ws(0, &alice).await;
    ws.join(&room, 0).await;
    ws.say(&room, "counted", "").await;
    ws.next_message().await;
    let (status, body) = http_get(deployment.gateway_admins[0], "/metrics").await;
    assert_eq!(status, 200);
    for series in [
        "parley_build_info{service=\"gateway\"",
        "parley_ws_connections ",
        "parley_ws_upgrades_total{result=\"ok\"}",
        "parley_ws_frames_received_total{type=\"send\"}",
        "parley_ws_frames_sent_total{type=\"message\"}",
        "parley_ws_slow_consumer_disconnects_total ",
        "parley_http_requests_total{route=\"/api/v1/auth/login\",status=\"200\"}",
        "parley_http_request_duration_seconds_bucket{route=\"/api/v1/auth/login\"",
        "grpc_client_streams_active",
    ] {
        assert!(body.contains(series), "missing {series}");
    }
    assert!(
        body.lines()
            .any(|line| line.starts_with("grpc_client_handled_total{")
                && line.contains("grpc_method=\"Login\"")
                && line.contains("grpc_code=\"OK\"")),
        "the gateway's calls to auth are counted"
    );
    ws.close().await;
    deployment.stop().await;
}

/// A page of another site is refused with 403 before any WebSocket opens;
/// the gateway's own pages and clients that send no `Origin` get through.
async fn pages_of_other_origins_cannot_open_websockets(topology: Topology) {
    let (deployment, alice, _) = Deployment::start_with_pair(topology, &Settings::default()).await;
    let gateway = deployment.gateway(0);
    let query = format!("?token={}", alice.access_token);
    let with_origin = |origin: &str| {
        let mut request = Ws::request(gateway, &query);
        request
            .headers_mut()
            .insert("Origin", origin.parse().expect("a header value"));
        request
    };
    for foreign in ["https://evil.example", "null", "http://127.0.0.1:1"] {
        let Err(err) = Ws::try_connect(with_origin(foreign)).await else {
            panic!("an upgrade from {foreign} was accepted");
        };
        let tungstenite::Error::Http(response) = *err else {
            panic!("expected an HTTP refusal for {foreign}, got {err}");
        };
        assert_eq!(response.status(), 403, "{foreign}");
    }
    let (ws, _) = Ws::try_connect(with_origin(&format!("http://{gateway}")))
        .await
        .expect("the gateway's own page connects");
    ws.close().await;
    let (ws, _) = Ws::try_connect(Ws::request(gateway, &query))
        .await
        .expect("a client without Origin connects");
    ws.close().await;
    deployment.stop().await;
}
