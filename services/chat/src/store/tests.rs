//! The store against both engines: batches with every kind of outcome,
//! and concurrent writers over the same rooms.

use parley_runtime::{
    CancellationToken,
    health::Readiness,
    test_util::{Backend, TestDatabase},
};

use std::sync::Arc;

use super::{ChatStore, WriteOutcome};
use crate::domain::{NewMessage, RoomId};

fn message(room: &str, sender: &str, content: &str, client_id: &str) -> NewMessage {
    NewMessage {
        room_id: RoomId::trusted(room),
        sender_id: Arc::from(sender),
        sender_name: Arc::from("ann"),
        content: content.to_owned(),
        client_id: client_id.to_owned(),
    }
}

fn seq_and_content(outcome: &WriteOutcome) -> (&'static str, i64, String) {
    match outcome {
        WriteOutcome::Stored(m) => ("stored", m.seq, m.content.clone()),
        WriteOutcome::Duplicate(m) => ("duplicate", m.seq, m.content.clone()),
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
            .room_or_create_public(room, "u1")
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
        WriteOutcome::Stored(m) | WriteOutcome::Duplicate(m) => m.id.clone(),
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
            .map(|m| (m.seq, m.content.as_str()))
            .collect::<Vec<_>>(),
        [
            (1, "hello"),
            (2, "lobby two"),
            (3, "same key, other sender")
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
            .room_or_create_public(room, "u1")
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
        let seqs: Vec<i64> = stored.iter().map(|m| m.seq).collect();
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
