//! Chat: rooms, ordered durable messages, replay, presence and limits. On
//! Postgres every test runs two replicas sharing Redis (members sit on
//! different replicas); on SQLite one replica with the in-process bus.

use std::collections::HashSet;

use parley_proto::chat::v1::{
    BanMemberRequest, ChatMessage, CreateRoomRequest, DeleteMessageRequest, DeleteRoomRequest,
    EditMessageRequest, GetChatHistoryRequest, JoinRoomRequest, KickMemberRequest,
    LeaveRoomRequest, ListMyRoomsRequest, ListRoomMembersRequest, MarkReadRequest, MemberAction,
    MuteMemberRequest, OpenDirectRoomRequest, PresenceState, ReactToMessageRequest, ReactionState,
    SendMessageRequest, SetMemberRoleRequest, UnbanMemberRequest, UnmuteMemberRequest,
    UpdateRoomRequest, chat_request::Frame as In, chat_response::Frame as Out,
};
use parley_tests::{
    DatabaseBackend, authed,
    chat::{ChatCluster, room_id},
    on_both_backends,
};
use tonic::Code;

on_both_backends!(
    members_on_both_replicas_receive_the_same_order,
    concurrent_senders_make_one_gap_free_order,
    a_retried_client_id_is_stored_and_delivered_once,
    since_seq_replays_what_was_missed_before_live_messages,
    private_rooms_need_their_password_once,
    presence_and_typing_reach_the_other_members,
    bad_frames_get_error_frames_and_the_stream_stays_open,
    limits_answer_with_resource_exhausted,
    unary_send_and_history_page_through_a_room,
    a_slow_consumer_is_cut_without_delaying_others,
    gateway_streams_carry_many_sessions,
    a_session_id_opened_twice_is_refused,
    unary_edits_deletions_reactions_and_the_room_list,
    unary_moderation_direct_rooms_and_room_changes,
);

fn seqs(messages: &[ChatMessage]) -> Vec<i64> {
    messages.iter().map(|m| m.seq).collect()
}

async fn collect(stream: &mut parley_tests::chat::ChatStream, count: usize) -> Vec<ChatMessage> {
    let mut messages = Vec::with_capacity(count);
    while messages.len() < count {
        messages.push(stream.next_message().await);
    }
    messages
}

async fn members_on_both_replicas_receive_the_same_order(backend: DatabaseBackend) {
    let mut cluster = ChatCluster::start(backend).await;
    let (alice, alice_token) = cluster.stack.signed_up("alice").await;
    let (_, bob_token) = cluster.stack.signed_up("bob").await;
    let room = room_id("order");
    let mut on_one = cluster.connect(0, &alice_token).await;
    let mut on_two = cluster.connect(1, &bob_token).await;
    assert_eq!(on_one.join(&room, 0).await.last_seq, 0);
    on_two.join(&room, 0).await;

    for i in 0..10 {
        on_one
            .say(&room, &format!("from one {i}"), &format!("a-{i}"))
            .await;
        on_two
            .say(&room, &format!("from two {i}"), &format!("b-{i}"))
            .await;
    }
    let seen_by_one = collect(&mut on_one, 20).await;
    let seen_by_two = collect(&mut on_two, 20).await;
    assert_eq!(seqs(&seen_by_one), (1..=20).collect::<Vec<_>>());
    assert_eq!(
        seen_by_one, seen_by_two,
        "both replicas deliver the same messages in the same order"
    );
    let from_alice: Vec<_> = seen_by_one
        .iter()
        .filter(|m| m.sender_id == alice.id)
        .collect();
    assert_eq!(from_alice.len(), 10);
    assert!(
        from_alice.iter().all(|m| m.sender_name == "alice"),
        "the name comes from the token"
    );
    let contents: Vec<_> = from_alice.iter().map(|m| m.content.as_str()).collect();
    let sent: Vec<_> = (0..10).map(|i| format!("from one {i}")).collect();
    assert_eq!(
        contents, sent,
        "one connection's sends are stored in the order it sent them"
    );
    cluster.stop().await;
}

async fn concurrent_senders_make_one_gap_free_order(backend: DatabaseBackend) {
    let mut cluster = ChatCluster::start(backend).await;
    let room = room_id("race");
    let mut tokens = Vec::new();
    for name in [
        "sender0",
        "sender1",
        "sender2",
        "sender3",
        "listener0",
        "listener1",
    ] {
        tokens.push(cluster.stack.signed_up(name).await.1);
    }
    let mut listener_one = cluster.connect(0, &tokens[4]).await;
    let mut listener_two = cluster.connect(1, &tokens[5]).await;
    listener_one.join(&room, 0).await;
    listener_two.join(&room, 0).await;

    let mut senders = Vec::new();
    for (index, token) in tokens[..4].iter().enumerate() {
        let mut stream = cluster.connect(index, token).await;
        stream.join(&room, 0).await;
        let room = room.clone();
        senders.push(tokio::spawn(async move {
            for i in 0..25 {
                stream
                    .say(&room, &format!("{index}:{i}"), &format!("{index}-{i}"))
                    .await;
            }
            // Wait for our own 25 acks so nothing is cut short.
            let mut acks = 0;
            while acks < 25 {
                if let Out::Ack(_) = stream.next().await {
                    acks += 1;
                }
            }
        }));
    }
    for sender in senders {
        sender.await.unwrap();
    }
    let one = collect(&mut listener_one, 100).await;
    let two = collect(&mut listener_two, 100).await;
    assert_eq!(
        seqs(&one),
        (1..=100).collect::<Vec<_>>(),
        "seqs increase by exactly one"
    );
    assert_eq!(one, two, "everyone sees one order");
    let ids: HashSet<_> = one.iter().map(|m| m.id.clone()).collect();
    assert_eq!(ids.len(), 100);
    cluster.stop().await;
}

async fn a_retried_client_id_is_stored_and_delivered_once(backend: DatabaseBackend) {
    let mut cluster = ChatCluster::start(backend).await;
    let (_, alice_token) = cluster.stack.signed_up("alice").await;
    let (_, bob_token) = cluster.stack.signed_up("bob").await;
    let room = room_id("retry");
    let mut alice = cluster.connect(0, &alice_token).await;
    let mut bob = cluster.connect(1, &bob_token).await;
    alice.join(&room, 0).await;
    bob.join(&room, 0).await;

    alice.say(&room, "hello", "c-1").await;
    alice.say(&room, "hello, edited retry", "c-1").await;
    alice.say(&room, "second", "c-2").await;
    let mut acks = Vec::new();
    while acks.len() < 3 {
        if let Out::Ack(ack) = alice.next().await {
            acks.push(ack);
        }
    }
    assert_eq!(acks[0], acks[1], "a retry returns the original ack");
    assert_eq!((acks[0].seq, acks[2].seq), (1, 2));
    let received = collect(&mut bob, 2).await;
    assert_eq!(received[0].content, "hello");
    assert_eq!(
        received[1].content, "second",
        "the retry is not delivered again"
    );

    // The same key over the unary API, on the other replica.
    let mut client = cluster.client(1);
    let retried = client
        .send_message(authed(
            SendMessageRequest {
                room_id: room.clone(),
                content: "again".into(),
                client_id: "c-1".into(),
                reply_to: 0,
                attachments: Vec::new(),
            },
            &alice_token,
        ))
        .await
        .unwrap()
        .into_inner()
        .message
        .unwrap();
    assert_eq!(retried.id, acks[0].message_id);
    assert_eq!(retried.content, "hello");

    let history = history(&cluster, &alice_token, &room, 0, 0).await;
    assert_eq!(seqs(&history.0), [1, 2], "stored once");
    cluster.stop().await;
}

