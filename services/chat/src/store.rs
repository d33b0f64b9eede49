//! Rooms, memberships and messages. Portable SQL, run on Postgres and
//! SQLite alike.
//!
//! Seqs are taken by bumping `room.last_seq` in the transaction that
//! inserts the messages: the row lock orders concurrent writers of one room
//! across every replica, and a message is never visible without its seq or
//! a seq without its message.

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
    sync::Arc,
};

use parley_proto::chat::v1::ChatMessage;
use parley_runtime::storage::{Database, now_millis, timed, timestamp, unique_violation};
use sqlx::{Row as _, any::AnyRow};

use crate::{
    domain::{NewMessage, Room, StoredMessage},
    error::Error,
};

const ROOM_COLUMNS: &str = "room_id, name, short_code, password_hash, created_at, last_seq";
const MESSAGE_COLUMNS: &str =
    "message_id, room_id, seq, sender_id, sender_name, content, client_id, sent_at";
/// Rows per multi-row `INSERT`: 8 parameters each stays far below the
/// parameter limits of both engines.
const INSERT_CHUNK: usize = 500;
/// Idempotency keys looked up per query.
const LOOKUP_CHUNK: usize = 200;
/// Attempts of a batch that collided with a concurrent retry on another
/// replica (a unique violation on the idempotency key).
const WRITE_ATTEMPTS: usize = 3;

/// What became of one message of a batch.
#[derive(Debug, Clone)]
pub enum WriteOutcome {
    /// Stored now, with this seq.
    Stored(StoredMessage),
    /// A retry: the message stored earlier with the same `client_id`.
    Duplicate(StoredMessage),
    /// The room does not exist.
    NoRoom,
}

/// Reads and writes chat data. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ChatStore {
    db: Database,
}

fn room_from_row(row: &AnyRow) -> Result<Room, sqlx::Error> {
    Ok(Room {
        id: row.try_get("room_id")?,
        name: row.try_get("name")?,
        short_code: row
            .try_get::<Option<String>, _>("short_code")?
            .unwrap_or_default(),
        password_hash: row.try_get("password_hash")?,
        created_at: row.try_get("created_at")?,
        last_seq: row.try_get("last_seq")?,
    })
}

fn message_from_row(row: &AnyRow) -> Result<ChatMessage, sqlx::Error> {
    Ok(ChatMessage {
        id: row.try_get("message_id")?,
        room_id: row.try_get("room_id")?,
        seq: row.try_get("seq")?,
        sender_id: row.try_get("sender_id")?,
        sender_name: row.try_get("sender_name")?,
        content: row.try_get("content")?,
        client_id: row
            .try_get::<Option<String>, _>("client_id")?
            .unwrap_or_default(),
        sent_at: Some(timestamp(row.try_get("sent_at")?)),
    })
}

type IdempotencyKey<'a> = (&'a str, &'a str, &'a str);

fn key_of(message: &NewMessage) -> Option<IdempotencyKey<'_>> {
    (!message.client_id.is_empty()).then(|| {
        (
            &*message.room_id,
            &*message.sender_id,
            message.client_id.as_str(),
        )
    })
}

