//! The store against both engines: batches with every kind of outcome,
//! and concurrent writers over the same rooms.

use parley_runtime::{
    CancellationToken,
    health::Readiness,
    test_util::{Backend, TestDatabase},
};

use std::sync::Arc;

use parley_proto::chat::v1::chat_response::Frame;

use super::{ChatStore, EventOutcome, WriteOutcome};
use crate::{
    domain::{NewMessage, RoomId},
    error::Error,
    moderation::{Action, Role, Until},
    timeline::{Change, NewEvent, StoredEvent},
};

/// The text of a stored message event.
fn content(event: &StoredEvent) -> String {
    event
        .as_message()
        .map(|m| m.content.clone())
        .unwrap_or_default()
}

fn message(room: &str, sender: &str, content: &str, client_id: &str) -> NewMessage {
    NewMessage {
        room_id: RoomId::trusted(room),
        sender_id: Arc::from(sender),
        sender_name: Arc::from("ann"),
        content: content.to_owned(),
        client_id: client_id.to_owned(),
        reply_to: 0,
        attachments: Vec::new(),
    }
}

fn seq_and_content(outcome: &WriteOutcome) -> (&'static str, i64, String) {
    match outcome {
        WriteOutcome::Stored(m) => ("stored", m.seq(), content(m)),
        WriteOutcome::Duplicate(m) => ("duplicate", m.seq(), content(m)),
        WriteOutcome::NoRoom => ("no room", 0, String::new()),
    }
}

/// A store on its own pool over `database`, migrated.
async fn open_store(database: &TestDatabase) -> ChatStore {
    let db = parley_runtime::storage::Database::open(
        &database.url_for("chat"),
        "chat",
        &crate::MIGRATOR,
        &Readiness::new(),
        CancellationToken::new(),
    )
    .await
    .unwrap_or_else(|err| panic!("opening the test database: {err:#}"));
    ChatStore::new(db)
}

/// One batch mixing everything a lane can be handed: two rooms, a
/// retry of a stored key, a key repeated within the batch, a send
/// without a key and a room that does not exist. Both engines take
/// their own path and must agree.
async fn a_mixed_batch_gets_one_outcome_each(backend: Backend) {
    let database = TestDatabase::new(backend).await;
    let store = open_store(&database).await;
    for room in ["lobby", "dev"] {
        store
            .room_or_create_public(room, "u1", None)
            .await
            .unwrap_or_else(|err| panic!("creating {room}: {err}"));
    }

    let first = [message("lobby", "u1", "hello", "k1")];
    let first: Vec<&NewMessage> = first.iter().collect();
    let stored = store.write_batch(&first).await.expect("the first batch");
    assert_eq!(seq_and_content(&stored[0]), ("stored", 1, "hello".into()));

    let batch = [
        message("lobby", "u1", "retried with other text", "k1"),
        message("dev", "u1", "dev one", "k2"),
        message("lobby", "u1", "lobby two", ""),
        message("dev", "u1", "repeated within the batch", "k2"),
        message("nowhere", "u1", "lost", "k3"),
        message("lobby", "u2", "same key, other sender", "k1"),
        message("dev", "u1", "dev two", "k4"),
    ];
    let batch: Vec<&NewMessage> = batch.iter().collect();
    let outcomes = store.write_batch(&batch).await.expect("the mixed batch");
    let seen: Vec<_> = outcomes.iter().map(seq_and_content).collect();
    assert_eq!(
        seen,
        [
            ("duplicate", 1, "hello".into()),
            ("stored", 1, "dev one".into()),
            ("stored", 2, "lobby two".into()),
            ("duplicate", 1, "dev one".into()),
            ("no room", 0, String::new()),
            ("stored", 3, "same key, other sender".into()),
            ("stored", 2, "dev two".into()),
        ]
    );
    let id = |outcome: &WriteOutcome| match outcome {
        WriteOutcome::Stored(m) | WriteOutcome::Duplicate(m) => {
            m.as_message().map(|m| m.id.clone()).unwrap_or_default()
        }
        WriteOutcome::NoRoom => String::new(),
    };
    assert_eq!(
        id(&outcomes[0]),
        id(&stored[0]),
        "a retry answers the original id"
    );
    assert_eq!(
        id(&outcomes[3]),
        id(&outcomes[1]),
        "a repeat answers the first's id"
    );
    let lobby = store.range("lobby", 0, 10).await.expect("lobby's messages");
    assert_eq!(
        lobby
            .iter()
            .map(|m| (m.seq(), content(m)))
            .collect::<Vec<_>>(),
        [
            (1, "hello".to_owned()),
            (2, "lobby two".to_owned()),
            (3, "same key, other sender".to_owned())
        ]
    );
    let rooms = store.last_seqs(&["lobby", "dev"]).await.expect("last seqs");
    assert!(rooms.contains(&("lobby".to_owned(), 3)), "{rooms:?}");
    assert!(rooms.contains(&("dev".to_owned(), 2)), "{rooms:?}");
}

