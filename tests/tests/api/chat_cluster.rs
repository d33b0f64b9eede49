//! Chat replicas under failure, with real Redis and Postgres: subscriber
//! connections killed mid-traffic, a replica process killed outright, and
//! the metrics that show it.

use std::{process::Stdio, time::Duration};

use parley_proto::chat::v1::{
    ListRoomMembersRequest, PresenceState, React, chat_request::Frame as In,
    chat_response::Frame as Out,
};
use parley_runtime::test_util::RunningBinary;
use parley_tests::{
    DatabaseBackend, TestStack, authed, binary,
    chat::{ChatReplica, ChatStream, REDIS_URL, room_id, test_args},
    http_get,
};

/// A Redis server of this test's own, so killing its connections touches
/// no other test.
struct OwnRedis {
    child: tokio::process::Child,
    url: String,
    port: u16,
}

impl OwnRedis {
    async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Self::start_on(port).await
    }

    /// Kills the server outright (SIGKILL) and starts a new, empty one on
    /// the same port, as a crashed and restarted Redis.
    async fn restart(&mut self) {
        self.child.kill().await.unwrap();
        let fresh = Self::start_on(self.port).await;
        let old = std::mem::replace(self, fresh);
        drop(old);
    }

    /// Stops the server answering anyone for `millis` (`CLIENT PAUSE ALL`).
    async fn pause(&self, millis: u64) {
        let client = redis::Client::open(self.url.as_str()).unwrap();
        let mut connection = client.get_multiplexed_async_connection().await.unwrap();
        redis::cmd("CLIENT")
            .arg("PAUSE")
            .arg(millis)
            .arg("ALL")
            .query_async::<()>(&mut connection)
            .await
            .unwrap();
    }

    async fn start_on(port: u16) -> Self {
        let child = tokio::process::Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server is installed");
        let url = format!("redis://127.0.0.1:{port}");
        let client = redis::Client::open(url.as_str()).unwrap();
        for _ in 0..100 {
            if let Ok(mut connection) = client.get_multiplexed_async_connection().await
                && redis::cmd("PING")
                    .query_async::<String>(&mut connection)
                    .await
                    .is_ok()
            {
                return Self { child, url, port };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("redis-server on port {port} did not come up");
    }

    async fn kill_pubsub_clients(&self) -> i64 {
        let client = redis::Client::open(self.url.as_str()).unwrap();
        let mut connection = client.get_multiplexed_async_connection().await.unwrap();
        redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("pubsub")
            .query_async(&mut connection)
            .await
            .unwrap()
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

fn metric(scrape: &str, name: &str) -> f64 {
    scrape
        .lines()
        .find(|line| line.starts_with(name) && line[name.len()..].starts_with([' ', '{']))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("{name} is not exported"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_redis_subscribers_mid_traffic_loses_nothing() {
    let redis = OwnRedis::start().await;
    let mut stack = TestStack::start(DatabaseBackend::Postgres).await;
    let one = ChatReplica::start(&stack, test_args(&stack, Some(&redis.url))).await;
    let two = ChatReplica::start(&stack, test_args(&stack, Some(&redis.url))).await;
    let (_, alice_token) = stack.signed_up("alice").await;
    let (_, bob_token) = stack.signed_up("bob").await;
    let room = room_id("kill");
    let mut listener = ChatStream::open(one.client.clone(), &alice_token).await;
    listener.join(&room, 0).await;
    let mut sender = ChatStream::open(two.client.clone(), &bob_token).await;
    sender.join(&room, 0).await;

    // Every third write is a reaction to the message before it: timeline
    // events other than messages ride the same path and the same repair.
    const COUNT: i64 = 300;
    let sending = tokio::spawn({
        let room = room.clone();
        async move {
            for i in 1..=COUNT {
                if i % 3 == 0 {
                    sender
                        .send_frame(In::React(React {
                            room_id: room.clone(),
                            seq: i - 1,
                            emoji: format!("e{i}"),
                            remove: false,
                            client_id: format!("k{i}"),
                        }))
                        .await;
                } else {
                    sender.say(&room, &format!("n{i}"), &format!("k{i}")).await;
                }
                // Wait for the ack, so the sends spread over the kills.
                sender
                    .next_matching(|frame| matches!(frame, Out::Ack(_)).then_some(()))
                    .await;
            }
            sender
        }
    });
    let mut killed = 0;
    let mut received = Vec::new();
    while received.len() < COUNT as usize {
        let seq = listener
            .next_matching(|frame| match frame {
                Out::Message(message) => Some(message.seq),
                Out::Reaction(reaction) => Some(reaction.seq),
                Out::Error(error) => panic!("unexpected error frame: {error:?}"),
                _ => None,
            })
            .await;
        if seq % 60 == 0 {
            killed += redis.kill_pubsub_clients().await;
        }
        received.push(seq);
    }
    assert!(killed >= 2, "the subscribers were killed ({killed})");
    assert_eq!(
        received,
        (1..=COUNT).collect::<Vec<_>>(),
        "every message and reaction, once, in order"
    );
    sending.await.unwrap();

    let (_, scrape) = http_get(one.admin, "/metrics").await;
    assert!(metric(&scrape, "parley_chat_bus_reconnects_total") >= 1.0);
    assert!(metric(&scrape, "parley_chat_backfilled_messages_total") >= 0.0);
    one.stop().await;
    two.stop().await;
    stack.stop().await;
}

/// Redis crashes and comes back empty, and later stops answering for
/// longer than chat's timeouts, while one member sends and another, on the
/// other replica, receives: every message arrives once, in order (the hub
/// repairs what the bus lost from storage), and sends never fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_or_paused_mid_traffic_loses_nothing() {
    let mut redis = OwnRedis::start().await;
    let mut stack = TestStack::start(DatabaseBackend::Postgres).await;
    let one = ChatReplica::start(&stack, test_args(&stack, Some(&redis.url))).await;
    let two = ChatReplica::start(&stack, test_args(&stack, Some(&redis.url))).await;
    let (_, alice_token) = stack.signed_up("alice").await;
    let (_, bob_token) = stack.signed_up("bob").await;
    let room = room_id("redis-down");
    let mut listener = ChatStream::open(one.client.clone(), &alice_token).await;
    listener.join(&room, 0).await;
    let mut sender = ChatStream::open(two.client.clone(), &bob_token).await;
    sender.join(&room, 0).await;

    const COUNT: i64 = 150;
    let mut received = Vec::new();
    for i in 1..=COUNT {
        if i == 50 {
            redis.restart().await;
        } else if i == 100 {
            redis.pause(3_000).await;
        }
        sender.say(&room, &format!("n{i}"), &format!("k{i}")).await;
        let ack = sender
            .next_matching(|frame| match frame {
                Out::Ack(ack) => Some(ack.seq),
                Out::Error(error) => panic!("a send failed: {error:?}"),
                _ => None,
            })
            .await;
        assert_eq!(ack, i);
    }
    while received.len() < COUNT as usize {
        received.push(
            listener
                .next_matching(|frame| match frame {
                    Out::Message(message) => Some(message.seq),
                    Out::Error(error) => panic!("unexpected error frame: {error:?}"),
                    _ => None,
                })
                .await,
        );
    }
    assert_eq!(
        received,
        (1..=COUNT).collect::<Vec<_>>(),
        "every message, once, in order"
    );
    one.stop().await;
    two.stop().await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_replicas_members_leave_within_seconds() {
    let mut stack = TestStack::start(DatabaseBackend::Postgres).await;
    let survivor = ChatReplica::start(&stack, test_args(&stack, Some(REDIS_URL))).await;
    let database_url = stack.database_url("chat");
    let auth_url = format!("http://{}", stack.auth_addr);
    let mut doomed = RunningBinary::start(
        &binary("parley-chat"),
        &[
            ("CHAT_GRPC_ADDR", "127.0.0.1:0"),
            ("CHAT_ADMIN_ADDR", "127.0.0.1:0"),
            ("CHAT_DATABASE_URL", database_url.expose()),
            ("CHAT_REDIS_URL", REDIS_URL),
            ("CHAT_BUS_SECRET", parley_tests::chat::BUS_SECRET),
            ("CHAT_PRESENCE_TTL", "1500ms"),
            ("AUTH_URL", &auth_url),
        ],
        1,
    )
    .await;
    let doomed_channel = parley_tests::channel(doomed.grpc_addrs[0]).await;
    parley_tests::wait_until_serving(doomed_channel.clone(), "parley.chat.v1.ChatService").await;

    let (_, alice_token) = stack.signed_up("alice").await;
    let (bob, bob_token) = stack.signed_up("bob").await;
    let room = room_id("crash");
    let mut alice = ChatStream::open(survivor.client.clone(), &alice_token).await;
    alice.join(&room, 0).await;
    let mut bob_stream = ChatStream::open(
        parley_proto::chat::v1::chat_service_client::ChatServiceClient::new(doomed_channel),
        &bob_token,
    )
    .await;
    bob_stream.join(&room, 0).await;
    let joined = alice
        .next_matching(|frame| match frame {
            Out::Presence(p) => Some(p),
            _ => None,
        })
        .await;
    assert_eq!(
        (joined.user_id.as_str(), joined.state),
        (bob.id.as_str(), PresenceState::Joined as i32)
    );

    // SIGKILL: no drain, no goodbye.
    doomed.child.kill().await.unwrap();
    let started = std::time::Instant::now();
    let left = alice
        .next_matching(|frame| match frame {
            Out::Presence(p) => Some(p),
            _ => None,
        })
        .await;
    assert_eq!(
        (left.user_id.as_str(), left.state),
        (bob.id.as_str(), PresenceState::Left as i32)
    );
    let members = survivor
        .client
        .clone()
        .list_room_members(authed(
            ListRoomMembersRequest {
                room_id: room.clone(),
            },
            &alice_token,
        ))
        .await
        .unwrap()
        .into_inner()
        .members;
    let names: Vec<_> = members.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["alice"]);
    eprintln!(
        "the crashed replica's member left after {:?}",
        started.elapsed()
    );
    survivor.stop().await;
    stack.stop().await;
}

/// Publishes an unsigned message event with `seq` to the room's channel,
/// as another replica would, and checks a replica listens.
async fn publish_unsigned(room: &str, seq: i64) {
    use parley_proto::prost::Message as _;
    let forged = parley_proto::chat::v1::RoomEvent {
        room_id: room.to_owned(),
        response: Some(parley_proto::chat::v1::ChatResponse {
            frame: Some(Out::Message(parley_proto::chat::v1::ChatMessage {
                room_id: room.to_owned(),
                seq,
                content: format!("forged {seq}"),
                sender_id: "someone".into(),
                ..Default::default()
            })),
        }),
        except_user_id: String::new(),
    };
    // Another replica's origin, and no signature.
    let mut payload = vec![9u8; 16];
    forged.encode(&mut payload).unwrap();
    let client = redis::Client::open(REDIS_URL).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let receivers: i64 = redis::cmd("PUBLISH")
        .arg(format!("parley:chat:room:{room}"))
        .arg(payload)
        .query_async(&mut connection)
        .await
        .unwrap();
    assert!(receivers >= 1, "the replica listens to the room");
}

/// Events on Redis are signed (`CHAT_BUS_SECRET`): one published by
/// someone without the secret, however well formed, reaches no member,
/// and the room's real next message keeps its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_bus_events_are_not_delivered() {
    let mut stack = TestStack::start(DatabaseBackend::Postgres).await;
    let replica = ChatReplica::start(&stack, test_args(&stack, Some(REDIS_URL))).await;
    let (_, token) = stack.signed_up("alice").await;
    let room = room_id("forged");
    let mut stream = ChatStream::open(replica.client.clone(), &token).await;
    stream.join(&room, 0).await;

    // A message event as a replica would publish it, with no signature.
    publish_unsigned(&room, 1).await;

    // The real first message is the first the member sees, with seq 1.
    stream.say(&room, "real", "r1").await;
    let first = stream.next_message().await;
    assert_eq!((first.seq, first.content.as_str()), (1, "real"));
    stack.stop().await;
    replica.stop().await;
}

/// Without a bus secret anyone who can publish to Redis is believed, but
/// only as far as storage confirms: an event whose `seq` opens a hole is
/// checked against storage, and what storage does not hold (here a
/// forged event at seq 2 and one a million ahead) is dropped instead of
/// delivered or of making the room skip its real messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bus_events_storage_does_not_confirm_are_dropped() {
    let mut stack = TestStack::start(DatabaseBackend::Postgres).await;
    let mut args = test_args(&stack, Some(REDIS_URL));
    args.bus_secret = None;
    let replica = ChatReplica::start(&stack, args).await;
    let (_, token) = stack.signed_up("alice").await;
    let room = room_id("unconfirmed");
    let mut stream = ChatStream::open(replica.client.clone(), &token).await;
    stream.join(&room, 0).await;

    for seq in [2, 1_000_000] {
        publish_unsigned(&room, seq).await;
    }
    // The replica reads the hole back from storage and drops both.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, scrape) = http_get(replica.admin, "/metrics").await;
        let unconfirmed = "parley_chat_unconfirmed_events_total";
        if scrape.contains(unconfirmed) && metric(&scrape, unconfirmed) >= 2.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the forged events were never checked"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The room's real messages keep their seqs and reach the member.
    stream.say(&room, "real one", "r1").await;
    stream.say(&room, "real two", "r2").await;
    let first = stream.next_message().await;
    let second = stream.next_message().await;
    assert_eq!((first.seq, first.content.as_str()), (1, "real one"));
    assert_eq!((second.seq, second.content.as_str()), (2, "real two"));
    stack.stop().await;
    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_metrics_are_exported() {
    let mut stack = TestStack::start(DatabaseBackend::Postgres).await;
    let replica = ChatReplica::start(&stack, test_args(&stack, Some(REDIS_URL))).await;
    let (_, token) = stack.signed_up("alice").await;
    let room = room_id("metrics");
    let mut stream = ChatStream::open(replica.client.clone(), &token).await;
    stream.join(&room, 0).await;
    stream.say(&room, "counted", "m1").await;
    stream.next_message().await;

    let (status, scrape) = http_get(replica.admin, "/metrics").await;
    assert_eq!(status, 200);
    for name in [
        "parley_chat_messages_stored_total",
        "parley_chat_deliveries_total",
        "parley_chat_active_streams",
        "parley_chat_room_subscriptions",
    ] {
        assert!(metric(&scrape, name) >= 1.0, "{name} counts the traffic");
    }
    assert_eq!(metric(&scrape, "parley_chat_bus_connected"), 1.0);
    for name in [
        "parley_chat_bus_reconnects_total",
        "parley_chat_backfilled_messages_total",
    ] {
        metric(&scrape, name);
    }
    assert!(
        scrape.contains("parley_chat_fanout_seconds_bucket{le="),
        "fan-out latency has buckets"
    );
    assert!(
        scrape
            .lines()
            .any(|line| line.starts_with("grpc_server_started_total")
                && line.contains(r#"grpc_method="Chat""#)
                && line.contains(r#"grpc_type="bidi_stream""#)),
        "the Chat stream is counted as a bidi stream"
    );
    assert!(scrape.contains(r#"parley_build_info{service="chat""#));
    drop(stream);
    replica.stop().await;
    stack.stop().await;
}
