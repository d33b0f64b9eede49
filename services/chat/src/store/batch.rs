//! The batch writer's statement: a writer lane's whole batch stored at
//! once (see [`crate::writer`]), one statement on Postgres and one
//! transaction on SQLite.
//!
//! Seqs are taken by bumping `room.last_seq` in the transaction that
//! inserts the messages: the row lock orders concurrent writers of one room
//! across every replica, and a message is never visible without its seq or
//! a seq without its message. Rooms are locked in room-id order by every
//! writer, so writers of overlapping rooms never deadlock. The same
//! transaction moves each sender's read marker to their newest message.

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
};

use parley_proto::chat::v1::ChatMessage;
use parley_runtime::{
    config::DatabaseKind,
    storage::{now_millis, timed, timestamp, unique_violation},
};

use super::{
    ChatStore, MESSAGE_COLUMNS, MessageRow, decode_attachments, encode_attachments, placeholders,
};
use crate::{domain::NewMessage, error::Error, timeline::StoredEvent};

/// The columns a new message is inserted with.
const INSERT_COLUMNS: &str = "message_id, room_id, seq, sender_id, sender_name, content, \
     client_id, sent_at, reply_to, ordinal, attachments";

/// Rows per statement on SQLite, for the multi-row `INSERT` and the
/// lookups. Kept small because binding costs grow with the square of a
/// statement's parameters there (the driver looks each `$N` up by name
/// among all of them): at 500 rows of 10 it took most of the process's
/// CPU, while in-process round trips cost next to nothing.
const SQLITE_CHUNK: usize = 32;
/// Attempts of a batch that collided with a concurrent retry on another
/// replica (a unique violation on the idempotency key).
const WRITE_ATTEMPTS: usize = 3;

/// What became of one message of a batch.
#[derive(Debug, Clone)]
pub(crate) enum WriteOutcome {
    /// Stored now, with this seq: the `message` event members receive.
    Stored(StoredEvent),
    /// A retry: the message stored earlier with the same `client_id`.
    Duplicate(StoredEvent),
    /// The room does not exist.
    NoRoom,
}