/// Two replicas' writers storing batches that span the same rooms,
/// listed in opposite orders: the rooms are locked in one order, so
/// neither waits on the other in a cycle (Postgres would abort one
/// with a deadlock error), and every room's seqs end up gap-free.
#[tokio::test]
async fn overlapping_batches_on_two_pools_never_deadlock() {
    let database = TestDatabase::new(Backend::Postgres).await;
    // Two pools, as two replicas have.
    let stores = [open_store(&database).await, open_store(&database).await];
    let rooms: Vec<String> = (0..10).map(|i| format!("room-{i}")).collect();
    for room in &rooms {
        stores[0]
            .room_or_create_public(room, "u1", None)
            .await
            .expect("a room");
    }
    const BATCHES: usize = 40;
    let writers = stores.iter().enumerate().map(|(writer, store)| {
        let mut order = rooms.clone();
        if writer == 1 {
            order.reverse();
        }
        async move {
            for batch in 0..BATCHES {
                let messages: Vec<NewMessage> = order
                    .iter()
                    .map(|room| message(room, &format!("u{writer}"), &format!("{batch}"), ""))
                    .collect();
                let messages: Vec<&NewMessage> = messages.iter().collect();
                let outcomes = store
                    .write_batch(&messages)
                    .await
                    .unwrap_or_else(|err| panic!("writer {writer}, batch {batch}: {err}"));
                assert!(
                    outcomes
                        .iter()
                        .all(|o| matches!(o, WriteOutcome::Stored(_)))
                );
            }
        }
    });
    futures_util::future::join_all(writers).await;
    for room in &rooms {
        let stored = stores[0]
            .range(room, 0, 1_000)
            .await
            .expect("the room's messages");
        let seqs: Vec<i64> = stored.iter().map(StoredEvent::seq).collect();
        let expected: Vec<i64> = (1..=2 * BATCHES as i64).collect();
        assert_eq!(seqs, expected, "{room}");
    }
}

#[tokio::test]
async fn a_mixed_batch_on_postgres() {
    a_mixed_batch_gets_one_outcome_each(Backend::Postgres).await;
}

#[tokio::test]
async fn a_mixed_batch_on_sqlite() {
    a_mixed_batch_gets_one_outcome_each(Backend::Sqlite).await;
}

fn change(room: &str, actor: &str, seq: i64, change: Change, client_id: &str) -> NewEvent {
    NewEvent {
        room_id: RoomId::trusted(room),
        target_seq: seq,
        actor_id: Arc::from(actor),
        actor_name: Arc::from(actor),
        actor_admin: false,
        client_id: client_id.to_owned(),
        change,
    }
}

fn edit(text: &str) -> Change {
    Change::Edit {
        content: text.to_owned(),
    }
}

fn react(emoji: &str, remove: bool) -> Change {
    Change::React {
        emoji: emoji.to_owned(),
        remove,
    }
}

/// What an event write made: its seq, "unchanged" with the target's seq,
/// or the error's code.
fn made(outcome: Result<EventOutcome, Error>) -> (String, i64) {
    match outcome {
        Ok(EventOutcome::Stored { event, .. }) => ("stored".into(), event.seq()),
        Ok(EventOutcome::Duplicate { event, .. }) => ("duplicate".into(), event.seq()),
        Ok(EventOutcome::Unchanged { target_seq, .. }) => ("unchanged".into(), target_seq),
        Err(err) => (format!("{:?}", tonic::Status::from(err).code()), 0),
    }
}

