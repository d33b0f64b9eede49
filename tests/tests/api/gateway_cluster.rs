//! The gateway when chat replicas die and gateways stop: sessions move
//! without their clients noticing, and a draining gateway says goodbye
//! with 1001.

use std::time::Duration;

use parley_runtime::test_util::RunningBinary;
use parley_tests::{
    DatabaseBackend, TestStack, binary,
    chat::room_id,
    gateway::{
        ChatProcess, Deployment, Event, GatewayNode, Settings, Topology, Ws, free_ports,
        service_url, username,
    },
};
use serde_json::json;

/// Reads timeline events (messages, edits, deletions, reactions) until
/// `count` have arrived, failing on an error or a close; returns their
/// seqs.
async fn seqs(ws: &mut Ws, count: usize) -> Vec<i64> {
    let mut seqs = Vec::new();
    while seqs.len() < count {
        match ws.next_event().await {
            Event::Frame(frame) => {
                for kind in ["message", "message_edited", "message_deleted", "reaction"] {
                    if let Some(event) = frame.get(kind) {
                        seqs.push(event["seq"].as_i64().unwrap());
                    }
                }
                assert!(frame.get("error").is_none(), "unexpected {frame}");
            }
            Event::Closed(code) => panic!("the client was disconnected ({code:?})"),
        }
    }
    seqs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_chat_replica_loses_no_message_for_connected_clients() {
    let mut stack = TestStack::start(DatabaseBackend::Postgres).await;
    let ports = free_ports(2).await;
    let chat1 = ChatProcess::start(&stack, ports[0], &[]).await;
    let chat2 = ChatProcess::start(&stack, ports[1], &[]).await;
    let settings = Settings::default();
    // A talks only to replica 1 and must wait for it to come back; B only
    // to replica 2. C knows both, so its sessions move to replica 2 at once.
    let gateway_a = GatewayNode::start(&stack, service_url(&ports[..1]), &settings).await;
    let gateway_b = GatewayNode::start(&stack, service_url(&ports[1..]), &settings).await;

    let alice = stack.account(&username("alice")).await;
    let bob = stack.account(&username("bob")).await;
    let carol = stack.account(&username("carol")).await;
    let room = room_id("failover");
    let mut on_a = Ws::connect(gateway_a.http, &alice.access_token).await;
    let mut on_b = Ws::connect(gateway_b.http, &bob.access_token).await;
    on_a.join(&room, 0).await;
    on_b.join(&room, 0).await;
    // C starts while only replica 1 answers, so carol's session is there.
    let gateway_c = GatewayNode::start(&stack, service_url(&ports[..1]), &settings).await;
    let mut on_c = Ws::connect(gateway_c.http, &carol.access_token).await;
    on_c.join(&room, 0).await;

    for i in 1..=10 {
        on_b.say(&room, &format!("before {i}"), &format!("b{i}"))
            .await;
    }
    assert_eq!(seqs(&mut on_a, 10).await, (1..=10).collect::<Vec<_>>());
    assert_eq!(seqs(&mut on_c, 10).await, (1..=10).collect::<Vec<_>>());

    // While replica 1 is down, messages, edits and reactions all flow.
    chat1.kill().await;
    for i in 11..=30 {
        let target = i % 10 + 1;
        match i % 3 {
            0 => {
                on_b.send(json!({"react": {"room_id": room, "seq": target, "emoji": format!("e{i}"), "client_id": format!("r{i}")}}))
                    .await;
            }
            1 => {
                on_b.send(json!({"edit": {"room_id": room, "seq": target, "content": format!("edited {i}"), "client_id": format!("e{i}")}}))
                    .await;
            }
            _ => {
                on_b.say(&room, &format!("during {i}"), &format!("b{i}"))
                    .await;
            }
        }
    }
    assert_eq!(seqs(&mut on_b, 30).await, (1..=30).collect::<Vec<_>>());

    // Replica 1 comes back at the same address; A's sessions return to it
    // and rejoin after their cursors. Nobody was disconnected.
    let _chat1 = ChatProcess::start(&stack, ports[0], &[]).await;
    assert_eq!(seqs(&mut on_a, 20).await, (11..=30).collect::<Vec<_>>());
    assert_eq!(seqs(&mut on_c, 20).await, (11..=30).collect::<Vec<_>>());

    // The moved sessions work as before, both ways.
    on_a.say(&room, "alice is back", "a1").await;
    assert_eq!(on_a.next_kind("ack").await["seq"], 31);
    on_c.say(&room, "carol too", "c1").await;
    assert_eq!(on_c.next_kind("ack").await["seq"], 32);
    assert_eq!(seqs(&mut on_b, 2).await, vec![31, 32]);

    drop(chat2);
    for ws in [on_a, on_b, on_c] {
        ws.close().await;
    }
    for gateway in [gateway_a, gateway_b, gateway_c] {
        gateway.stop().await;
    }
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_move_to_another_replica_when_theirs_dies() {
    let mut stack = TestStack::start(DatabaseBackend::Postgres).await;
    let ports = free_ports(2).await;
    let chat1 = ChatProcess::start(&stack, ports[0], &[]).await;
    let settings = Settings::default();
    // The gateway knows both addresses; only replica 1 runs yet, so the
    // session lands there.
    let gateway = GatewayNode::start(&stack, service_url(&ports), &settings).await;
    let alice = stack.account(&username("alice")).await;
    let bob = stack.account(&username("bob")).await;
    let room = room_id("move");
    let mut watcher = Ws::connect(gateway.http, &alice.access_token).await;
    watcher.join(&room, 0).await;
    let chat2 = ChatProcess::start(&stack, ports[1], &[]).await;
    let mut talker = Ws::connect(gateway.http, &bob.access_token).await;
    talker.join(&room, 0).await;
    talker.say(&room, "one", "t1").await;
    assert_eq!(seqs(&mut watcher, 1).await, vec![1]);

    chat1.kill().await;
    // Sends with a client_id that were in flight are sent again after the
    // move; the ones after it go straight to replica 2.
    for i in 2..=11 {
        talker.say(&room, &format!("m{i}"), &format!("t{i}")).await;
    }
    let mut acked = Vec::new();
    while acked.len() < 10 {
        let frame = talker.next().await;
        if let Some(ack) = frame.get("ack") {
            acked.push(ack["client_id"].as_str().unwrap().to_owned());
        } else if let Some(error) = frame.get("error") {
            // A send caught mid-move without a resend path is refused
            // explicitly; the client retries it with the same client_id.
            assert_eq!(error["code"], "UNAVAILABLE", "{error}");
            let client_id = error["client_id"].as_str().unwrap().to_owned();
            let i: usize = client_id[1..].parse().unwrap();
            talker.say(&room, &format!("m{i}"), &client_id).await;
        }
    }
    let delivered = seqs(&mut watcher, 10).await;
    assert_eq!(
        delivered,
        (2..=11).collect::<Vec<_>>(),
        "every send once, in order"
    );
    watcher.send(json!({"ping": {"nonce": "alive"}})).await;
    assert_eq!(watcher.next_kind("pong").await["nonce"], "alive");

    drop(chat2);
    watcher.close().await;
    talker.close().await;
    gateway.stop().await;
    stack.stop().await;
}

async fn drains_with_1001(topology: Topology) {
    // Both topologies run a real process and send it SIGTERM.
    let settings = Settings {
        shutdown_grace: Duration::from_secs(2),
        ..Settings::default()
    };
    match topology {
        Topology::AllInOne => {
            let mut deployment = Deployment::all_in_one(&settings, &[]).await;
            let alice = deployment.sign_up(&username("alice")).await;
            let room = room_id("drain");
            let mut sockets = Vec::new();
            for _ in 0..3 {
                let mut ws = deployment.ws(0, &alice).await;
                // Joined, the session is open on chat. A connection still
                // opening when the process's own chat stops taking
                // sessions is told 1013 (try again later) instead.
                ws.join(&room, 0).await;
                sockets.push(ws);
            }
            let process = deployment.process().expect("a process");
            process.terminate().await;
            for ws in &mut sockets {
                assert_eq!(ws.closed().await, Some(1001));
            }
            let exit = tokio::time::timeout(Duration::from_secs(10), process.child.wait())
                .await
                .expect("exits within SHUTDOWN_GRACE + 5s")
                .expect("an exit status");
            assert_eq!(exit.code(), Some(0));
        }
        Topology::Distributed => {
            let mut stack = TestStack::start(DatabaseBackend::Postgres).await;
            let ports = free_ports(1).await;
            let _chat = ChatProcess::start(&stack, ports[0], &[]).await;
            let auth = stack.auth_url().to_string();
            let user = format!("http://{}", stack.user_addr);
            let chat = service_url(&ports).to_string();
            let mut running = RunningBinary::start(
                &binary("parley-gateway"),
                &[
                    ("GATEWAY_HTTP_ADDR", "127.0.0.1:0"),
                    ("GATEWAY_ADMIN_ADDR", "127.0.0.1:0"),
                    ("AUTH_URL", auth.as_str()),
                    ("USER_URL", user.as_str()),
                    ("CHAT_URL", chat.as_str()),
                    ("SHUTDOWN_GRACE", "2s"),
                ],
                1,
            )
            .await;
            parley_tests::gateway::wait_until_ready(running.admin_addrs[0]).await;
            let alice = stack.account(&username("alice")).await;
            let mut sockets = Vec::new();
            for _ in 0..3 {
                sockets.push(Ws::connect(running.http_addrs[0], &alice.access_token).await);
            }
            running.terminate().await;
            for ws in &mut sockets {
                assert_eq!(ws.closed().await, Some(1001));
            }
            let exit = tokio::time::timeout(Duration::from_secs(10), running.child.wait())
                .await
                .expect("exits within SHUTDOWN_GRACE + 5s")
                .expect("an exit status");
            assert_eq!(exit.code(), Some(0));
            stack.stop().await;
        }
    }
}

parley_tests::on_both_topologies!(drains_with_1001);

/// Ctrl-C on a laptop's `parley` with browsers connected: the sockets get
/// 1001 at once (one process has no other gateway to spread reconnects
/// over), then the services behind the gateway stop, and the process is
/// gone in well under the default grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_stops_the_all_in_one_at_once() {
    let settings = Settings {
        shutdown_grace: Duration::from_secs(20),
        ..Settings::default()
    };
    let mut deployment = Deployment::all_in_one(&settings, &[]).await;
    let alice = deployment.sign_up(&username("alice")).await;
    let room = room_id("ctrl-c");
    let mut sockets = Vec::new();
    for _ in 0..3 {
        let mut ws = deployment.ws(0, &alice).await;
        ws.join(&room, 0).await;
        sockets.push(ws);
    }
    let process = deployment.process().expect("a process");
    let started = std::time::Instant::now();
    process.interrupt().await;
    for ws in &mut sockets {
        assert_eq!(ws.closed().await, Some(1001));
    }
    let exit = tokio::time::timeout(Duration::from_secs(10), process.child.wait())
        .await
        .expect("exits")
        .expect("an exit status");
    assert_eq!(exit.code(), Some(0));
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "Ctrl-C took {took:?} with SHUTDOWN_GRACE at 20s"
    );
}

