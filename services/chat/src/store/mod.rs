//! Rooms, memberships, messages and the other timeline events. Portable
//! SQL, run on Postgres and SQLite alike. The batch writer's statement,
//! which stores messages and takes their seqs, lives in [`batch`]; the
//! transaction of each edit, deletion or reaction in [`events`]; the
//! room list in [`rooms`].

mod batch;
mod events;
mod moderation;
mod rooms;
#[cfg(test)]
mod tests;

use std::{collections::HashMap, fmt::Write as _, sync::Arc};

use parley_proto::chat::v1::{ChatMessage, MessageAttachment, ReactionCount};
use parley_runtime::{
    config::DatabaseKind,
    storage::{Database, now_millis, timed, timestamp, unique_violation},
};

pub(crate) use self::{batch::WriteOutcome, events::EventOutcome, moderation::MemberState};
use crate::{
    domain::{Room, RoomId, ShortCode, StoredMessage},
    error::Error,
    timeline::{EventRow, REACTION_USERS_LISTED, StoredEvent},
};

const ROOM_COLUMNS: &str =
    "room_id, name, short_code, password_hash, created_by, created_at, last_seq, direct";
const MESSAGE_COLUMNS: &str = "message_id, room_id, seq, sender_id, sender_name, content, \
     client_id, sent_at, reply_to, edited_at, original_content, deleted_at, attachments";
const EVENT_COLUMNS: &str =
    "room_id, seq, kind, target_seq, actor_id, actor_name, detail, created_at";
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
    created_by: String,
    created_at: i64,
    last_seq: i64,
    direct: i64,
}