/// Edits, deletions and reactions take seqs between messages, change the
/// messages' current state, and come back from a replay after the
/// messages as they were sent; unread counts follow sends, reads and
/// deletions.
async fn timeline_events_on(backend: Backend) {
    let database = TestDatabase::new(backend).await;
    let store = open_store(&database).await;
    let lobby = store
        .room_or_create_public("lobby", "u1", None)
        .await
        .expect("a room");
    for user in ["u1", "u2"] {
        store.add_member(&lobby, user).await.expect("a member");
    }
    let first = [message("lobby", "u1", "hello", "")];
    store
        .write_batch(&first.iter().collect::<Vec<_>>())
        .await
        .expect("the first message");
    let reply = NewMessage {
        reply_to: 1,
        ..message("lobby", "u2", "hi back", "")
    };
    store.write_batch(&[&reply]).await.expect("a reply");

    let write = |event: NewEvent| {
        let store = store.clone();
        async move { made(store.write_event(&event).await) }
    };
    assert_eq!(
        write(change("lobby", "u2", 1, edit("mine now"), "")).await,
        ("PermissionDenied".into(), 0)
    );
    assert_eq!(
        write(change("lobby", "u1", 1, edit("hello!"), "e1")).await,
        ("stored".into(), 3)
    );
    assert_eq!(
        write(change("lobby", "u1", 1, edit("other text"), "e1")).await,
        ("duplicate".into(), 3),
        "a retry answers the first event"
    );
    assert_eq!(
        write(change("lobby", "u1", 2, react("👍", false), "")).await,
        ("stored".into(), 4)
    );
    assert_eq!(
        write(change("lobby", "u1", 2, react("👍", false), "")).await,
        ("unchanged".into(), 2),
        "a repeated add changes nothing"
    );
    assert_eq!(
        write(change("lobby", "u2", 2, react("👍", false), "")).await,
        ("stored".into(), 5)
    );
    assert_eq!(
        write(change("lobby", "u1", 2, react("👍", true), "")).await,
        ("stored".into(), 6)
    );
    assert_eq!(
        write(change("lobby", "u1", 2, react("🎉", true), "")).await,
        ("unchanged".into(), 2),
        "removing nothing changes nothing"
    );
    assert_eq!(
        write(change("lobby", "u2", 1, Change::Delete, "")).await,
        ("PermissionDenied".into(), 0)
    );
    assert_eq!(
        write(change("lobby", "u1", 1, Change::Delete, "d1")).await,
        ("stored".into(), 7)
    );
    assert_eq!(
        write(change("lobby", "u1", 1, edit("back"), "")).await,
        ("FailedPrecondition".into(), 0)
    );
    assert_eq!(
        write(change("lobby", "u1", 99, react("👍", false), "")).await,
        ("NotFound".into(), 0)
    );
    assert_eq!(
        write(change("nowhere", "u1", 1, Change::Delete, "")).await,
        ("NotFound".into(), 0)
    );

    let (history, _) = store.history("lobby", 0, 10).await.expect("history");
    assert_eq!(history.len(), 2, "history holds messages only");
    assert!(history[0].deleted && history[0].content.is_empty());
    assert!(
        history[0].edited_at.is_some(),
        "it was edited before it was deleted"
    );
    assert_eq!(
        (history[1].reply_to, history[1].content.as_str()),
        (1, "hi back")
    );
    let reactions: Vec<_> = history[1]
        .reactions
        .iter()
        .map(|r| (r.emoji.as_str(), r.count, r.user_ids.clone()))
        .collect();
    assert_eq!(reactions, [("👍", 1, vec!["u2".to_owned()])]);

    let replay = store.range("lobby", 0, 100).await.expect("a replay");
    let seqs: Vec<i64> = replay.iter().map(StoredEvent::seq).collect();
    assert_eq!(seqs, (1..=7).collect::<Vec<_>>(), "every event, gap-free");
    let first = replay[0].as_message().expect("a message");
    assert!(
        first.deleted && first.content.is_empty(),
        "a deleted message's text stays gone"
    );
    assert_eq!(content(&replay[1]), "hi back");
    assert!(matches!(replay[2].frame(), Some(Frame::MessageEdited(e)) if e.content == "hello!"));

    // Sending moved each sender's marker to their message: u1 has u2's
    // reply unread; u2 has nothing, having sent the newest message.
    let unread = |user: &'static str| {
        let store = store.clone();
        async move {
            let rooms = store.my_rooms(user).await.expect("my rooms");
            (rooms[0].unread, rooms[0].last_seq, rooms[0].read_seq)
        }
    };
    assert_eq!(unread("u1").await, (1, 7, 1));
    assert_eq!(unread("u2").await, (0, 7, 2));
    assert_eq!(
        store.mark_read("lobby", "u1", 2).await.expect("read"),
        Some((2, true))
    );
    assert_eq!(
        store.mark_read("lobby", "u1", 1).await.expect("read"),
        Some((2, false))
    );
    assert_eq!(unread("u1").await, (0, 7, 2));
    let more = [
        message("lobby", "u2", "one", ""),
        message("lobby", "u2", "two", ""),
    ];
    store
        .write_batch(&more.iter().collect::<Vec<_>>())
        .await
        .expect("more");
    assert_eq!(unread("u1").await, (2, 9, 2));
    let mine = [message("lobby", "u1", "mine", "")];
    store
        .write_batch(&mine.iter().collect::<Vec<_>>())
        .await
        .expect("mine");
    assert_eq!(
        unread("u1").await,
        (0, 10, 10),
        "what you answer, you have read"
    );
    let rooms = store.my_rooms("u1").await.expect("my rooms");
    assert_eq!(
        rooms[0].last_message.as_ref().map(|m| m.content.as_str()),
        Some("mine")
    );
    assert!(store.my_rooms("nobody").await.expect("no rooms").is_empty());

    // At most 20 distinct emoji on one message; a used one still counts.
    for i in 0..19 {
        let outcome = write(change("lobby", "u1", 8, react(&format!("e{i}"), false), "")).await;
        assert_eq!(outcome.0, "stored");
    }
    assert_eq!(
        write(change("lobby", "u2", 8, react("e0", false), ""))
            .await
            .0,
        "stored"
    );
    assert_eq!(
        write(change("lobby", "u1", 8, react("e19", false), ""))
            .await
            .0,
        "stored",
        "the twentieth"
    );
    assert_eq!(
        write(change("lobby", "u1", 8, react("e20", false), "")).await,
        ("InvalidArgument".into(), 0)
    );
}