async fn history(
    cluster: &ChatCluster,
    token: &str,
    room: &str,
    before_seq: i64,
    limit: i32,
) -> (Vec<ChatMessage>, bool) {
    let mut stream = cluster
        .client(0)
        .get_chat_history(authed(
            GetChatHistoryRequest {
                room_id: room.into(),
                limit,
                before_seq,
            },
            token,
        ))
        .await
        .unwrap()
        .into_inner();
    let mut messages = Vec::new();
    let mut has_more = false;
    while let Some(page) = stream.message().await.unwrap() {
        messages.extend(page.messages);
        has_more = page.has_more;
    }
    (messages, has_more)
}

async fn since_seq_replays_what_was_missed_before_live_messages(backend: DatabaseBackend) {
    let mut cluster = ChatCluster::start(backend).await;
    let (_, alice_token) = cluster.stack.signed_up("alice").await;
    let (_, bob_token) = cluster.stack.signed_up("bob").await;
    let room = room_id("replay");
    let mut alice = cluster.connect(0, &alice_token).await;
    alice.join(&room, 0).await;
    for i in 1..=5 {
        alice.say(&room, &format!("m{i}"), &format!("m{i}")).await;
    }
    collect(&mut alice, 5).await;

    // Bob saw up to 2 before he went away; he comes back on the other replica.
    let mut bob = cluster.connect(1, &bob_token).await;
    let joined = bob.join(&room, 2).await;
    assert_eq!(joined.last_seq, 5);
    assert!(!joined.replay_truncated);
    let replayed = collect(&mut bob, 3).await;
    assert_eq!(seqs(&replayed), [3, 4, 5]);
    alice.say(&room, "live", "live").await;
    let live = bob.next_message().await;
    assert_eq!(
        (live.seq, live.content.as_str()),
        (6, "live"),
        "no duplicate at the seam"
    );

    // More than CHAT_MAX_REPLAY (20 in tests) missed: the newest 20 come.
    for i in 7..=40 {
        alice.say(&room, &format!("m{i}"), &format!("m{i}")).await;
    }
    collect(&mut alice, 35).await;
    let mut carol = cluster.connect(1, &bob_token).await;
    let joined = carol.join(&room, 1).await;
    assert!(joined.replay_truncated);
    assert_eq!(joined.last_seq, 40);
    assert_eq!(
        seqs(&collect(&mut carol, 20).await),
        (21..=40).collect::<Vec<_>>()
    );
    cluster.stop().await;
}

async fn private_rooms_need_their_password_once(backend: DatabaseBackend) {
    let mut cluster = ChatCluster::start(backend).await;
    let (_, owner_token) = cluster.stack.signed_up("owner").await;
    let (_, guest_token) = cluster.stack.signed_up("guest").await;
    let mut client = cluster.client(0);
    let room = client
        .create_room(authed(
            CreateRoomRequest {
                name: "  Secret plans ".into(),
                password: "hunter22".into(),
            },
            &owner_token,
        ))
        .await
        .unwrap()
        .into_inner()
        .room
        .unwrap();
    assert!(room.private);
    assert_eq!(room.name, "Secret plans");
    assert_eq!(room.short_code.len(), 6);

    let join = |room_id: &str, short_code: &str, password: &str| JoinRoomRequest {
        room_id: room_id.into(),
        short_code: short_code.into(),
        password: password.into(),
    };
    let mut other = cluster.client(1);
    // A missing and a wrong password get one answer, which tells nothing.
    let mut refusals = Vec::new();
    for password in ["", "wrong", "hunter2"] {
        let status = other
            .join_room(authed(join(&room.id, "", password), &guest_token))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied);
        refusals.push(status.message().to_owned());
    }
    assert!(refusals.iter().all(|m| *m == refusals[0]), "{refusals:?}");
    // Guessing is slow: five attempts per user and room, then even the
    // right password waits.
    let (_, prober) = cluster.stack.signed_up("prober").await;
    for attempt in 0..5 {
        let status = other
            .join_room(authed(
                join(&room.id, "", &format!("guess {attempt}")),
                &prober,
            ))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied);
    }
    let limited = other
        .join_room(authed(join(&room.id, "", "hunter22"), &prober))
        .await
        .unwrap_err();
    assert_eq!(limited.code(), Code::ResourceExhausted, "{limited:?}");
    assert!(limited.message().contains("retry in"), "{limited:?}");
    // Too short a password for a room is refused where it is set.
    let short = client
        .create_room(authed(
            CreateRoomRequest {
                name: "Weak".into(),
                password: "1234567".into(),
            },
            &owner_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(short.code(), Code::InvalidArgument);
    assert!(short.message().contains("at least 8"), "{short:?}");
    for (request, code) in [
        (join(&room.id, &room.short_code, ""), Code::InvalidArgument),
        (join("", "", ""), Code::InvalidArgument),
        (join("", "ZZZZZZ", "x"), Code::NotFound),
        (join("no-such-room", "", "x"), Code::NotFound),
        (join("bad room", "", ""), Code::InvalidArgument),
    ] {
        let status = other
            .join_room(authed(request.clone(), &guest_token))
            .await
            .unwrap_err();
        assert_eq!(status.code(), code, "{request:?}: {status:?}");
    }
    // History of a private room needs membership.
    let status = other
        .get_chat_history(authed(
            GetChatHistoryRequest {
                room_id: room.id.clone(),
                limit: 0,
                before_seq: 0,
            },
            &guest_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);

    let joined = other
        .join_room(authed(
            join("", &room.short_code.to_lowercase(), "hunter22"),
            &guest_token,
        ))
        .await
        .unwrap()
        .into_inner()
        .room
        .unwrap();
    assert_eq!(joined.id, room.id);
    // Membership is remembered: no password on the stream now.
    let mut stream = cluster.connect(1, &guest_token).await;
    stream.join(&room.id, 0).await;
    // The owner is a member from the start.
    let mut owner = cluster.connect(0, &owner_token).await;
    owner.join(&room.id, 0).await;

    other
        .leave_room(authed(
            LeaveRoomRequest {
                room_id: room.id.clone(),
            },
            &guest_token,
        ))
        .await
        .unwrap();
    let status = other
        .join_room(authed(join(&room.id, "", ""), &guest_token))
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        Code::PermissionDenied,
        "after leaving, the password is needed again"
    );
    cluster.stop().await;
}

async fn presence_and_typing_reach_the_other_members(backend: DatabaseBackend) {
    let mut cluster = ChatCluster::start(backend).await;
    let (alice, alice_token) = cluster.stack.signed_up("alice").await;
    let (bob, bob_token) = cluster.stack.signed_up("bob").await;
    let room = room_id("presence");
    let mut on_one = cluster.connect(0, &alice_token).await;
    let joined = on_one.join(&room, 0).await;
    let names: Vec<_> = joined.members.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["alice"], "members include the joining user");

    let mut on_two = cluster.connect(1, &bob_token).await;
    let joined = on_two.join(&room, 0).await;
    let names: Vec<_> = joined.members.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["alice", "bob"]);
    let presence = on_one
        .next_matching(|frame| match frame {
            Out::Presence(presence) => Some(presence),
            _ => None,
        })
        .await;
    assert_eq!(
        (presence.user_id.as_str(), presence.name.as_str()),
        (bob.id.as_str(), "bob")
    );
    assert_eq!(presence.state, PresenceState::Joined as i32);

    // A second connection of bob is not news.
    let mut bob_again = cluster.connect(0, &bob_token).await;
    bob_again.join(&room, 0).await;

    let members = cluster
        .client(1)
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
    assert_eq!(members.len(), 2, "each user once: {members:?}");

    on_two
        .send_frame(In::Typing(parley_proto::chat::v1::Typing {
            room_id: room.clone(),
        }))
        .await;
    let typing = on_one
        .next_matching(|frame| match frame {
            Out::Typing(typing) => Some(typing),
            Out::Presence(presence) => panic!("no presence for a second connection: {presence:?}"),
            _ => None,
        })
        .await;
    assert_eq!(typing.name, "bob");
    // Bob's other connection does not hear his own typing: a ping answers first.
    bob_again
        .send_frame(In::Ping(parley_proto::chat::v1::Ping {
            nonce: "n1".into(),
        }))
        .await;
    match bob_again.next().await {
        Out::Pong(pong) => assert_eq!(pong.nonce, "n1"),
        other => panic!("expected only the pong, got {other:?}"),
    }

    // Bob leaves on both connections: one `left` presence for alice.
    bob_again.close();
    on_two
        .send_frame(In::Leave(parley_proto::chat::v1::Leave {
            room_id: room.clone(),
        }))
        .await;
    let left = on_two
        .next_matching(|frame| match frame {
            Out::Left(left) => Some(left),
            _ => None,
        })
        .await;
    assert_eq!(left.room_id, room);
    let presence = on_one
        .next_matching(|frame| match frame {
            Out::Presence(presence) => Some(presence),
            _ => None,
        })
        .await;
    assert_eq!(
        (presence.user_id.as_str(), presence.state),
        (bob.id.as_str(), PresenceState::Left as i32)
    );
    let _ = alice;
    cluster.stop().await;
}

