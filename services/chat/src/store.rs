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
use parley_runtime::{
    config::DatabaseKind,
    storage::{Database, now_millis, timed, timestamp, unique_violation},
};
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
        // A key repeated within the batch is stored once; its later copies
        // get the first one's outcome.
        let mut unique: Vec<usize> = Vec::with_capacity(batch.len());
        let mut repeats: Vec<(usize, usize)> = Vec::new();
        let mut first_of_key: HashMap<IdempotencyKey<'_>, usize> = HashMap::new();
        for (index, &message) in batch.iter().enumerate() {
            if let Some(key) = key_of(message) {
                if let Some(&first) = first_of_key.get(&key) {
                    repeats.push((index, first));
                    continue;
                }
                first_of_key.insert(key, index);
            }
            unique.push(index);
        }

        let sent_at = now_millis();
        let written = match self.db.kind() {
            DatabaseKind::Postgres => self.write_in_one_statement(batch, &unique, sent_at).await?,
            DatabaseKind::Sqlite => self.write_in_transaction(batch, &unique, sent_at).await?,
        };

        let mut outcomes: Vec<Option<WriteOutcome>> = vec![None; batch.len()];
        for (index, outcome) in written {
            outcomes[index] = Some(outcome);
        }
        for (index, first) in repeats {
            outcomes[index] = match &outcomes[first] {
                Some(WriteOutcome::Stored(stored) | WriteOutcome::Duplicate(stored)) => {
                    Some(WriteOutcome::Duplicate(stored.clone()))
                }
                other => other.clone(),
            };
        }
        // A message whose room has no row was neither stored nor found.
        Ok(outcomes
            .into_iter()
            .map(|outcome| outcome.unwrap_or(WriteOutcome::NoRoom))
            .collect())
    }

    /// Postgres: the whole batch in one statement, so a message costs one
    /// round trip and one commit however many rooms the batch spans. The
    /// batch travels as one JSON parameter, which keeps the statement's
    /// text constant and so prepared once per connection.
    ///
    /// Retries are found first and left out. The rooms are then locked in
    /// room-id order (`FOR NO KEY UPDATE` under an `ORDER BY` locks in
    /// that order), so replicas writing overlapping rooms never deadlock,
    /// and each room's seq is bumped by its count of new messages, which
    /// are numbered in queue order.
    async fn write_in_one_statement(
        &self,
        batch: &[&NewMessage],
        unique: &[usize],
        sent_at: i64,
    ) -> Result<Vec<(usize, WriteOutcome)>, Error> {
        #[derive(serde::Serialize)]
        struct Row<'a> {
            ord: usize,
            message_id: String,
            room_id: &'a str,
            sender_id: &'a str,
            sender_name: &'a str,
            content: &'a str,
            client_id: Option<&'a str>,
        }
        // Every table is reached through its index (a lateral probe per
        // key, `= ANY` for rooms): the plan is prepared once, often while
        // the tables are still small, and must stay right as they grow.
        // Each room's seq before the batch is looked up in one `jsonb`
        // object rather than joined, which the planner, blind to the
        // sizes of CTEs, would do as a nested loop over every pair.
        const STATEMENT: &str = "\
            WITH input AS MATERIALIZED ( \
                SELECT * FROM json_to_recordset($1::json) AS t( \
                    ord BIGINT, message_id TEXT, room_id TEXT, sender_id TEXT, \
                    sender_name TEXT, content TEXT, client_id TEXT)), \
            known AS MATERIALIZED ( \
                SELECT i.ord, m.seq, m.message_id, m.sender_name, m.content, m.sent_at \
                FROM input i CROSS JOIN LATERAL ( \
                    SELECT seq, message_id, sender_name, content, sent_at FROM message \
                    WHERE room_id = i.room_id AND sender_id = i.sender_id \
                        AND client_id = i.client_id \
                    LIMIT 1) m \
                WHERE i.client_id IS NOT NULL), \
            fresh AS MATERIALIZED ( \
                SELECT i.* FROM input i WHERE NOT EXISTS (SELECT 1 FROM known k WHERE k.ord = i.ord)), \
            locked AS MATERIALIZED ( \
                SELECT room_id FROM room WHERE room_id = ANY (ARRAY(SELECT room_id FROM fresh)) \
                ORDER BY room_id FOR NO KEY UPDATE), \
            bumped AS ( \
                UPDATE room r SET last_seq = r.last_seq + c.n \
                FROM (SELECT room_id, count(*) AS n FROM fresh GROUP BY room_id) c \
                WHERE r.room_id = c.room_id \
                    AND r.room_id = ANY (ARRAY(SELECT room_id FROM locked)) \
                RETURNING r.room_id, r.last_seq - c.n AS before), \
            seqs AS MATERIALIZED (SELECT jsonb_object_agg(room_id, before) AS before FROM bumped), \
            stored AS ( \
                INSERT INTO message (message_id, room_id, seq, sender_id, sender_name, content, client_id, sent_at) \
                SELECT f.message_id, f.room_id, \
                    (s.before ->> f.room_id)::BIGINT \
                        + row_number() OVER (PARTITION BY f.room_id ORDER BY f.ord), \
                    f.sender_id, f.sender_name, f.content, f.client_id, $2 \
                FROM fresh f CROSS JOIN seqs s WHERE s.before ? f.room_id \
                RETURNING message_id, seq) \
            SELECT NULL::BIGINT AS ord, seq, TRUE AS stored, message_id, '' AS sender_name, '' AS content, $2 AS sent_at \
                FROM stored \
            UNION ALL \
            SELECT ord, seq, FALSE, message_id, sender_name, content, sent_at FROM known";

        let rows: Vec<Row<'_>> = unique
            .iter()
            .map(|&index| {
                let message = batch[index];
                Row {
                    ord: index,
                    message_id: uuid::Uuid::now_v7().to_string(),
                    room_id: &message.room_id,
                    sender_id: &message.sender_id,
                    sender_name: &message.sender_name,
                    content: &message.content,
                    client_id: key_of(message).map(|key| key.2),
                }
            })
            .collect();
        let input = serde_json::to_string(&rows).map_err(|err| {
            Error::Internal(anyhow::anyhow!("encoding a batch of messages: {err}"))
        })?;
        let results = sqlx::query(STATEMENT)
            .bind(input)
            .bind(sent_at)
            .fetch_all(self.db.pool())
            .await?;

        // New rows come back by their message id, retries by their place
        // in the batch.
        let mut new_ids: HashMap<String, usize> = rows
            .into_iter()
            .map(|row| (row.message_id, row.ord))
            .collect();
        let unknown_row = || {
            Error::Internal(anyhow::anyhow!(
                "the batch statement answered an unknown row"
            ))
        };
        let mut written = Vec::with_capacity(results.len());
        for row in &results {
            let message_id: String = row.try_get("message_id")?;
            let seq: i64 = row.try_get("seq")?;
            if row.try_get::<bool, _>("stored")? {
                let index = new_ids.remove(&message_id).ok_or_else(unknown_row)?;
                let message = ChatMessage {
                    id: message_id,
                    seq,
                    ..new_row(batch[index], sent_at)
                };
                written.push((index, WriteOutcome::Stored(Arc::new(message))));
            } else {
                let index = usize::try_from(row.try_get::<i64, _>("ord")?)
                    .ok()
                    .filter(|&index| index < batch.len())
                    .ok_or_else(unknown_row)?;
                let message = ChatMessage {
                    id: message_id,
                    seq,
                    sender_name: row.try_get("sender_name")?,
                    content: row.try_get("content")?,
                    sent_at: Some(timestamp(row.try_get("sent_at")?)),
                    ..new_row(batch[index], sent_at)
                };
                written.push((index, WriteOutcome::Duplicate(Arc::new(message))));
            }
        }
        Ok(written)
    }

    /// SQLite (and any engine without data-modifying `WITH`): a lookup of
    /// retries, one seq bump per room and multi-row inserts, in one
    /// transaction. Round trips cost nothing in process.
    async fn write_in_transaction(
        &self,
        batch: &[&NewMessage],
        unique: &[usize],
        sent_at: i64,
    ) -> Result<Vec<(usize, WriteOutcome)>, Error> {
        let mut tx = self.db.pool().begin().await?;
        let mut written = Vec::with_capacity(unique.len());

        let keyed: Vec<usize> = unique
            .iter()
            .copied()
            .filter(|&index| key_of(batch[index]).is_some())
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
            for &index in chunk {
                let message = batch[index];
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

        let mut by_room: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for &index in unique {
            let message = batch[index];
            if let Some(key) = key_of(message) {
                let owned = (key.0.to_owned(), key.1.to_owned(), key.2.to_owned());
                if let Some(stored) = known.get(&owned) {
                    written.push((index, WriteOutcome::Duplicate(stored.clone())));
                    continue;
                }
            }
            by_room.entry(&message.room_id).or_default().push(index);
        }

        // Each room's seqs in room-id order, like every writer, so writers
        // of overlapping rooms lock them in the same order.
        let mut rows: Vec<(usize, ChatMessage)> = Vec::with_capacity(unique.len());
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
                continue;
            };
            for (offset, &index) in (0..).zip(indices) {
                rows.push((
                    index,
                    ChatMessage {
                        id: uuid::Uuid::now_v7().to_string(),
                        seq: last - count + 1 + offset,
                        ..new_row(batch[index], sent_at)
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

        written.extend(
            rows.into_iter()
                .map(|(index, message)| (index, WriteOutcome::Stored(Arc::new(message)))),
        );
        Ok(written)
    }
}

/// The stored form of `message`, still without its id and seq.
fn new_row(message: &NewMessage, sent_at: i64) -> ChatMessage {
    ChatMessage {
        id: String::new(),
        room_id: message.room_id.to_string(),
        seq: 0,
        sender_id: message.sender_id.to_string(),
        sender_name: message.sender_name.to_string(),
        content: message.content.clone(),
        client_id: message.client_id.clone(),
        sent_at: Some(timestamp(sent_at)),
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

#[cfg(test)]
mod tests {
    use parley_runtime::{
        CancellationToken,
        health::Readiness,
        test_util::{Backend, TestDatabase},
    };

    use super::*;

    fn message(room: &str, sender: &str, content: &str, client_id: &str) -> NewMessage {
        NewMessage {
            room_id: Arc::from(room),
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
        let db = Database::open(
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
}