#[tokio::test]
async fn timeline_events_on_postgres() {
    timeline_events_on(Backend::Postgres).await;
}

#[tokio::test]
async fn timeline_events_on_sqlite() {
    timeline_events_on(Backend::Sqlite).await;
}

fn moderate(room: &str, actor: &str, user: &str, action: Action, until: Until) -> NewEvent {
    change(
        room,
        actor,
        0,
        Change::Moderate {
            user_id: user.to_owned(),
            action,
            until,
        },
        "",
    )
}

/// Roles follow who created a room; moderation changes memberships and
/// sanctions under the rules; a ban's end is read from storage; a deleted
/// room's id is never used again.
async fn moderation_on(backend: Backend) {
    let database = TestDatabase::new(backend).await;
    let store = open_store(&database).await;
    let room = store
        .room_or_create_public("hall", "owner", None)
        .await
        .expect("a room");
    for user in ["owner", "mod", "m1"] {
        store.add_member(&room, user).await.expect("a member");
    }
    let role = |user: &'static str| {
        let store = store.clone();
        async move {
            store
                .member("hall", user)
                .await
                .expect("a read")
                .map(|m| m.role)
        }
    };
    assert_eq!(role("owner").await, Some(Role::Owner));
    assert_eq!(role("m1").await, Some(Role::Member));
    let write = |event: NewEvent| {
        let store = store.clone();
        async move { made(store.write_event(&event).await) }
    };
    let promote = Action::SetRole(Role::Moderator);
    assert_eq!(
        write(moderate("hall", "mod", "m1", Action::Kick, Until::Forever))
            .await
            .0,
        "PermissionDenied",
        "a member kicks nobody"
    );
    assert_eq!(
        write(moderate("hall", "owner", "mod", promote, Until::Forever)).await,
        ("stored".into(), 1)
    );
    assert_eq!(role("mod").await, Some(Role::Moderator));
    let ends = parley_runtime::storage::now_millis() + 60_000;
    assert_eq!(
        write(moderate("hall", "mod", "m1", Action::Ban, Until::At(ends))).await,
        ("stored".into(), 2)
    );
    assert_eq!(role("m1").await, None, "a ban ends the membership");
    assert_eq!(
        store.ban("hall", "m1").await.expect("a read"),
        Some(Until::At(ends))
    );
    assert_eq!(
        write(moderate("hall", "mod", "m1", Action::Kick, Until::Forever))
            .await
            .0,
        "FailedPrecondition",
        "not a member any more"
    );
    assert_eq!(
        write(moderate("hall", "mod", "m1", Action::Unban, Until::Forever)).await,
        ("stored".into(), 3)
    );
    assert_eq!(store.ban("hall", "m1").await.expect("a read"), None);
    // An ended ban is not in force, without anyone lifting it.
    let ended = parley_runtime::storage::now_millis() - 1;
    write(moderate(
        "hall",
        "owner",
        "m1",
        Action::Ban,
        Until::At(ended),
    ))
    .await;
    assert_eq!(store.ban("hall", "m1").await.expect("a read"), None);
    let replayed: Vec<i64> = store
        .range("hall", 0, 10)
        .await
        .expect("a replay")
        .iter()
        .map(StoredEvent::seq)
        .collect();
    assert_eq!(replayed, [1, 2, 3, 4]);

    assert_eq!(
        made(
            store
                .delete_room(&RoomId::trusted("hall"), "mod", false)
                .await
                .map(|()| EventOutcome::Unchanged {
                    target_seq: 0,
                    message_id: String::new()
                })
        )
        .0,
        "PermissionDenied"
    );
    store
        .delete_room(&RoomId::trusted("hall"), "owner", false)
        .await
        .expect("the owner deletes it");
    assert!(store.room("hall").await.expect("a read").is_none());
    assert!(
        store
            .room_or_create_public("hall", "someone", None)
            .await
            .is_err(),
        "a deleted id is not created again"
    );
}

