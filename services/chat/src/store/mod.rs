//! Rooms, memberships and messages. Portable SQL, run on Postgres and
//! SQLite alike. The batch writer's statement, which stores messages and
//! takes their seqs, lives in [`batch`].

mod batch;
#[cfg(test)]
mod tests;

use std::{fmt::Write as _, sync::Arc};

use parley_proto::chat::v1::ChatMessage;
use parley_runtime::{
    config::DatabaseKind,
    storage::{Database, now_millis, timed, timestamp, unique_violation},
};

pub(crate) use self::batch::WriteOutcome;
use crate::{
    domain::{Room, RoomId, ShortCode, StoredMessage},
    error::Error,
};

const ROOM_COLUMNS: &str = "room_id, name, short_code, password_hash, created_at, last_seq";
const MESSAGE_COLUMNS: &str =
    "message_id, room_id, seq, sender_id, sender_name, content, client_id, sent_at";
/// Room ids or idempotency keys looked up per query.
const LOOKUP_CHUNK: usize = 200;

/// Reads and writes chat data. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct ChatStore {
    db: Database,
}

#[derive(sqlx::FromRow)]
struct RoomRow {
    room_id: String,
    name: String,
    short_code: Option<String>,
    password_hash: Option<String>,
    created_at: i64,
    last_seq: i64,
}

impl From<RoomRow> for Room {
    fn from(row: RoomRow) -> Self {
        Self {
            id: RoomId::trusted(&row.room_id),
            name: row.name,
            short_code: row.short_code.unwrap_or_default(),
            password_hash: row.password_hash,
            created_at: row.created_at,
            last_seq: row.last_seq,
        }
    }
}

#[derive(sqlx::FromRow)]
struct MessageRow {
    message_id: String,
    room_id: String,
    seq: i64,
    sender_id: String,
    sender_name: String,
    content: String,
    client_id: Option<String>,
    sent_at: i64,
}

impl From<MessageRow> for ChatMessage {
    fn from(row: MessageRow) -> Self {
        Self {
            id: row.message_id,
            room_id: row.room_id,
            seq: row.seq,
            sender_id: row.sender_id,
            sender_name: row.sender_name,
            content: row.content,
            client_id: row.client_id.unwrap_or_default(),
            sent_at: Some(timestamp(row.sent_at)),
        }
    }
}

#[derive(sqlx::FromRow)]
struct LastSeqRow {
    room_id: String,
    last_seq: i64,
}

/// `rows` groups of `per_row` numbered placeholders joined by
/// `separator`, each group written by `group` from its first number:
/// `($1, $2), ($3, $4)` for a two-column insert of two rows.
///
/// Numbered by hand because sqlx's `QueryBuilder` writes the placeholders
/// of the database it is built for, and for `Any` that is SQLite's `?`,
/// which Postgres refuses; `$N` is understood by both engines.
fn placeholders(
    rows: usize,
    per_row: usize,
    separator: &str,
    group: impl Fn(&mut String, usize),
) -> String {
    let mut sql = String::new();
    for row in 0..rows {
        if row > 0 {
            sql.push_str(separator);
        }
        group(&mut sql, row * per_row + 1);
    }
    sql
}

impl ChatStore {
    /// A store over `db`, already migrated.
    pub(crate) fn new(db: Database) -> Self {
        Self { db }
    }

