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
///
/// The gateway stops reading at the oversized frame's header, so the rest
/// of the frame may still be arriving when it closes the socket; the kernel
/// then answers with a reset that can overtake the close frame. The close
/// is therefore either 1009 or a reset, and the caller checks the gateways'
/// own count of `too_big` closes.
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
    let code = ws.closed().await;
    assert!(matches!(code, Some(1009) | None), "{code:?}");
}

/// Connections closed with 1009 as the first gateway reports them: all
/// of the deployment's (in-process gateways share one registry with other
/// tests of this process, so the count only grows by at least ours).
async fn too_big_closes(deployment: &Deployment) -> f64 {
    let admin = deployment.gateway_admins[0];
    metric(admin, "parley_ws_closed_total{reason=\"too_big\"}")
        .await
        .unwrap_or(0.0)
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
    let too_big_before = too_big_closes(&deployment).await;
    let content = "z".repeat(3000);
    let (mut seen_a, mut seen_b) = (Vec::new(), Vec::new());
    let mut sent = 0;
    let mut rounds = 0.0;
    let mut after_cut = 0;
    while after_cut < 5 {
        for i in 0..4 {
            on_a.say(&room, &content, &format!("a{sent}-{i}")).await;
            on_b.say(&room, &content, &format!("b{sent}-{i}")).await;
        }
        let gateway = deployment.gateway((sent / 8) % deployment.gateways.len());
        rogue_round(gateway, &rogue.access_token, &room).await;
        rounds += 1.0;
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
    let too_big = too_big_closes(&deployment).await - too_big_before;
    assert!(
        too_big >= rounds,
        "{too_big} closes for {rounds} oversized frames"
    );
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

/// Registering a taken name is refused before the password is hashed, so a
/// flood of such registrations cannot keep auth's hashing slots busy (the
/// all-in-one is a process of its own: its hash count is this test's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registering_a_taken_name_costs_no_hash() {
    let deployment = Deployment::all_in_one(&Settings::default(), &[]).await;
    let gateway = deployment.gateway(0);
    let admin = deployment.auth_admin;
    let body = json!({"username": username("taken"), "password": parley_tests::PASSWORD});
    let register =
        || parley_tests::gateway::http_json(gateway, "POST", "/api/v1/auth/register", None, &body);
    assert_eq!(register().await.status, 201);
    let hashes = || metric(admin, "parley_auth_password_hash_seconds_count");
    let before = hashes().await.expect("the hash histogram");
    for _ in 0..5 {
        let refused = register().await;
        assert_eq!(refused.status, 409, "{}", refused.body);
        assert!(refused.body.contains("already taken"), "{}", refused.body);
    }
    assert_eq!(hashes().await, Some(before), "no hash for a taken name");
    deployment.stop().await;
}

/// Password guessing against one account is slowed per username, whatever
/// the addresses it comes from: past `AUTH_LOGIN_ATTEMPTS`, even the right
/// password is refused with 429 and Retry-After until the bucket refills,
/// and other accounts are not affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_attempts_are_limited_per_username() {
    let deployment = Deployment::all_in_one(
        &Settings::default(),
        &[
            ("AUTH_LOGIN_ATTEMPTS", "3"),
            ("AUTH_LOGIN_ATTEMPT_EVERY", "1h"),
        ],
    )
    .await;
    let gateway = deployment.gateway(0);
    let alice = deployment.sign_up(&username("alice")).await;
    let bob = deployment.sign_up(&username("bob")).await;
    let login = |name: &str, password: &str| {
        let body = json!({"username": name, "password": password});
        async move {
            parley_tests::gateway::http_json(gateway, "POST", "/api/v1/auth/login", None, &body)
                .await
        }
    };
    // sign_up logged alice in once already: two wrong guesses are left.
    for _ in 0..2 {
        assert_eq!(login(&alice.username, "a wrong guess").await.status, 401);
    }
    let refused = login(&alice.username, parley_tests::PASSWORD).await;
    assert_eq!(refused.status, 429, "{}", refused.body);
    let retry: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((3000..=3600).contains(&retry), "{retry}");
    assert!(
        refused.body.contains("RESOURCE_EXHAUSTED"),
        "{}",
        refused.body
    );
    let upper = login(&alice.username.to_uppercase(), parley_tests::PASSWORD).await;
    assert_eq!(upper.status, 429, "the name counts case-insensitively");
    assert_eq!(
        login(&bob.username, parley_tests::PASSWORD).await.status,
        200
    );
    deployment.stop().await;
}