/// Many callers opening the same pair's direct room at once make one room.
async fn one_direct_room_per_pair_on(backend: Backend) {
    let database = TestDatabase::new(backend).await;
    let store = open_store(&database).await;
    let opens = (0..8).map(|n| {
        let store = store.clone();
        let (me, peer) = if n % 2 == 0 { ("a", "b") } else { ("b", "a") };
        async move {
            store
                .open_direct_room(crate::domain::new_room_id(), me, peer)
                .await
                .expect("a direct room")
        }
    });
    let rooms = futures_util::future::join_all(opens).await;
    assert_eq!(rooms.iter().filter(|(_, created)| *created).count(), 1);
    assert!(
        rooms
            .iter()
            .all(|(room, _)| room.id == rooms[0].0.id && room.direct)
    );
    for user in ["a", "b"] {
        assert!(store.is_member(&rooms[0].0.id, user).await.expect("a read"));
    }
}

#[tokio::test]
async fn moderation_on_postgres() {
    moderation_on(Backend::Postgres).await;
}

#[tokio::test]
async fn moderation_on_sqlite() {
    moderation_on(Backend::Sqlite).await;
}

#[tokio::test]
async fn one_direct_room_per_pair_on_postgres() {
    one_direct_room_per_pair_on(Backend::Postgres).await;
}

#[tokio::test]
async fn one_direct_room_per_pair_on_sqlite() {
    one_direct_room_per_pair_on(Backend::Sqlite).await;
}

/// On SQLite a batch looks up its retries before it writes. Another
/// connection's write committed in between must make the batch wait for
/// it, not fail: a deferred transaction that has read gets `SQLITE_BUSY`
/// at once there, whatever the busy timeout.
#[tokio::test]
async fn a_batch_on_sqlite_waits_out_another_writer() {
    let database = TestDatabase::new(Backend::Sqlite).await;
    let store = open_store(&database).await;
    store
        .room_or_create_public("lobby", "u1", None)
        .await
        .unwrap_or_else(|err| panic!("creating the room: {err}"));
    let mut other = store.db.begin_write().await.unwrap();
    sqlx::query("UPDATE room SET name = 'renamed' WHERE room_id = $1")
        .bind("lobby")
        .execute(&mut *other)
        .await
        .unwrap();
    let writer = store.clone();
    let batch = tokio::spawn(async move {
        let hello = message("lobby", "u2", "hello", "c1");
        writer.write_batch(&[&hello]).await
    });
    // Nothing signals that the batch has begun and read; this gives it the
    // time to, so that the commit below lands between its read and its
    // write. The assertion holds however the two interleave.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    other.commit().await.unwrap();
    let outcomes = batch
        .await
        .unwrap()
        .unwrap_or_else(|err| panic!("the batch failed instead of waiting: {err}"));
    assert_eq!(
        seq_and_content(&outcomes[0]),
        ("stored", 1, "hello".to_owned())
    );
}