    /// The engine's name as trace attributes spell it (`db.system`).
    pub(crate) fn system(&self) -> &'static str {
        match self.db.kind() {
            DatabaseKind::Postgres => "postgresql",
            DatabaseKind::Sqlite => "sqlite",
        }
    }

    /// Stores a room made by `CreateRoom`, with a fresh short code (a new
    /// one is drawn on the rare collision).
    ///
    /// # Errors
    /// Database failures.
    pub(crate) async fn create_room(
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
                id: RoomId::trusted(&room_id),
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
    pub(crate) async fn room_or_create_public(
        &self,
        room_id: &str,
        creator: &str,
    ) -> Result<Room, Error> {
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
    pub(crate) async fn room(&self, room_id: &str) -> Result<Option<Room>, Error> {
        let sql = format!("SELECT {ROOM_COLUMNS} FROM room WHERE room_id = $1");
        let row = timed(
            "get_room",
            sqlx::query_as::<_, RoomRow>(&sql)
                .bind(room_id)
                .fetch_optional(self.db.pool()),
        )
        .await?;
        Ok(row.map(Room::from))
    }

    /// The room with this short code.
    ///
    /// # Errors
    /// Database failures.
    pub(crate) async fn room_by_code(&self, short_code: &ShortCode) -> Result<Option<Room>, Error> {
        let sql = format!("SELECT {ROOM_COLUMNS} FROM room WHERE short_code = $1");
        let row = timed(
            "get_room_by_code",
            sqlx::query_as::<_, RoomRow>(&sql)
                .bind(short_code.as_str())
                .fetch_optional(self.db.pool()),
        )
        .await?;
        Ok(row.map(Room::from))
    }

    /// Whether `user_id` is a member of `room_id`.
    ///
    /// # Errors
    /// Database failures.
    pub(crate) async fn is_member(&self, room_id: &str, user_id: &str) -> Result<bool, Error> {
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
    pub(crate) async fn add_member(&self, room_id: &str, user_id: &str) -> Result<(), Error> {
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
    pub(crate) async fn remove_member(&self, room_id: &str, user_id: &str) -> Result<(), Error> {
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
    pub(crate) async fn history(
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
            sqlx::query_as::<_, MessageRow>(&sql)
                .bind(room_id)
                .bind(before)
                .bind(limit + 1)
                .fetch_all(self.db.pool()),
        )
        .await?;
        let has_more = i64::try_from(rows.len()).unwrap_or(i64::MAX) > limit;
        let mut messages: Vec<ChatMessage> = rows
            .into_iter()
            .take(usize::try_from(limit).unwrap_or(usize::MAX))
            .map(ChatMessage::from)
            .collect();
        messages.reverse();
        Ok((messages, has_more))
    }

    /// The messages with `after < seq <= up_to`, oldest first: replays and
    /// gap backfills.
    ///
    /// # Errors
    /// Database failures.
    pub(crate) async fn range(
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
            sqlx::query_as::<_, MessageRow>(&sql)
                .bind(room_id)
                .bind(after)
                .bind(up_to)
                .fetch_all(self.db.pool()),
        )
        .await?;
        Ok(rows
            .into_iter()
            .map(|row| Arc::new(ChatMessage::from(row)))
            .collect())
    }

    /// The newest seq of each of `room_ids` that exists.
    ///
    /// # Errors
    /// Database failures.
    pub(crate) async fn last_seqs(&self, room_ids: &[&str]) -> Result<Vec<(String, i64)>, Error> {
        let mut result = Vec::with_capacity(room_ids.len());
        for chunk in room_ids.chunks(LOOKUP_CHUNK) {
            let sql = format!(
                "SELECT room_id, last_seq FROM room WHERE room_id IN ({})",
                placeholders(chunk.len(), 1, ", ", |sql, n| {
                    let _ = write!(sql, "${n}");
                })
            );
            let mut query = sqlx::query_as::<_, LastSeqRow>(&sql);
            for room_id in chunk {
                query = query.bind(*room_id);
            }
            let rows = timed("last_seqs", query.fetch_all(self.db.pool())).await?;
            result.extend(rows.into_iter().map(|row| (row.room_id, row.last_seq)));
        }
        Ok(result)
    }

    /// The message `sender_id` stored in the room under `client_id`.
    ///
    /// # Errors
    /// Database failures.
    pub(crate) async fn message_by_client_id(
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
            sqlx::query_as::<_, MessageRow>(&sql)
                .bind(room_id)
                .bind(sender_id)
                .bind(client_id)
                .fetch_optional(self.db.pool()),
        )
        .await?;
        Ok(row.map(|row| Arc::new(ChatMessage::from(row))))
    }
}