/// A replica that stops answering without closing anything (frozen with
/// SIGSTOP, as a stalled node or a long GC pause would be) is noticed by
/// the gateway's keepalive; its sessions move, sends go on through the
/// other replica, and when it wakes (SIGCONT) nothing it held is
/// delivered twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_move_away_from_a_frozen_replica_and_nothing_repeats_when_it_wakes() {
    let mut stack = TestStack::start(DatabaseBackend::Postgres).await;
    let ports = free_ports(2).await;
    let chat1 = ChatProcess::start(&stack, ports[0], &[]).await;
    let gateway = GatewayNode::start(&stack, service_url(&ports), &Settings::default()).await;
    let alice = stack.account(&username("alice")).await;
    let bob = stack.account(&username("bob")).await;
    let room = room_id("frozen");
    let mut watcher = Ws::connect(gateway.http, &alice.access_token).await;
    watcher.join(&room, 0).await;
    let chat2 = ChatProcess::start(&stack, ports[1], &[]).await;
    let mut talker = Ws::connect(gateway.http, &bob.access_token).await;
    talker.join(&room, 0).await;
    talker.say(&room, "one", "t1").await;
    assert_eq!(seqs(&mut watcher, 1).await, vec![1]);

    chat1.running.signal("STOP").await;
    for i in 2..=6 {
        talker.say(&room, &format!("m{i}"), &format!("t{i}")).await;
    }
    let mut acked = 0;
    while acked < 5 {
        let frame = talker.next().await;
        if frame.get("ack").is_some() {
            acked += 1;
        } else if let Some(error) = frame.get("error") {
            assert_eq!(error["code"], "UNAVAILABLE", "{error}");
            let client_id = error["client_id"].as_str().unwrap().to_owned();
            let i: usize = client_id[1..].parse().unwrap();
            talker.say(&room, &format!("m{i}"), &client_id).await;
        }
    }
    assert_eq!(seqs(&mut watcher, 5).await, (2..=6).collect::<Vec<_>>());

    // The frozen replica wakes with whatever it had read before: nothing of
    // it reaches the clients twice.
    chat1.running.signal("CONT").await;
    talker.say(&room, "after", "t7").await;
    assert_eq!(
        seqs(&mut watcher, 1).await,
        vec![7],
        "the next message, nothing repeated"
    );
    watcher.send(json!({"ping": {"nonce": "awake"}})).await;
    assert_eq!(watcher.next_kind("pong").await["nonce"], "awake");

    drop((chat1, chat2));
    watcher.close().await;
    talker.close().await;
    gateway.stop().await;
    stack.stop().await;
}