/// One row the Postgres batch statement answers: a message it stored
/// (`stored`, found by its id) or a retry it found (by its place `ord`).
#[derive(sqlx::FromRow)]
struct BatchRow {
    ord: Option<i64>,
    seq: i64,
    stored: bool,
    message_id: String,
    sender_name: String,
    content: String,
    sent_at: i64,
    reply_to: i64,
    attachments: Option<String>,
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
    /// Stores a batch of messages in one transaction, in order: each room's
    /// messages get consecutive seqs in batch order. Retries (a known
    /// `client_id`) come back as [`WriteOutcome::Duplicate`] and are not
    /// stored again.
    ///
    /// # Errors
    /// Database failures; then nothing of the batch was stored.
    pub(crate) async fn write_batch(
        &self,
        batch: &[&NewMessage],
    ) -> Result<Vec<WriteOutcome>, Error> {
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
            reply_to: i64,
            attachments: Option<String>,
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
                    sender_name TEXT, content TEXT, client_id TEXT, reply_to BIGINT, \
                    attachments TEXT)), \
            known AS MATERIALIZED ( \
                SELECT i.ord, m.seq, m.message_id, m.sender_name, m.content, m.sent_at, \
                    m.reply_to, m.attachments \
                FROM input i CROSS JOIN LATERAL ( \
                    SELECT seq, message_id, sender_name, content, sent_at, reply_to, attachments \
                    FROM message \
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
                UPDATE room r SET last_seq = r.last_seq + c.n, \
                    message_count = r.message_count + c.n, last_event_at = $2 \
                FROM (SELECT room_id, count(*) AS n FROM fresh GROUP BY room_id) c \
                WHERE r.room_id = c.room_id \
                    AND r.room_id = ANY (ARRAY(SELECT room_id FROM locked)) \
                RETURNING r.room_id, r.last_seq - c.n AS before, \
                    r.message_count - c.n AS counted), \
            seqs AS MATERIALIZED ( \
                SELECT jsonb_object_agg(room_id, before) AS before, \
                    jsonb_object_agg(room_id, counted) AS counted FROM bumped), \
            stored AS ( \
                INSERT INTO message (message_id, room_id, seq, sender_id, sender_name, content, \
                    client_id, sent_at, reply_to, ordinal, attachments) \
                SELECT f.message_id, f.room_id, \
                    (s.before ->> f.room_id)::BIGINT \
                        + row_number() OVER (PARTITION BY f.room_id ORDER BY f.ord), \
                    f.sender_id, f.sender_name, f.content, f.client_id, $2, f.reply_to, \
                    (s.counted ->> f.room_id)::BIGINT \
                        + row_number() OVER (PARTITION BY f.room_id ORDER BY f.ord), \
                    f.attachments \
                FROM fresh f CROSS JOIN seqs s WHERE s.before ? f.room_id \
                RETURNING message_id, seq, room_id, sender_id), \
            marked AS ( \
                UPDATE room_member m SET read_seq = w.seq \
                FROM (SELECT room_id, sender_id, max(seq) AS seq FROM stored \
                    GROUP BY room_id, sender_id) w \
                WHERE m.room_id = w.room_id AND m.user_id = w.sender_id AND m.read_seq < w.seq) \
            SELECT NULL::BIGINT AS ord, seq, TRUE AS stored, message_id, '' AS sender_name, \
                '' AS content, $2 AS sent_at, 0::BIGINT AS reply_to, NULL::TEXT AS attachments \
                FROM stored \
            UNION ALL \
            SELECT ord, seq, FALSE, message_id, sender_name, content, sent_at, reply_to, \
                attachments FROM known";

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
                    reply_to: message.reply_to,
                    attachments: encode_attachments(&message.attachments),
                }
            })
            .collect();
        let input = serde_json::to_string(&rows).map_err(|err| {
            Error::Internal(anyhow::anyhow!("encoding a batch of messages: {err}"))
        })?;
        let results = sqlx::query_as::<_, BatchRow>(STATEMENT)
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
        for row in results {
            if row.stored {
                let index = new_ids.remove(&row.message_id).ok_or_else(unknown_row)?;
                let message = ChatMessage {
                    id: row.message_id,
                    seq: row.seq,
                    ..new_row(batch[index], sent_at)
                };
                written.push((index, WriteOutcome::Stored(StoredEvent::message(message))));
            } else {
                let index = row
                    .ord
                    .and_then(|ord| usize::try_from(ord).ok())
                    .filter(|&index| index < batch.len())
                    .ok_or_else(unknown_row)?;
                let message = ChatMessage {
                    id: row.message_id,
                    seq: row.seq,
                    sender_name: row.sender_name,
                    content: row.content,
                    sent_at: Some(timestamp(row.sent_at)),
                    reply_to: row.reply_to,
                    attachments: decode_attachments(row.attachments.as_deref()),
                    ..new_row(batch[index], sent_at)
                };
                written.push((
                    index,
                    WriteOutcome::Duplicate(StoredEvent::message(message)),
                ));
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
        let mut tx = self.db.begin_write().await?;
        let mut written = Vec::with_capacity(unique.len());

        let keyed: Vec<usize> = unique
            .iter()
            .copied()
            .filter(|&index| key_of(batch[index]).is_some())
            .collect();
        let mut known: HashMap<(String, String, String), StoredEvent> = HashMap::new();
        for chunk in keyed.chunks(SQLITE_CHUNK) {
            let sql = format!(
                "SELECT {MESSAGE_COLUMNS} FROM message WHERE {}",
                placeholders(chunk.len(), 3, " OR ", |sql, n| {
                    let _ = write!(
                        sql,
                        "(room_id = ${n} AND sender_id = ${} AND client_id = ${})",
                        n + 1,
                        n + 2
                    );
                })
            );
            let mut query = sqlx::query_as::<_, MessageRow>(&sql);
            for &index in chunk {
                let message = batch[index];
                query = query
                    .bind(&*message.room_id)
                    .bind(&*message.sender_id)
                    .bind(&message.client_id);
            }
            for row in query.fetch_all(&mut *tx).await? {
                let stored = row.current();
                known.insert(
                    (
                        stored.room_id.clone(),
                        stored.sender_id.clone(),
                        stored.client_id.clone(),
                    ),
                    StoredEvent::message(stored),
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
        // Each new message with its ordinal.
        let mut rows: Vec<(usize, ChatMessage, i64)> = Vec::with_capacity(unique.len());
        for (room_id, indices) in &by_room {
            let count = i64::try_from(indices.len()).unwrap_or(i64::MAX);
            let last: Option<(i64, i64)> = sqlx::query_as(
                "UPDATE room SET last_seq = last_seq + $1, message_count = message_count + $1, \
                 last_event_at = $3 WHERE room_id = $2 RETURNING last_seq, message_count",
            )
            .bind(count)
            .bind(*room_id)
            .bind(sent_at)
            .fetch_optional(&mut *tx)
            .await?;
            let Some((last, counted)) = last else {
                continue;
            };
            for (offset, &index) in (0..).zip(indices) {
                let message = ChatMessage {
                    id: uuid::Uuid::now_v7().to_string(),
                    seq: last - count + 1 + offset,
                    ..new_row(batch[index], sent_at)
                };
                rows.push((index, message, counted - count + 1 + offset));
            }
        }

        for chunk in rows.chunks(SQLITE_CHUNK) {
            let sql = format!(
                "INSERT INTO message ({INSERT_COLUMNS}) VALUES {}",
                placeholders(chunk.len(), 11, ", ", |sql, n| {
                    sql.push('(');
                    for i in n..n + 11 {
                        let _ = write!(sql, "{}${i}", if i > n { ", " } else { "" });
                    }
                    sql.push(')');
                })
            );
            let mut query = sqlx::query(&sql);
            for (_, message, ordinal) in chunk {
                query = query
                    .bind(&message.id)
                    .bind(&message.room_id)
                    .bind(message.seq)
                    .bind(&message.sender_id)
                    .bind(&message.sender_name)
                    .bind(&message.content)
                    .bind((!message.client_id.is_empty()).then_some(message.client_id.as_str()))
                    .bind(sent_at)
                    .bind(message.reply_to)
                    .bind(*ordinal)
                    .bind(encode_attachments(&message.attachments));
            }
            query.execute(&mut *tx).await?;
        }
        // Each sender's read marker moves to their newest message.
        let mut newest: BTreeMap<(&str, &str), i64> = BTreeMap::new();
        for (_, message, _) in &rows {
            let seq = newest
                .entry((&message.room_id, &message.sender_id))
                .or_default();
            *seq = (*seq).max(message.seq);
        }
        // One statement for them all: each statement costs a trip to
        // SQLite's worker thread, which would double a batch's.
        let newest: Vec<((&str, &str), i64)> = newest.into_iter().collect();
        for chunk in newest.chunks(SQLITE_CHUNK) {
            let sql = format!(
                "UPDATE room_member SET read_seq = v.column3 FROM (VALUES {}) AS v \
                 WHERE room_member.room_id = v.column1 AND room_member.user_id = v.column2 \
                 AND room_member.read_seq < v.column3",
                placeholders(chunk.len(), 3, ", ", |sql, n| {
                    let _ = write!(sql, "(${n}, ${}, ${})", n + 1, n + 2);
                })
            );
            let mut query = sqlx::query(&sql);
            for ((room_id, sender_id), seq) in chunk {
                query = query.bind(*room_id).bind(*sender_id).bind(*seq);
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;

        written.extend(rows.into_iter().map(|(index, message, _)| {
            (index, WriteOutcome::Stored(StoredEvent::message(message)))
        }));
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
        reply_to: message.reply_to,
        attachments: message.attachments.clone(),
        ..ChatMessage::default()
    }
}