impl From<RoomRow> for Room {
    fn from(row: RoomRow) -> Self {
        Self {
            id: RoomId::trusted(&row.room_id),
            name: row.name,
            short_code: row.short_code.unwrap_or_default(),
            password_hash: row.password_hash,
            created_by: row.created_by,
            created_at: row.created_at,
            last_seq: row.last_seq,
            direct: row.direct != 0,
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
    reply_to: i64,
    edited_at: Option<i64>,
    original_content: Option<String>,
    deleted_at: Option<i64>,
    attachments: Option<String>,
}

impl MessageRow {
    /// The message as it is now: edited text, deleted (without text).
    /// Reactions are added by the caller that reads them.
    fn current(self) -> ChatMessage {
        let deleted = self.deleted_at.is_some();
        ChatMessage {
            id: self.message_id,
            room_id: self.room_id,
            seq: self.seq,
            sender_id: self.sender_id,
            sender_name: self.sender_name,
            content: if deleted { String::new() } else { self.content },
            client_id: self.client_id.unwrap_or_default(),
            sent_at: Some(timestamp(self.sent_at)),
            reply_to: self.reply_to,
            edited_at: self.edited_at.map(timestamp),
            deleted,
            reactions: Vec::new(),
            attachments: decode_attachments(self.attachments.as_deref()),
        }
    }

    /// The message as it was sent, for replays and gap repair, which send
    /// its later events after it; a deleted message's text stays gone.
    fn sent_form(self) -> ChatMessage {
        let deleted = self.deleted_at.is_some();
        let content = match (deleted, self.original_content) {
            (true, _) => String::new(),
            (false, Some(original)) => original,
            (false, None) => self.content,
        };
        ChatMessage {
            id: self.message_id,
            room_id: self.room_id,
            seq: self.seq,
            sender_id: self.sender_id,
            sender_name: self.sender_name,
            content,
            client_id: self.client_id.unwrap_or_default(),
            sent_at: Some(timestamp(self.sent_at)),
            reply_to: self.reply_to,
            edited_at: None,
            deleted,
            reactions: Vec::new(),
            attachments: decode_attachments(self.attachments.as_deref()),
        }
    }
}

/// One attachment as the `attachments` column keeps it (a JSON array).
#[derive(serde::Serialize, serde::Deserialize)]
struct AttachmentColumn {
    id: String,
    filename: String,
    content_type: String,
    size: i64,
    width: i32,
    height: i32,
}

/// The `attachments` column of a message: `None` (NULL) when it has none,
/// which keeps messages without attachments as cheap as before.
fn encode_attachments(attachments: &[MessageAttachment]) -> Option<String> {
    if attachments.is_empty() {
        return None;
    }
    let column: Vec<AttachmentColumn> = attachments
        .iter()
        .map(|a| AttachmentColumn {
            id: a.id.clone(),
            filename: a.filename.clone(),
            content_type: a.content_type.clone(),
            size: a.size,
            width: a.width,
            height: a.height,
        })
        .collect();
    serde_json::to_string(&column).ok()
}

/// The attachments of a stored message. The column is only ever written
/// by [`encode_attachments`]; should it not parse, the message is still
/// served, without them, and the fault logged.
fn decode_attachments(column: Option<&str>) -> Vec<MessageAttachment> {
    let Some(column) = column else {
        return Vec::new();
    };
    match serde_json::from_str::<Vec<AttachmentColumn>>(column) {
        Ok(list) => list
            .into_iter()
            .map(|a| MessageAttachment {
                id: a.id,
                filename: a.filename,
                content_type: a.content_type,
                size: a.size,
                width: a.width,
                height: a.height,
            })
            .collect(),
        Err(err) => {
            tracing::error!(%err, "a message's attachments column does not parse");
            Vec::new()
        }
    }
}

#[derive(sqlx::FromRow)]
struct ReactionRow {
    target_seq: i64,
    emoji: String,
    user_id: String,
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
            let mut tx = self.db.begin_write().await?;
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
                    "INSERT INTO room_member (room_id, user_id, joined_at, role) \
                     VALUES ($1, $2, $3, 'owner')",
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
                created_by: creator.to_owned(),
                created_at,
                last_seq: 0,
                direct: false,
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
        max_created: Option<i64>,
    ) -> Result<Room, Error> {
        if let Some(room) = self.room(room_id).await? {
            return Ok(room);
        }
        if let Some(max) = max_created {
            let made: i64 = timed(
                "count_rooms_by_creator",
                sqlx::query_scalar("SELECT COUNT(*) FROM room WHERE created_by = $1")
                    .bind(creator)
                    .fetch_one(self.db.pool()),
            )
            .await?;
            if made >= max {
                return Err(Error::ResourceExhausted(format!(
                    "a user may create at most {max} rooms; join an existing one"
                )));
            }
        }
        // A deleted room's id stays unused: its join is NOT_FOUND.
        timed(
            "create_public_room",
            sqlx::query(
                "INSERT INTO room (room_id, name, short_code, password_hash, created_by, created_at, last_seq) \
                 SELECT $1, $1, NULL, NULL, $2, $3, 0 \
                 WHERE NOT EXISTS (SELECT 1 FROM deleted_room WHERE room_id = $1) \
                 ON CONFLICT (room_id) DO NOTHING",
            )
            .bind(room_id)
            .bind(creator)
            .bind(now_millis())
            .execute(self.db.pool()),
        )
        .await?;
        self.room(room_id)
            .await?
            .ok_or_else(|| Error::RoomNotFound(room_id.to_owned()))
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

    /// Makes `user_id` a member of `room` (again): its creator as owner,
    /// anyone else as a member; an existing member keeps their role and
    /// read marker.
    ///
    /// # Errors
    /// Database failures.
    pub(crate) async fn add_member(&self, room: &Room, user_id: &str) -> Result<(), Error> {
        let role = if room.created_by == user_id && !room.direct {
            "owner"
        } else {
            "member"
        };
        timed(
            "add_member",
            sqlx::query(
                "INSERT INTO room_member (room_id, user_id, joined_at, role) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (room_id, user_id) DO NOTHING",
            )
            .bind(room.id.as_str())
            .bind(user_id)
            .bind(now_millis())
            .bind(role)
            .execute(self.db.pool()),
        )
        .await?;
        Ok(())
    }

    /// Moves `user_id`'s read marker in the room forward to `seq`; answers
    /// the marker now and whether it moved, or `None` for a non-member.
    ///
    /// # Errors
    /// Database failures.
    pub(crate) async fn mark_read(
        &self,
        room_id: &str,
        user_id: &str,
        seq: i64,
    ) -> Result<Option<(i64, bool)>, Error> {
        let moved: Option<i64> = timed(
            "mark_read",
            sqlx::query_scalar(
                "UPDATE room_member SET read_seq = $3 \
                 WHERE room_id = $1 AND user_id = $2 AND read_seq < $3 RETURNING read_seq",
            )
            .bind(room_id)
            .bind(user_id)
            .bind(seq)
            .fetch_optional(self.db.pool()),
        )
        .await?;
        if let Some(read_seq) = moved {
            return Ok(Some((read_seq, true)));
        }
        let current: Option<i64> = sqlx::query_scalar(
            "SELECT read_seq FROM room_member WHERE room_id = $1 AND user_id = $2",
        )
        .bind(room_id)
        .bind(user_id)
        .fetch_optional(self.db.pool())
        .await?;
        Ok(current.map(|read_seq| (read_seq, false)))
    }

    /// Whether the room has a message (not another event) at `seq`.
    ///
    /// # Errors
    /// Database failures.
    pub(crate) async fn is_message(&self, room_id: &str, seq: i64) -> Result<bool, Error> {
        let row = timed(
            "get_message",
            sqlx::query("SELECT 1 AS one FROM message WHERE room_id = $1 AND seq = $2")
                .bind(room_id)
                .bind(seq)
                .fetch_optional(self.db.pool()),
        )
        .await?;
        Ok(row.is_some())
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
            .map(MessageRow::current)
            .collect();
        messages.reverse();
        if let (Some(first), Some(last)) = (messages.first(), messages.last()) {
            let mut reactions = self.reactions(room_id, first.seq, last.seq).await?;
            for message in &mut messages {
                if let Some(counts) = reactions.remove(&message.seq) {
                    message.reactions = counts;
                }
            }
        }
        Ok((messages, has_more))
    }

    /// The timeline events with `after < seq <= up_to`, oldest first, for
    /// replays and gap repair: every message as it was sent, and every
    /// edit, deletion and reaction change after it.
    ///
    /// # Errors
    /// Database failures.
    pub(crate) async fn range(
        &self,
        room_id: &str,
        after: i64,
        up_to: i64,
    ) -> Result<Vec<StoredEvent>, Error> {
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM message WHERE room_id = $1 AND seq > $2 AND seq <= $3 \
             ORDER BY seq"
        );
        let messages = timed(
            "range",
            sqlx::query_as::<_, MessageRow>(&sql)
                .bind(room_id)
                .bind(after)
                .bind(up_to)
                .fetch_all(self.db.pool()),
        )
        .await?;
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM room_event WHERE room_id = $1 AND seq > $2 AND seq <= $3 \
             ORDER BY seq"
        );
        let events = timed(
            "range_events",
            sqlx::query_as::<_, EventRow>(&sql)
                .bind(room_id)
                .bind(after)
                .bind(up_to)
                .fetch_all(self.db.pool()),
        )
        .await?;
        let mut merged: Vec<StoredEvent> = messages
            .into_iter()
            .map(|row| StoredEvent::message(row.sent_form()))
            .chain(events.into_iter().filter_map(EventRow::into_event))
            .collect();
        merged.sort_by_key(StoredEvent::seq);
        Ok(merged)
    }