fn error_of(frame: Out) -> parley_proto::chat::v1::Error {
    match frame {
        Out::Error(error) => error,
        other => panic!("expected an error frame, got {other:?}"),
    }
}

async fn bad_frames_get_error_frames_and_the_stream_stays_open(backend: DatabaseBackend) {
    let mut cluster = ChatCluster::start(backend).await;
    let (_, token) = cluster.stack.signed_up("alice").await;
    let (_, other_token) = cluster.stack.signed_up("mallory").await;
    let room = room_id("errors");
    let mut stream = cluster.connect(0, &token).await;

    stream.say(&room, "not joined yet", "c-0").await;
    let error = error_of(stream.next().await);
    assert_eq!(
        (
            error.code.as_str(),
            error.client_id.as_str(),
            error.room_id.as_str()
        ),
        ("FAILED_PRECONDITION", "c-0", room.as_str())
    );

    stream.join(&room, 0).await;
    for (content, client_id) in [("", "c-1"), (" \n ", "c-2"), (&*"x".repeat(4097), "c-3")] {
        stream.say(&room, content, client_id).await;
        let error = error_of(stream.next().await);
        assert_eq!(
            (error.code.as_str(), error.client_id.as_str()),
            ("INVALID_ARGUMENT", client_id)
        );
    }
    stream
        .say(&room, &"é".repeat(2048), "exactly-4096-bytes")
        .await;
    assert!(matches!(stream.next().await, Out::Ack(_)));
    assert_eq!(stream.next_message().await.content, "é".repeat(2048));

    stream
        .send_frame(In::Join(parley_proto::chat::v1::Join {
            room_id: "bad/room".into(),
            ..Default::default()
        }))
        .await;
    assert_eq!(error_of(stream.next().await).code, "INVALID_ARGUMENT");
    stream
        .send_frame(In::Join(parley_proto::chat::v1::Join {
            room_id: room.clone(),
            since_seq: -1,
            ..Default::default()
        }))
        .await;
    assert_eq!(error_of(stream.next().await).code, "INVALID_ARGUMENT");
    stream
        .send_frame(In::Typing(parley_proto::chat::v1::Typing {
            room_id: "elsewhere".into(),
        }))
        .await;
    assert_eq!(error_of(stream.next().await).code, "FAILED_PRECONDITION");
    stream
        .send_frame(In::GetChatHistory(GetChatHistoryRequest {
            room_id: room.clone(),
            limit: -1,
            before_seq: 0,
        }))
        .await;
    assert_eq!(error_of(stream.next().await).code, "INVALID_ARGUMENT");
    stream
        .send_frame(In::Refresh(parley_proto::chat::v1::Refresh {
            token: "garbage".into(),
        }))
        .await;
    assert_eq!(error_of(stream.next().await).code, "UNAUTHENTICATED");
    stream
        .send_frame(In::Refresh(parley_proto::chat::v1::Refresh {
            token: other_token,
        }))
        .await;
    assert_eq!(
        error_of(stream.next().await).code,
        "UNAUTHENTICATED",
        "another user's token"
    );
    let fresh = cluster.stack.login("alice").await.access_token;
    stream
        .send_frame(In::Refresh(parley_proto::chat::v1::Refresh {
            token: fresh,
        }))
        .await;
    assert!(matches!(stream.next().await, Out::Refreshed(r) if r.expires_at.is_some()));

    // Still usable after all that.
    stream.say(&room, "still here", "c-9").await;
    assert!(matches!(stream.next().await, Out::Ack(_)));
    assert_eq!(stream.next_message().await.content, "still here");

    // No token, no stream.
    let status = cluster
        .client(0)
        .chat(tokio_stream::iter(
            Vec::<parley_proto::chat::v1::ChatRequest>::new(),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    cluster.stop().await;
}

async fn limits_answer_with_resource_exhausted(backend: DatabaseBackend) {
    let mut cluster = ChatCluster::start_with(backend, |args| {
        args.sends_per_second = 1;
        args.send_burst = 3;
        args.max_rooms_per_session = 2;
        args.join_burst = 5;
        args.joins_per_second = 1;
    })
    .await;
    let (_, token) = cluster.stack.signed_up("alice").await;
    let room = room_id("limits");
    let mut stream = cluster.connect(0, &token).await;
    stream.join(&room, 0).await;
    for i in 0..3 {
        stream.say(&room, "burst", &format!("k{i}")).await;
    }
    // A rejected send costs no token: an invalid one first.
    stream.say(&room, "", "invalid").await;
    stream.say(&room, "one too many", "k3").await;
    let mut acks = 0;
    let mut codes = Vec::new();
    while acks + codes.len() < 5 {
        match stream.next().await {
            Out::Ack(_) => acks += 1,
            Out::Error(error) => codes.push((error.client_id, error.code)),
            _ => {}
        }
    }
    assert_eq!(acks, 3);
    assert!(
        codes.contains(&("k3".into(), "RESOURCE_EXHAUSTED".into())),
        "{codes:?}"
    );
    // A retry of a stored send is answered even over the rate.
    stream.say(&room, "burst", "k0").await;
    let ack = stream
        .next_matching(|frame| match frame {
            Out::Ack(ack) => Some(ack),
            Out::Error(error) => panic!("a retry is not rate limited: {error:?}"),
            _ => None,
        })
        .await;
    assert_eq!((ack.client_id.as_str(), ack.seq), ("k0", 1));
    // The unary API shares the bucket.
    let status = cluster
        .client(0)
        .send_message(authed(
            SendMessageRequest {
                room_id: room.clone(),
                content: "over".into(),
                client_id: String::new(),
                reply_to: 0,
                attachments: Vec::new(),
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);

    stream.join(&room_id("second"), 0).await;
    stream
        .send_frame(In::Join(parley_proto::chat::v1::Join {
            room_id: room_id("third"),
            ..Default::default()
        }))
        .await;
    let error = stream
        .next_matching(|frame| match frame {
            Out::Error(error) => Some(error),
            _ => None,
        })
        .await;
    assert_eq!(error.code, "RESOURCE_EXHAUSTED");
    // Joining a room again is not another room.
    stream.join(&room, 0).await;

    // Joins have a bucket of their own, per user: the burst, then one a
    // second, and the refusal says when to come back.
    let (_, bob) = cluster.stack.signed_up("bob").await;
    let started = std::time::Instant::now();
    let mut joined = 0;
    let refused = loop {
        assert!(joined < 30, "joins are never refused");
        let result = cluster
            .client(0)
            .join_room(authed(
                JoinRoomRequest {
                    room_id: room_id(&format!("joins-{joined}")),
                    ..Default::default()
                },
                &bob,
            ))
            .await;
        match result {
            Ok(_) => joined += 1,
            Err(status) => break status,
        }
    };
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("too many joins") && refused.message().contains("retry in"),
        "{refused:?}"
    );
    // The burst is honoured; beyond it, at most one more per second passed.
    let refilled = started.elapsed().as_secs() + 1;
    assert!(
        (5..=5 + refilled).contains(&joined),
        "{joined} joins before the refusal"
    );
    cluster.stop().await;
}

async fn unary_send_and_history_page_through_a_room(backend: DatabaseBackend) {
    let mut cluster = ChatCluster::start(backend).await;
    let (_, token) = cluster.stack.signed_up("bot").await;
    let (_, stranger) = cluster.stack.signed_up("stranger").await;
    let room = room_id("history");
    let mut client = cluster.client(0);
    let status = client
        .send_message(authed(
            SendMessageRequest {
                room_id: room.clone(),
                content: "hi".into(),
                client_id: String::new(),
                reply_to: 0,
                attachments: Vec::new(),
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "join first");
    let joined = client
        .join_room(authed(
            JoinRoomRequest {
                room_id: room.clone(),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner()
        .room
        .unwrap();
    assert!(!joined.private);
    assert_eq!((joined.id.as_str(), joined.last_seq), (room.as_str(), 0));
    for i in 1..=120 {
        let message = client
            .send_message(authed(
                SendMessageRequest {
                    room_id: room.clone(),
                    content: format!("n{i}"),
                    client_id: String::new(),
                    reply_to: 0,
                    attachments: Vec::new(),
                },
                &token,
            ))
            .await
            .unwrap()
            .into_inner()
            .message
            .unwrap();
        assert_eq!(message.seq, i);
        assert_eq!(message.client_id, "");
    }
    let (latest, has_more) = history(&cluster, &stranger, &room, 0, 0).await;
    assert_eq!(
        seqs(&latest),
        (71..=120).collect::<Vec<_>>(),
        "default 50, newest last, readable by anyone"
    );
    assert!(has_more);
    let (page, has_more) = history(&cluster, &token, &room, 71, 1000).await;
    assert_eq!(
        seqs(&page),
        (1..=70).collect::<Vec<_>>(),
        "limit capped at 200, before_seq exclusive"
    );
    assert!(!has_more);
    let (page, has_more) = history(&cluster, &token, &room, 11, 10).await;
    assert_eq!(
        (seqs(&page), has_more),
        ((1..=10).collect::<Vec<_>>(), false)
    );
    let status = cluster
        .client(1)
        .get_chat_history(authed(
            GetChatHistoryRequest {
                room_id: room_id("nowhere"),
                limit: 0,
                before_seq: 0,
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    cluster.stop().await;
}

async fn a_slow_consumer_is_cut_without_delaying_others(backend: DatabaseBackend) {
    let mut cluster = ChatCluster::start_with(backend, |args| args.stream_queue = 64).await;
    let (_, sender_token) = cluster.stack.signed_up("sender").await;
    let (_, fast_token) = cluster.stack.signed_up("fast").await;
    let (_, slow_token) = cluster.stack.signed_up("slow").await;
    let room = room_id("slow");
    let mut sender = cluster.connect(0, &sender_token).await;
    let mut fast = cluster.connect(1, &fast_token).await;
    // The slow client's connection has small HTTP/2 windows, so what it
    // does not read stays on the server.
    let narrow =
        tonic::transport::Endpoint::from_shared(format!("http://{}", cluster.replica(1).addr))
            .unwrap()
            .initial_stream_window_size(Some(16 * 1024))
            .initial_connection_window_size(Some(16 * 1024))
            .connect()
            .await
            .unwrap();
    let mut slow = parley_tests::chat::ChatStream::open(
        parley_proto::chat::v1::chat_service_client::ChatServiceClient::new(narrow),
        &slow_token,
    )
    .await;
    sender.join(&room, 0).await;
    fast.join(&room, 0).await;
    slow.join(&room, 0).await;

    // Large messages fill the transport's buffers quickly; then the slow
    // stream's own queue.
    const COUNT: usize = 600;
    let fast_reader = tokio::spawn(async move { collect(&mut fast, COUNT).await });
    let content = "y".repeat(4000);
    for i in 0..COUNT {
        sender.say(&room, &content, &format!("{i}")).await;
        // The sender reads its own ack and message, as a client would.
        let mut answers = 0;
        while answers < 2 {
            if matches!(sender.next().await, Out::Ack(_) | Out::Message(_)) {
                answers += 1;
            }
        }
    }
    let received = fast_reader.await.unwrap();
    assert_eq!(received.len(), COUNT, "the fast member gets everything");
    assert_eq!(received.last().map(|m| m.seq), Some(COUNT as i64));

    // The slow member, reading only now, finds its stream cut with a status
    // it can act on.
    let ended = loop {
        match slow.try_next().await {
            Ok(_) => continue,
            Err(status) => break status,
        }
    };
    assert_eq!(ended.code(), Code::ResourceExhausted, "{ended:?}");
    assert!(ended.message().contains("since_seq"));
    // It resumes where it stopped.
    let mut resumed = cluster.connect(1, &slow_token).await;
    let joined = resumed.join(&room, COUNT as i64 - 5).await;
    assert_eq!(joined.last_seq, COUNT as i64);
    assert_eq!(
        seqs(&collect(&mut resumed, 5).await),
        ((COUNT as i64 - 4)..=COUNT as i64).collect::<Vec<_>>()
    );
    cluster.stop().await;
}

async fn gateway_streams_carry_many_sessions(backend: DatabaseBackend) {
    use parley_proto::chat::v1::{
        ChatRequest, CloseSession, GatewayStreamRequest, OpenSession, SessionRequest,
        gateway_stream_request::Kind as GwIn, gateway_stream_response::Kind as GwOut,
    };
    let mut cluster = ChatCluster::start(backend).await;
    let (alice, alice_token) = cluster.stack.signed_up("alice").await;
    let (bob, bob_token) = cluster.stack.signed_up("bob").await;
    let (_, carol_token) = cluster.stack.signed_up("carol").await;
    let room = room_id("gateway");

    let (requests, receiver) = tokio::sync::mpsc::channel(64);
    let mut responses = cluster
        .client(0)
        .gateway_stream(tokio_stream::wrappers::ReceiverStream::new(receiver))
        .await
        .expect("the stream needs no token of its own")
        .into_inner();
    let send = |kind: GwIn| {
        let requests = requests.clone();
        async move {
            requests
                .send(GatewayStreamRequest { kind: Some(kind) })
                .await
                .unwrap()
        }
    };
    let frame = |session_id: u64, frame: In| {
        GwIn::SessionRequest(SessionRequest {
            session_id,
            request: Some(ChatRequest { frame: Some(frame) }),
            ..Default::default()
        })
    };
    let join = |room: &str| {
        In::Join(parley_proto::chat::v1::Join {
            room_id: room.into(),
            ..Default::default()
        })
    };
    send(GwIn::OpenSession(OpenSession {
        session_id: 1,
        access_token: alice_token,
    }))
    .await;
    send(GwIn::OpenSession(OpenSession {
        session_id: 2,
        access_token: bob_token,
    }))
    .await;
    send(GwIn::OpenSession(OpenSession {
        session_id: 3,
        access_token: "bad".into(),
    }))
    .await;
    send(frame(1, join(&room))).await;
    send(frame(2, join(&room))).await;

    async fn next_kind(
        responses: &mut tonic::Streaming<parley_proto::chat::v1::GatewayStreamResponse>,
    ) -> GwOut {
        tokio::time::timeout(parley_tests::chat::FRAME_TIMEOUT, responses.message())
            .await
            .expect("a frame in time")
            .expect("the stream is open")
            .expect("the stream has not ended")
            .kind
            .expect("a kind")
    }
    let mut joined = HashSet::new();
    let mut closed = None;
    while joined.len() < 2 || closed.is_none() {
        match next_kind(&mut responses).await {
            GwOut::SessionResponse(response) => {
                if let Some(Out::Joined(_)) = response.response.and_then(|r| r.frame) {
                    joined.insert(response.session_id);
                }
            }
            GwOut::SessionClosed(session) => closed = Some(session),
            GwOut::RoomEvent(_) => {}
        }
    }
    let closed = closed.unwrap();
    assert_eq!(
        (closed.session_id, closed.code.as_str()),
        (3, "UNAUTHENTICATED")
    );

    // Carol, elsewhere, sends: the gateway gets it once for both sessions.
    let mut carol = cluster.connect(1, &carol_token).await;
    carol.join(&room, 0).await;
    carol.say(&room, "to the gateway", "g1").await;
    let mut message_events = 0;
    loop {
        match next_kind(&mut responses).await {
            GwOut::RoomEvent(event) => {
                assert_eq!(event.room_id, room);
                if let Some(Out::Message(message)) = event.response.and_then(|r| r.frame) {
                    assert_eq!(message.content, "to the gateway");
                    message_events += 1;
                    break;
                }
            }
            GwOut::SessionResponse(_) => {}
            GwOut::SessionClosed(closed) => panic!("unexpected close: {closed:?}"),
        }
    }
    assert_eq!(message_events, 1);

    // Frames answer the session that sent them.
    send(frame(
        2,
        In::Ping(parley_proto::chat::v1::Ping { nonce: "p".into() }),
    ))
    .await;
    loop {
        if let GwOut::SessionResponse(response) = next_kind(&mut responses).await
            && let Some(Out::Pong(pong)) = response.response.and_then(|r| r.frame)
        {
            assert_eq!((response.session_id, pong.nonce.as_str()), (2, "p"));
            break;
        }
    }
    // Closing a session ends its presence: carol hears bob leave.
    send(GwIn::CloseSession(CloseSession { session_id: 2 })).await;
    let presence = carol
        .next_matching(|frame| match frame {
            Out::Presence(p) if p.state == PresenceState::Left as i32 => Some(p),
            _ => None,
        })
        .await;
    assert_eq!(presence.user_id, bob.id);

    let _ = alice;
    drop(requests);
    cluster.stop().await;
}

/// A session id opened again on a gateway stream while its join is still
/// running is refused, and the session it named ends, so the join can never
/// become another user's membership (a second user could otherwise send to
/// a private room they never joined).
async fn a_session_id_opened_twice_is_refused(backend: DatabaseBackend) {
    use parley_proto::chat::v1::{
        ChatRequest, GatewayStreamRequest, OpenSession, SessionRequest,
        gateway_stream_request::Kind as GwIn, gateway_stream_response::Kind as GwOut,
    };
    let mut cluster = ChatCluster::start(backend).await;
    let (_, alice_token) = cluster.stack.signed_up("alice").await;
    let (_, mallory_token) = cluster.stack.signed_up("mallory").await;
    let room = room_id("private");
    let created = cluster
        .client(0)
        .create_room(authed(
            parley_proto::chat::v1::CreateRoomRequest {
                name: "secret plans".into(),
                password: "a long enough password".into(),
            },
            &alice_token,
        ))
        .await
        .unwrap()
        .into_inner()
        .room
        .unwrap();
    let _ = room;
    let frame = |frame: In| GatewayStreamRequest {
        kind: Some(GwIn::SessionRequest(SessionRequest {
            session_id: 7,
            request: Some(ChatRequest { frame: Some(frame) }),
            ..Default::default()
        })),
    };
    let open = |token: &str| GatewayStreamRequest {
        kind: Some(GwIn::OpenSession(OpenSession {
            session_id: 7,
            access_token: token.to_owned(),
        })),
    };
    // Alice's join and mallory's open of the same id arrive together, so
    // the open lands while the join runs; then mallory sends.
    let requests = vec![
        open(&alice_token),
        frame(In::Join(parley_proto::chat::v1::Join {
            room_id: created.id.clone(),
            ..Default::default()
        })),
        open(&mallory_token),
        frame(In::Send(parley_proto::chat::v1::Send {
            room_id: created.id.clone(),
            content: "mallory was here".into(),
            client_id: "m1".into(),
            ..Default::default()
        })),
    ];
    let mut responses = cluster
        .client(0)
        .gateway_stream(tokio_stream::StreamExt::chain(
            tokio_stream::iter(requests),
            tokio_stream::pending(),
        ))
        .await
        .unwrap()
        .into_inner();
    let mut codes = Vec::new();
    while codes.len() < 2 {
        let next = tokio::time::timeout(parley_tests::chat::FRAME_TIMEOUT, responses.message())
            .await
            .expect("a frame in time")
            .expect("the stream is open")
            .expect("the stream has not ended");
        match next.kind.expect("a kind") {
            GwOut::SessionClosed(closed) => codes.push(closed.code),
            GwOut::SessionResponse(response) => {
                if let Some(Out::Ack(ack)) = response.response.and_then(|r| r.frame) {
                    panic!("mallory's send was stored: {ack:?}");
                }
            }
            GwOut::RoomEvent(_) => {}
        }
    }
    // The second open ends the session; mallory's frame finds none.
    assert_eq!(codes, ["FAILED_PRECONDITION", "FAILED_PRECONDITION"]);
    let history = cluster
        .client(0)
        .get_chat_history(authed(
            GetChatHistoryRequest {
                room_id: created.id.clone(),
                ..Default::default()
            },
            &alice_token,
        ))
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap()
        .map(|page| page.messages.len())
        .unwrap_or(0);
    assert_eq!(history, 0, "nothing was stored in alice's private room");
    cluster.stop().await;
}

/// `GatewayStream` is for gateways: with `GATEWAY_STREAM_SECRET` set, a
/// stream without the secret, or with another, is refused, even from this
/// host; with it, sessions open as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_streams_need_the_gateway_secret() {
    use parley_proto::chat::v1::{
        GatewayStreamRequest, OpenSession, gateway_stream_request::Kind as GwIn,
        gateway_stream_response::Kind as GwOut,
    };
    let mut stack = parley_tests::TestStack::start(DatabaseBackend::Sqlite).await;
    let mut args = parley_tests::chat::test_args(&stack, None);
    args.gateway_stream_secret = Some("the gateways' secret".into());
    let replica = parley_tests::chat::ChatReplica::start(&stack, args).await;
    let (_, token) = stack.signed_up("alice").await;
    let open = move || {
        tokio_stream::iter([GatewayStreamRequest {
            kind: Some(GwIn::OpenSession(OpenSession {
                session_id: 1,
                access_token: token.clone(),
            })),
        }])
    };
    for secret in [None, Some("a guess")] {
        let mut request = tonic::Request::new(tokio_stream::StreamExt::chain(
            open(),
            tokio_stream::pending(),
        ));
        if let Some(secret) = secret {
            request.metadata_mut().insert(
                parley_runtime::token::GATEWAY_SECRET_HEADER,
                secret.parse().unwrap(),
            );
        }
        let refused = replica
            .client
            .clone()
            .gateway_stream(request)
            .await
            .unwrap_err();
        assert_eq!(
            refused.code(),
            tonic::Code::Unauthenticated,
            "{secret:?}: {refused:?}"
        );
    }
    // With the secret: the session opens and answers a ping.
    let ping = GatewayStreamRequest {
        kind: Some(GwIn::SessionRequest(
            parley_proto::chat::v1::SessionRequest {
                session_id: 1,
                request: Some(parley_proto::chat::v1::ChatRequest {
                    frame: Some(In::Ping(parley_proto::chat::v1::Ping { nonce: "n".into() })),
                }),
                ..Default::default()
            },
        )),
    };
    let mut request = tonic::Request::new(tokio_stream::StreamExt::chain(
        tokio_stream::StreamExt::chain(open(), tokio_stream::iter([ping])),
        tokio_stream::pending(),
    ));
    request.metadata_mut().insert(
        parley_runtime::token::GATEWAY_SECRET_HEADER,
        "the gateways' secret".parse().unwrap(),
    );
    let mut responses = replica
        .client
        .clone()
        .gateway_stream(request)
        .await
        .unwrap()
        .into_inner();
    let answer = tokio::time::timeout(parley_tests::chat::FRAME_TIMEOUT, responses.message())
        .await
        .expect("an answer in time")
        .unwrap()
        .unwrap();
    match answer.kind {
        Some(GwOut::SessionResponse(response)) => assert!(
            matches!(response.response.and_then(|r| r.frame), Some(Out::Pong(_))),
            "a pong"
        ),
        other => panic!("expected a pong, got {other:?}"),
    }
    replica.stop().await;
    stack.stop().await;
}

/// Sessions are capped per user on a replica (over `Chat` streams and
/// gateway streams alike) and per gateway stream: one more is
/// RESOURCE_EXHAUSTED, and a closed session gives its place back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_capped_per_user_and_per_stream() {
    use parley_proto::chat::v1::{
        GatewayStreamRequest, OpenSession, gateway_stream_request::Kind as GwIn,
        gateway_stream_response::Kind as GwOut,
    };
    let mut stack = parley_tests::TestStack::start(DatabaseBackend::Sqlite).await;
    let mut args = parley_tests::chat::test_args(&stack, None);
    args.max_sessions_per_user = 2;
    args.max_sessions_per_stream = 3;
    let replica = parley_tests::chat::ChatReplica::start(&stack, args).await;
    let (_, alice) = stack.signed_up("alice").await;
    let (_, bob) = stack.signed_up("bob").await;
    let (_, carol) = stack.signed_up("carol").await;
    let (_, dave) = stack.signed_up("dave").await;

    // Two `Chat` streams of alice's; a third is refused.
    let first = parley_tests::chat::ChatStream::open(replica.client.clone(), &alice).await;
    let second = parley_tests::chat::ChatStream::open(replica.client.clone(), &alice).await;
    let third = replica
        .client
        .clone()
        .chat(authed(tokio_stream::pending(), &alice))
        .await
        .unwrap_err();
    assert_eq!(third.code(), tonic::Code::ResourceExhausted, "{third:?}");

    // A gateway stream: bob's third session is refused, and the stream's
    // fourth; every other opens (carol's answers a ping).
    let (requests, receiver) = tokio::sync::mpsc::channel(16);
    let mut responses = replica
        .client
        .clone()
        .gateway_stream(tokio_stream::wrappers::ReceiverStream::new(receiver))
        .await
        .unwrap()
        .into_inner();
    let open = |id: u64, token: &str| GatewayStreamRequest {
        kind: Some(GwIn::OpenSession(OpenSession {
            session_id: id,
            access_token: token.to_owned(),
        })),
    };
    for (id, token) in [(1, &bob), (2, &bob), (3, &bob), (4, &carol), (5, &dave)] {
        requests.send(open(id, token)).await.unwrap();
    }
    requests
        .send(GatewayStreamRequest {
            kind: Some(GwIn::SessionRequest(
                parley_proto::chat::v1::SessionRequest {
                    session_id: 4,
                    request: Some(parley_proto::chat::v1::ChatRequest {
                        frame: Some(In::Ping(parley_proto::chat::v1::Ping { nonce: "c".into() })),
                    }),
                    ..Default::default()
                },
            )),
        })
        .await
        .unwrap();
    let mut closed = Vec::new();
    let mut pong = false;
    while closed.len() < 2 || !pong {
        let next = tokio::time::timeout(parley_tests::chat::FRAME_TIMEOUT, responses.message())
            .await
            .expect("a frame in time")
            .unwrap()
            .unwrap();
        match next.kind {
            Some(GwOut::SessionClosed(session)) => closed.push((session.session_id, session.code)),
            Some(GwOut::SessionResponse(response)) => {
                pong |= response.session_id == 4
                    && matches!(response.response.and_then(|r| r.frame), Some(Out::Pong(_)));
            }
            _ => {}
        }
    }
    assert_eq!(
        closed,
        [
            (3, "RESOURCE_EXHAUSTED".to_owned()),
            (5, "RESOURCE_EXHAUSTED".to_owned())
        ],
        "bob past his two, then the stream past its three"
    );
    drop((first, second, requests));
    replica.stop().await;
    stack.stop().await;
}

/// Joins and leaves, typing and rooms made by joining are bounded per
/// user: past `CHAT_MAX_ROOMS_PER_CREATOR` a join of an unknown id is
/// refused (a known room still opens), past the join burst joins are
/// RESOURCE_EXHAUSTED, and a typing flood reaches others only in part.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_typing_and_rooms_made_by_joining_are_bounded() {
    let mut stack = parley_tests::TestStack::start(DatabaseBackend::Sqlite).await;
    let mut args = parley_tests::chat::test_args(&stack, None);
    args.max_rooms_per_creator = 2;
    let replica = parley_tests::chat::ChatReplica::start(&stack, args).await;
    let (_, alice) = stack.signed_up("alice").await;
    let (_, bob) = stack.signed_up("bob").await;
    let mut chat = replica.client.clone();
    let join = |room: &str, token: &str| {
        authed(
            JoinRoomRequest {
                room_id: room.into(),
                ..JoinRoomRequest::default()
            },
            token,
        )
    };
    let bobs = room_id("bobs");
    chat.join_room(join(&bobs, &bob)).await.unwrap();
    for made in ["made-1", "made-2"] {
        chat.join_room(join(&room_id(made), &alice)).await.unwrap();
    }
    let third = chat
        .join_room(join(&room_id("made-3"), &alice))
        .await
        .unwrap_err();
    assert_eq!(third.code(), tonic::Code::ResourceExhausted, "{third:?}");
    assert!(third.message().contains("at most 2 rooms"), "{third:?}");
    chat.join_room(join(&bobs, &alice))
        .await
        .expect("a known room opens");

    // A typing flood: bob hears some, not all, before alice's message.
    let mut on_alice = parley_tests::chat::ChatStream::open(chat.clone(), &alice).await;
    let mut on_bob = parley_tests::chat::ChatStream::open(chat.clone(), &bob).await;
    on_alice.join(&bobs, 0).await;
    on_bob.join(&bobs, 0).await;
    for _ in 0..50 {
        on_alice
            .send_frame(In::Typing(parley_proto::chat::v1::Typing {
                room_id: bobs.clone(),
            }))
            .await;
    }
    on_alice.say(&bobs, "done typing", "t1").await;
    let mut heard = 0;
    on_bob
        .next_matching(|frame| match frame {
            Out::Typing(_) => {
                heard += 1;
                None
            }
            Out::Message(message) => Some(message),
            _ => None,
        })
        .await;
    assert!(
        (1..=30).contains(&heard),
        "bob heard {heard} of 50 typing notices"
    );

    // Joins past the burst are refused, saying when to retry.
    let mut refused = None;
    for _ in 0..400 {
        if let Err(status) = chat.join_room(join(&bobs, &alice)).await {
            refused = Some(status);
            break;
        }
    }
    let refused = refused.expect("joins are limited");
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    assert!(refused.message().contains("retry in"), "{refused:?}");
    replica.stop().await;
    stack.stop().await;
}

/// The conversation RPCs for bots and grpcurl: each change a timeline
/// event that a member on the other replica receives, each error as
/// documented, and the room list with its unread counts.
async fn unary_edits_deletions_reactions_and_the_room_list(backend: DatabaseBackend) {
    let mut cluster = ChatCluster::start(backend).await;
    let (alice, alice_token) = cluster.stack.signed_up("alice").await;
    let (_, bob_token) = cluster.stack.signed_up("bob").await;
    let room = room_id("unary-events");
    let mut chat = cluster.client(0);
    for token in [&alice_token, &bob_token] {
        chat.join_room(authed(
            JoinRoomRequest {
                room_id: room.clone(),
                ..JoinRoomRequest::default()
            },
            token,
        ))
        .await
        .unwrap();
    }
    let mut watcher = cluster.connect(1, &bob_token).await;
    watcher.join(&room, 0).await;
    let send = |content: &str, reply_to: i64| SendMessageRequest {
        room_id: room.clone(),
        content: content.into(),
        client_id: String::new(),
        reply_to,
        attachments: Vec::new(),
    };
    let first = chat
        .send_message(authed(send("first", 0), &alice_token))
        .await
        .unwrap()
        .into_inner()
        .message
        .unwrap();
    let reply = chat
        .send_message(authed(send("a reply", first.seq), &bob_token))
        .await
        .unwrap()
        .into_inner()
        .message
        .unwrap();
    assert_eq!(reply.reply_to, first.seq);
    let refused = chat
        .send_message(authed(send("to nothing", 77), &bob_token))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);

    let edit = |seq: i64, content: &str, client_id: &str| EditMessageRequest {
        room_id: room.clone(),
        seq,
        content: content.into(),
        client_id: client_id.into(),
    };
    let edited = chat
        .edit_message(authed(edit(first.seq, "first, edited", "e1"), &alice_token))
        .await
        .unwrap()
        .into_inner()
        .event
        .unwrap();
    assert_eq!((edited.target_seq, edited.seq), (first.seq, 3));
    let again = chat
        .edit_message(authed(edit(first.seq, "other", "e1"), &alice_token))
        .await
        .unwrap()
        .into_inner()
        .event
        .unwrap();
    assert_eq!(again.seq, 3, "a retry answers the first event");
    let not_yours = chat
        .edit_message(authed(edit(first.seq, "mine", ""), &bob_token))
        .await
        .unwrap_err();
    assert_eq!(not_yours.code(), Code::PermissionDenied);
    let missing = chat
        .edit_message(authed(edit(99, "x", ""), &alice_token))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);

    let react = |emoji: &str, remove: bool| ReactToMessageRequest {
        room_id: room.clone(),
        seq: reply.seq,
        emoji: emoji.into(),
        remove,
        client_id: String::new(),
    };
    let added = chat
        .react_to_message(authed(react("👍", false), &alice_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(added.event.unwrap().state(), ReactionState::Added);
    let nothing = chat
        .react_to_message(authed(react("👍", false), &alice_token))
        .await
        .unwrap()
        .into_inner();
    assert!(nothing.event.is_none(), "a repeated add makes no event");
    assert_eq!(nothing.seq, reply.seq);
    let too_long = chat
        .react_to_message(authed(react(&"x".repeat(65), false), &alice_token))
        .await
        .unwrap_err();
    assert_eq!(too_long.code(), Code::InvalidArgument);

    let deleted = chat
        .delete_message(authed(
            DeleteMessageRequest {
                room_id: room.clone(),
                seq: reply.seq,
                client_id: String::new(),
            },
            &bob_token,
        ))
        .await
        .unwrap()
        .into_inner()
        .event
        .unwrap();
    assert_eq!(deleted.seq, 5);
    let twice = chat
        .delete_message(authed(
            DeleteMessageRequest {
                room_id: room.clone(),
                seq: reply.seq,
                client_id: String::new(),
            },
            &bob_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(twice.code(), Code::FailedPrecondition);

    // The member on the other replica saw every event, in order.
    let mut seen = Vec::new();
    while seen.len() < 5 {
        let event = watcher
            .next_matching(|frame| match frame {
                Out::Message(m) => Some(("message", m.seq)),
                Out::MessageEdited(e) => Some(("edited", e.seq)),
                Out::Reaction(r) => Some(("reaction", r.seq)),
                Out::MessageDeleted(d) => Some(("deleted", d.seq)),
                _ => None,
            })
            .await;
        seen.push(event);
    }
    assert_eq!(
        seen,
        [
            ("message", 1),
            ("message", 2),
            ("edited", 3),
            ("reaction", 4),
            ("deleted", 5)
        ]
    );

    // Each sender's marker moved to their own message: alice has only
    // bob's reply after hers, and it was deleted; bob has nothing after his.
    let lister = chat.clone();
    let rooms = |token: &str| {
        let mut chat = lister.clone();
        let request = authed(ListMyRoomsRequest {}, token);
        async move {
            chat.list_my_rooms(request)
                .await
                .unwrap()
                .into_inner()
                .rooms
        }
    };
    let listed = rooms(&alice_token).await;
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].unread, listed[0].last_seq), (0, 5));
    assert_eq!(
        listed[0].last_message.as_ref().map(|m| m.deleted),
        Some(true),
        "the newest message, in its current state"
    );
    assert_eq!(
        (rooms(&bob_token).await[0].unread, listed[0].read_seq),
        (0, 1)
    );
    let marked = chat
        .mark_read(authed(
            MarkReadRequest {
                room_id: room.clone(),
                seq: 100,
            },
            &bob_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(marked.read_seq, 5, "no further than the room's newest seq");
    assert_eq!(rooms(&bob_token).await[0].unread, 0);
    let (_, carol_token) = cluster.stack.signed_up("carol").await;
    let outsider = chat
        .mark_read(authed(
            MarkReadRequest {
                room_id: room.clone(),
                seq: 1,
            },
            &carol_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(outsider.code(), Code::FailedPrecondition);
    let outsider_edit = chat
        .edit_message(authed(edit(first.seq, "x", ""), &carol_token))
        .await
        .unwrap_err();
    assert_eq!(outsider_edit.code(), Code::FailedPrecondition);
    assert!(rooms(&carol_token).await.is_empty());
    let (messages, _) = history(&cluster, &alice_token, &room, 0, 10).await;
    assert_eq!(messages[0].content, "first, edited");
    assert_eq!(messages[0].sender_id, alice.id);
    assert!(messages[1].deleted && messages[1].content.is_empty());
    watcher.close();
    cluster.stop().await;
}

async fn unary_moderation_direct_rooms_and_room_changes(backend: DatabaseBackend) {
    let mut cluster = ChatCluster::start(backend).await;
    let (alice, alice_token) = cluster.stack.signed_up("alice").await;
    let (bob, bob_token) = cluster.stack.signed_up("bob").await;
    let (carol, carol_token) = cluster.stack.signed_up("carol").await;
    let room = room_id("unary-moderation");
    let mut chat = cluster.client(0);
    let join = |room: &str| JoinRoomRequest {
        room_id: room.to_owned(),
        ..JoinRoomRequest::default()
    };
    for token in [&alice_token, &bob_token, &carol_token] {
        chat.join_room(authed(join(&room), token)).await.unwrap();
    }
    // Carol's live `Chat` stream on the other replica.
    let mut carols = cluster.connect(1, &carol_token).await;
    carols.join(&room, 0).await;
    let send = |room: &str| SendMessageRequest {
        room_id: room.to_owned(),
        content: "hi".into(),
        ..SendMessageRequest::default()
    };
    let kick = |client_id: &str| KickMemberRequest {
        room_id: room.clone(),
        user_id: carol.id.clone(),
        client_id: client_id.into(),
    };

    let refused = chat
        .kick_member(authed(kick(""), &bob_token))
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        Code::PermissionDenied,
        "a member moderates nobody"
    );
    let promoted = chat
        .set_member_role(authed(
            SetMemberRoleRequest {
                room_id: room.clone(),
                user_id: bob.id.clone(),
                role: "moderator".into(),
                client_id: String::new(),
            },
            &alice_token,
        ))
        .await
        .unwrap()
        .into_inner()
        .event
        .unwrap();
    assert_eq!(
        (promoted.role.as_str(), promoted.by.as_str()),
        ("moderator", alice.id.as_str())
    );

    let muted = chat
        .mute_member(authed(
            MuteMemberRequest {
                room_id: room.clone(),
                user_id: carol.id.clone(),
                duration: Some(prost_types::Duration {
                    seconds: 3600,
                    nanos: 0,
                }),
                client_id: String::new(),
            },
            &bob_token,
        ))
        .await
        .unwrap()
        .into_inner()
        .event
        .unwrap();
    assert!(muted.until.is_some(), "a timed mute ends");
    let refused = chat
        .send_message(authed(send(&room), &carol_token))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    let unmute = UnmuteMemberRequest {
        room_id: room.clone(),
        user_id: carol.id.clone(),
        client_id: String::new(),
    };
    chat.unmute_member(authed(unmute.clone(), &bob_token))
        .await
        .unwrap();
    let refused = chat
        .unmute_member(authed(unmute, &bob_token))
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        Code::FailedPrecondition,
        "not muted any more"
    );
    chat.send_message(authed(send(&room), &carol_token))
        .await
        .unwrap();

    // A kick reaches carol's stream on the other replica: the event, then
    // `left`; a retry answers the same event.
    let kicked = chat
        .kick_member(authed(kick("k1"), &bob_token))
        .await
        .unwrap()
        .into_inner()
        .event
        .unwrap();
    assert_eq!(kicked.action(), MemberAction::Kick);
    let again = chat
        .kick_member(authed(kick("k1"), &bob_token))
        .await
        .unwrap();
    assert_eq!(again.into_inner().event.unwrap().seq, kicked.seq);
    let seen = carols
        .next_matching(|frame| match frame {
            Out::MemberUpdate(update) if update.action() == MemberAction::Kick => Some(update),
            _ => None,
        })
        .await;
    assert_eq!(
        (seen.seq, seen.user_id.as_str()),
        (kicked.seq, carol.id.as_str())
    );
    let left = carols
        .next_matching(|frame| match frame {
            Out::Left(left) => Some(left),
            _ => None,
        })
        .await;
    assert_eq!(left.room_id, room);
    let refused = chat
        .send_message(authed(send(&room), &carol_token))
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        Code::FailedPrecondition,
        "no longer a member"
    );

    let ban = BanMemberRequest {
        room_id: room.clone(),
        user_id: carol.id.clone(),
        duration: None,
        client_id: String::new(),
    };
    chat.ban_member(authed(ban, &alice_token)).await.unwrap();
    let refused = chat
        .join_room(authed(join(&room), &carol_token))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "banned");
    let unban = UnbanMemberRequest {
        room_id: room.clone(),
        user_id: carol.id.clone(),
        client_id: String::new(),
    };
    chat.unban_member(authed(unban, &bob_token)).await.unwrap();
    chat.join_room(authed(join(&room), &carol_token))
        .await
        .unwrap();

    // One direct room per pair; only the two get in.
    let open = |peer: &str| OpenDirectRoomRequest {
        user_id: peer.to_owned(),
        user_name: String::new(),
    };
    let first = chat
        .open_direct_room(authed(open(&bob.id), &alice_token))
        .await
        .unwrap()
        .into_inner();
    let second = cluster
        .client(1)
        .open_direct_room(authed(open(&alice.id), &bob_token))
        .await
        .unwrap()
        .into_inner();
    let (dm, again) = (first.room.unwrap(), second.room.unwrap());
    assert!(first.created && !second.created);
    assert_eq!(
        (dm.id.as_str(), dm.direct, dm.private),
        (again.id.as_str(), true, true)
    );
    assert_eq!(
        (dm.name.as_str(), again.name.as_str()),
        (bob.username.as_str(), alice.username.as_str())
    );
    let refused = chat
        .join_room(authed(join(&dm.id), &carol_token))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    let refused = chat
        .open_direct_room(authed(open(&alice.id), &alice_token))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);

    // Room changes: owners only; a deleted room is gone for good.
    let rename = |name: &str| UpdateRoomRequest {
        room_id: room.clone(),
        name: Some(name.into()),
        password: None,
        client_id: String::new(),
    };
    let refused = chat
        .update_room(authed(rename("Bob's"), &bob_token))
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        Code::PermissionDenied,
        "a moderator is not the owner"
    );
    let updated = chat
        .update_room(authed(rename("Plans"), &alice_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.room.unwrap().name, "Plans");
    assert_eq!(updated.event.unwrap().name, "Plans");
    let delete = DeleteRoomRequest {
        room_id: room.clone(),
    };
    let refused = chat
        .delete_room(authed(delete.clone(), &bob_token))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    chat.delete_room(authed(delete.clone(), &alice_token))
        .await
        .unwrap();
    let refused = chat
        .delete_room(authed(delete, &alice_token))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::NotFound);
    let refused = chat
        .join_room(authed(join(&room), &carol_token))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::NotFound, "a deleted id is not reused");
    cluster.stop().await;
}