/// Sign-up, sign-in and refresh requests are limited per client address
/// at the gateway; behind a proxy, the address comes from the header named
/// by `GATEWAY_CLIENT_ADDRESS_HEADER`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_requests_are_limited_per_client_address() {
    let deployment = Deployment::all_in_one(
        &Settings::default(),
        &[
            ("GATEWAY_AUTH_ATTEMPTS", "4"),
            ("GATEWAY_AUTH_ATTEMPT_EVERY", "1h"),
            ("GATEWAY_CLIENT_ADDRESS_HEADER", "x-forwarded-for"),
        ],
    )
    .await;
    let gateway = deployment.gateway(0);
    let attempt = |path: &'static str, client: &'static str| async move {
        parley_tests::gateway::http(
            gateway,
            "POST",
            path,
            &[
                ("Content-Type", "application/json"),
                ("X-Forwarded-For", client),
            ],
            Some("{}"),
        )
        .await
    };
    // Malformed requests count too: the limit comes before anything else.
    for path in [
        "/api/v1/auth/login",
        "/api/v1/auth/register",
        "/api/v1/auth/refresh",
        "/api/v1/auth/login",
    ] {
        // A made-up first address changes nothing: the proxy's last one counts.
        assert_eq!(attempt(path, "198.51.100.1, 203.0.113.7").await.status, 400);
    }
    let refused = attempt("/api/v1/auth/register", "203.0.113.7").await;
    assert_eq!(refused.status, 429, "{}", refused.body);
    assert!(refused.header("retry-after").is_some());
    // Another client, and the routes that need no limit, are not affected.
    assert_eq!(
        attempt("/api/v1/auth/login", "198.51.100.9").await.status,
        400
    );
    assert_eq!(
        attempt("/api/v1/auth/logout", "203.0.113.7").await.status,
        400
    );
    deployment.stop().await;
}

/// Sends over the rate are refused without a database lookup each: only a
/// few are looked up as possible retries of stored messages (the all-in-one
/// is a process of its own: its query counts are this test's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_sends_do_not_each_cost_a_query() {
    let settings = Settings {
        sends_per_second: 1,
        send_burst: 1,
        ..Settings::default()
    };
    let deployment = Deployment::all_in_one(&settings, &[]).await;
    let alice = deployment.sign_up(&username("alice")).await;
    let room = room_id("flood");
    let mut ws = deployment.ws(0, &alice).await;
    ws.join(&room, 0).await;
    let chat_admin = deployment.chat_admins[0];
    let lookups = || {
        metric(
            chat_admin,
            "parley_db_query_seconds_count{operation=\"get_message_by_client_id\"}",
        )
    };
    let before = lookups().await.unwrap_or(0.0);
    let flood = 200;
    for i in 0..flood {
        ws.say(&room, "again and again", &format!("f{i}")).await;
    }
    let (mut acks, mut refused) = (0, 0);
    while acks + refused < flood {
        let frame: Value = ws.next().await;
        if frame.get("ack").is_some() {
            acks += 1;
        } else if let Some(error) = frame.get("error") {
            assert_eq!(error["code"], "RESOURCE_EXHAUSTED", "{error}");
            refused += 1;
        }
    }
    assert!(refused > 150, "{refused} of {flood} refused");
    let looked_up = lookups().await.unwrap_or(0.0) - before;
    assert!(
        looked_up < 60.0,
        "{looked_up} lookups for {refused} refused sends"
    );
    ws.close().await;
    deployment.stop().await;
}