    /// The reactions to the messages with `from <= seq <= to`, by message:
    /// emoji in the order each was first used, users in the order they
    /// reacted.
    ///
    /// # Errors
    /// Database failures.
    async fn reactions(
        &self,
        room_id: &str,
        from: i64,
        to: i64,
    ) -> Result<HashMap<i64, Vec<ReactionCount>>, Error> {
        let rows = timed(
            "reactions",
            sqlx::query_as::<_, ReactionRow>(
                "SELECT target_seq, emoji, user_id FROM reaction \
                 WHERE room_id = $1 AND target_seq >= $2 AND target_seq <= $3 \
                 ORDER BY target_seq, seq",
            )
            .bind(room_id)
            .bind(from)
            .bind(to)
            .fetch_all(self.db.pool()),
        )
        .await?;
        let mut by_message: HashMap<i64, Vec<ReactionCount>> = HashMap::new();
        for row in rows {
            let counts = by_message.entry(row.target_seq).or_default();
            let at = match counts.iter().position(|count| count.emoji == row.emoji) {
                Some(at) => at,
                None => {
                    counts.push(ReactionCount {
                        emoji: row.emoji,
                        count: 0,
                        user_ids: Vec::new(),
                    });
                    counts.len() - 1
                }
            };
            let count = &mut counts[at];
            count.count += 1;
            if count.user_ids.len() < REACTION_USERS_LISTED {
                count.user_ids.push(row.user_id);
            }
        }
        Ok(by_message)
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
        Ok(row.map(|row| Arc::new(row.current())))
    }
}