impl ChatStore {
    /// A store over `db`, already migrated.
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    /// The engine's name as trace attributes spell it (`db.system`).
    pub fn system(&self) -> &'static str {
        match self.db.kind() {
            parley_runtime::config::DatabaseKind::Postgres => "postgresql",
            parley_runtime::config::DatabaseKind::Sqlite => "sqlite",
        }
    }

    /// Stores a room made by `CreateRoom`, with a fresh short code (a new
    /// one is drawn on the rare collision).
    ///
    /// # Errors
    /// Database failures.
    pub async fn create_room(
        &self,
        room_id: String,
        name: String,
        password_hash: Option<String>,
        creator: &str,
    ) -> Result<Room, Error> {
        let created_at = now_millis();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let short_code = crate::domain::new_short_code()?;
            let mut tx = self.db.pool().begin().await?;
            let inserted = sqlx::query(
                "INSERT INTO room (room_id, name, short_code, password_hash, created_by, created_at, last_seq) \
                 VALUES ($1, $2, $3, $4, $5, $6, 0)",
            )
            .bind(&room_id)
            .bind(&name)
            .bind(&short_code)
            .bind(password_hash.clone())
            .bind(creator)
            .bind(created_at)
            .execute(&mut *tx)
            .await;
            match inserted {
                Ok(_) => {}
                Err(err) if unique_violation(&err).is_some() && attempts < 5 => continue,
                Err(err) => return Err(err.into()),
            }
            if password_hash.is_some() {
                sqlx::query(
                    "INSERT INTO room_member (room_id, user_id, joined_at) VALUES ($1, $2, $3)",
                )
                .bind(&room_id)
                .bind(creator)
                .bind(created_at)
                .execute(&mut *tx)
                .await?;
            }
            timed("create_room", tx.commit()).await?;
            return Ok(Room {
                id: room_id,
                name,
                short_code,
                password_hash,
                created_at,
                last_seq: 0,
            });
        }
    }

    /// The public room `room_id`, created (named after its id) if it does
    /// not exist yet; an existing room is returned as it is.
    ///
    /// # Errors
    /// Database failures.
    pub async fn room_or_create_public(&self, room_id: &str, creator: &str) -> Result<Room, Error> {
        if let Some(room) = self.room(room_id).await? {
            return Ok(room);
        }
        timed(
            "create_public_room",
            sqlx::query(
                "INSERT INTO room (room_id, name, short_code, password_hash, created_by, created_at, last_seq) \
                 VALUES ($1, $1, NULL, NULL, $2, $3, 0) ON CONFLICT (room_id) DO NOTHING",
            )
            .bind(room_id)
            .bind(creator)
            .bind(now_millis())
            .execute(self.db.pool()),
        )
        .await?;
        self.room(room_id)
            .await?
            .ok_or_else(|| Error::Internal(anyhow::anyhow!("room {room_id} vanished after insert")))
    }

    /// The room with this id.
    ///
    /// # Errors
    /// Database failures.
    pub async fn room(&self, room_id: &str) -> Result<Option<Room>, Error> {
        let sql = format!("SELECT {ROOM_COLUMNS} FROM room WHERE room_id = $1");
        let row = timed(
            "get_room",
            sqlx::query(&sql)
                .bind(room_id)
                .fetch_optional(self.db.pool()),
        )
        .await?;
        Ok(row.as_ref().map(room_from_row).transpose()?)
    }

    /// The room with this short code.
    ///
    /// # Errors
    /// Database failures.
    pub async fn room_by_code(&self, short_code: &str) -> Result<Option<Room>, Error> {
        let sql = format!("SELECT {ROOM_COLUMNS} FROM room WHERE short_code = $1");
        let row = timed(
            "get_room_by_code",
            sqlx::query(&sql)
                .bind(short_code)
                .fetch_optional(self.db.pool()),
        )
        .await?;
        Ok(row.as_ref().map(room_from_row).transpose()?)
    }

    /// Whether `user_id` is a member of `room_id`.
    ///
    /// # Errors
    /// Database failures.
    pub async fn is_member(&self, room_id: &str, user_id: &str) -> Result<bool, Error> {
        let row = timed(
            "get_member",
            sqlx::query("SELECT 1 AS one FROM room_member WHERE room_id = $1 AND user_id = $2")
                .bind(room_id)
                .bind(user_id)
                .fetch_optional(self.db.pool()),
        )
        .await?;
        Ok(row.is_some())
    }

    /// Makes `user_id` a member of `room_id` (again).
    ///
    /// # Errors
    /// Database failures.
    pub async fn add_member(&self, room_id: &str, user_id: &str) -> Result<(), Error> {
        timed(
            "add_member",
            sqlx::query(
                "INSERT INTO room_member (room_id, user_id, joined_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (room_id, user_id) DO NOTHING",
            )
            .bind(room_id)
            .bind(user_id)
            .bind(now_millis())
            .execute(self.db.pool()),
        )
        .await?;
        Ok(())
    }

    /// Ends a membership.
    ///
    /// # Errors
    /// Database failures.
    pub async fn remove_member(&self, room_id: &str, user_id: &str) -> Result<(), Error> {
        timed(
            "remove_member",
            sqlx::query("DELETE FROM room_member WHERE room_id = $1 AND user_id = $2")
                .bind(room_id)
                .bind(user_id)
                .execute(self.db.pool()),
        )
        .await?;
        Ok(())
    }

    /// Up to `limit` messages with a seq below `before_seq` (0: the newest),
    /// oldest first, and whether older ones exist.
    ///
    /// # Errors
    /// Database failures.
    pub async fn history(
        &self,
        room_id: &str,
        before_seq: i64,
        limit: i64,
    ) -> Result<(Vec<ChatMessage>, bool), Error> {
        let before = if before_seq <= 0 {
            i64::MAX
        } else {
            before_seq
        };
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM message WHERE room_id = $1 AND seq < $2 \
             ORDER BY seq DESC LIMIT $3"
        );
        let rows = timed(
            "history",
            sqlx::query(&sql)
                .bind(room_id)
                .bind(before)
                .bind(limit + 1)
                .fetch_all(self.db.pool()),
        )
        .await?;
        let has_more = i64::try_from(rows.len()).unwrap_or(i64::MAX) > limit;
        let mut messages = rows
            .iter()
            .take(usize::try_from(limit).unwrap_or(usize::MAX))
            .map(message_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        messages.reverse();
        Ok((messages, has_more))
    }

    /// The messages with `after < seq <= up_to`, oldest first: replays and
    /// gap backfills.
    ///
    /// # Errors
    /// Database failures.
    pub async fn range(
        &self,
        room_id: &str,
        after: i64,
        up_to: i64,
    ) -> Result<Vec<StoredMessage>, Error> {
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM message WHERE room_id = $1 AND seq > $2 AND seq <= $3 \
             ORDER BY seq"
        );
        let rows = timed(
            "range",
            sqlx::query(&sql)
                .bind(room_id)
                .bind(after)
                .bind(up_to)
                .fetch_all(self.db.pool()),
        )
        .await?;
        rows.iter()
            .map(|row| message_from_row(row).map(Arc::new).map_err(Error::from))
            .collect()
    }

    /// The newest seq of each of `room_ids` that exists.
    ///
    /// # Errors
    /// Database failures.
    pub async fn last_seqs(&self, room_ids: &[&str]) -> Result<Vec<(String, i64)>, Error> {
        let mut result = Vec::with_capacity(room_ids.len());
        for chunk in room_ids.chunks(LOOKUP_CHUNK) {
            let mut sql = String::from("SELECT room_id, last_seq FROM room WHERE room_id IN (");
            for i in 1..=chunk.len() {
                let _ = write!(sql, "{}${i}", if i > 1 { ", " } else { "" });
            }
            sql.push(')');
            let mut query = sqlx::query(&sql);
            for room_id in chunk {
                query = query.bind(*room_id);
            }
            let rows = timed("last_seqs", query.fetch_all(self.db.pool())).await?;
            for row in &rows {
                result.push((row.try_get("room_id")?, row.try_get("last_seq")?));
            }
        }
        Ok(result)
    }

    /// Stores a batch of messages in one transaction, in order: each room's
    /// messages get consecutive seqs in batch order. Retries (a known
    /// `client_id`) come back as [`WriteOutcome::Duplicate`] and are not
    /// stored again.
    ///
    /// # Errors
    /// Database failures; then nothing of the batch was stored.
    pub async fn write_batch(&self, batch: &[&NewMessage]) -> Result<Vec<WriteOutcome>, Error> {
        let mut attempt = 1;
        loop {
            match timed("write_messages", self.try_write_batch(batch)).await {
                Err(Error::Database(err))
                    if unique_violation(&err).is_some() && attempt < WRITE_ATTEMPTS =>
                {
                    // Another replica stored a retry of one of these in the
                    // meantime; the next attempt finds it as a duplicate.
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    async fn try_write_batch(&self, batch: &[&NewMessage]) -> Result<Vec<WriteOutcome>, Error> {
        let mut tx = self.db.pool().begin().await?;

        // Retries: keys stored before, and keys repeated within the batch.
        let keyed: Vec<&NewMessage> = batch
            .iter()
            .copied()
            .filter(|m| key_of(m).is_some())
            .collect();
        let mut known: HashMap<(String, String, String), StoredMessage> = HashMap::new();
        for chunk in keyed.chunks(LOOKUP_CHUNK) {
            let mut sql = format!("SELECT {MESSAGE_COLUMNS} FROM message WHERE ");
            for i in 0..chunk.len() {
                let n = i * 3;
                let _ = write!(
                    sql,
                    "{}(room_id = ${} AND sender_id = ${} AND client_id = ${})",
                    if i > 0 { " OR " } else { "" },
                    n + 1,
                    n + 2,
                    n + 3
                );
            }
            let mut query = sqlx::query(&sql);
            for message in chunk {
                query = query
                    .bind(&*message.room_id)
                    .bind(&*message.sender_id)
                    .bind(&message.client_id);
            }
            for row in query.fetch_all(&mut *tx).await? {
                let stored = message_from_row(&row)?;
                known.insert(
                    (
                        stored.room_id.clone(),
                        stored.sender_id.clone(),
                        stored.client_id.clone(),
                    ),
                    Arc::new(stored),
                );
            }
        }

        let mut outcomes: Vec<Option<WriteOutcome>> = vec![None; batch.len()];
        // Later copies of a key within the batch, by the index of the first.
        let mut repeats: Vec<(usize, usize)> = Vec::new();
        let mut first_of_key: HashMap<IdempotencyKey<'_>, usize> = HashMap::new();
        let mut by_room: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (index, &message) in batch.iter().enumerate() {
            if let Some(key) = key_of(message) {
                let owned = (key.0.to_owned(), key.1.to_owned(), key.2.to_owned());
                if let Some(stored) = known.get(&owned) {
                    outcomes[index] = Some(WriteOutcome::Duplicate(stored.clone()));
                    continue;
                }
                if let Some(&first) = first_of_key.get(&key) {
                    repeats.push((index, first));
                    continue;
                }
                first_of_key.insert(key, index);
            }
            by_room.entry(&message.room_id).or_default().push(index);
        }

        // Take each room's seqs in room-id order, so two replicas writing
        // overlapping rooms lock them in the same order and never deadlock.
        let sent_at = now_millis();
        let mut rows: Vec<(usize, ChatMessage)> = Vec::with_capacity(batch.len());
        for (room_id, indices) in &by_room {
            let count = i64::try_from(indices.len()).unwrap_or(i64::MAX);
            let last: Option<i64> = sqlx::query_scalar(
                "UPDATE room SET last_seq = last_seq + $1 WHERE room_id = $2 RETURNING last_seq",
            )
            .bind(count)
            .bind(*room_id)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(last) = last else {
                for &index in indices {
                    outcomes[index] = Some(WriteOutcome::NoRoom);
                }
                continue;
            };
            for (offset, &index) in (0..).zip(indices) {
                let message = batch[index];
                rows.push((
                    index,
                    ChatMessage {
                        id: uuid::Uuid::now_v7().to_string(),
                        room_id: message.room_id.to_string(),
                        seq: last - count + 1 + offset,
                        sender_id: message.sender_id.to_string(),
                        sender_name: message.sender_name.to_string(),
                        content: message.content.clone(),
                        client_id: message.client_id.clone(),
                        sent_at: Some(timestamp(sent_at)),
                    },
                ));
            }
        }

        for chunk in rows.chunks(INSERT_CHUNK) {
            let mut sql = format!("INSERT INTO message ({MESSAGE_COLUMNS}) VALUES ");
            for i in 0..chunk.len() {
                let n = i * 8;
                let _ = write!(
                    sql,
                    "{}(${}, ${}, ${}, ${}, ${}, ${}, ${}, ${})",
                    if i > 0 { ", " } else { "" },
                    n + 1,
                    n + 2,
                    n + 3,
                    n + 4,
                    n + 5,
                    n + 6,
                    n + 7,
                    n + 8
                );
            }
            let mut query = sqlx::query(&sql);
            for (_, message) in chunk {
                query = query
                    .bind(&message.id)
                    .bind(&message.room_id)
                    .bind(message.seq)
                    .bind(&message.sender_id)
                    .bind(&message.sender_name)
                    .bind(&message.content)
                    .bind((!message.client_id.is_empty()).then_some(message.client_id.as_str()))
                    .bind(sent_at);
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;

        for (index, message) in rows {
            outcomes[index] = Some(WriteOutcome::Stored(Arc::new(message)));
        }
        for (index, first) in repeats {
            outcomes[index] = match &outcomes[first] {
                Some(WriteOutcome::Stored(stored) | WriteOutcome::Duplicate(stored)) => {
                    Some(WriteOutcome::Duplicate(stored.clone()))
                }
                other => other.clone(),
            };
        }
        Ok(outcomes
            .into_iter()
            .map(|outcome| outcome.unwrap_or(WriteOutcome::NoRoom))
            .collect())
    }
}

impl ChatStore {
    /// The message `sender_id` stored in the room under `client_id`.
    ///
    /// # Errors
    /// Database failures.
    pub async fn message_by_client_id(
        &self,
        room_id: &str,
        sender_id: &str,
        client_id: &str,
    ) -> Result<Option<StoredMessage>, Error> {
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM message WHERE room_id = $1 AND sender_id = $2 AND client_id = $3"
        );
        let row = timed(
            "get_message_by_client_id",
            sqlx::query(&sql)
                .bind(room_id)
                .bind(sender_id)
                .bind(client_id)
                .fetch_optional(self.db.pool()),
        )
        .await?;
        Ok(row
            .as_ref()
            .map(message_from_row)
            .transpose()?
            .map(Arc::new))
    }
}
