//! A user's room list (a direct room named after the other user), read in
//! three queries whatever the number of rooms
//! or messages: no count runs over a room's history.
//!
//! A room's unread messages for a member are its messages by others after
//! the member's read marker, less the deleted ones. Sending moves the
//! sender's marker to their message, so none of their own is ever after
//! it: the count is the room's `message_count` less the `ordinal` of the
//! newest message at the marker, both kept up to date as messages are
//! stored, less the deleted messages after it, counted in
//! `message_deletion`, which holds a row per deleted message only.

use std::{collections::HashMap, fmt::Write as _};

use parley_proto::chat::v1::{ChatMessage, RoomSummary};
use parley_runtime::storage::timed;

use super::{ChatStore, LOOKUP_CHUNK, MESSAGE_COLUMNS, MessageRow, placeholders};
use crate::error::Error;

#[derive(sqlx::FromRow)]
struct MyRoomRow {
    room_id: String,
    name: String,
    private: i64,
    direct: i64,
    role: String,
    last_seq: i64,
    read_seq: i64,
    message_count: i64,
    read_ordinal: Option<i64>,
    deleted_after: i64,
    newest_message: Option<i64>,
}

impl ChatStore {
    /// The rooms `user_id` is a member of, latest activity first.
    ///
    /// # Errors
    /// Database failures.
    pub(crate) async fn my_rooms(&self, user_id: &str) -> Result<Vec<RoomSummary>, Error> {
        let rows = timed(
            "my_rooms",
            sqlx::query_as::<_, MyRoomRow>(
                "SELECT r.room_id, \
                    COALESCE((SELECT COALESCE(k.name, p.peer) FROM \
                        (SELECT CASE WHEN d.user_low = $1 THEN d.user_high ELSE d.user_low END \
                            AS peer FROM direct_room d WHERE d.room_id = r.room_id) p \
                        LEFT JOIN known_user k ON k.user_id = p.peer), r.name) AS name, \
                    CAST(CASE WHEN r.password_hash IS NULL AND r.direct = 0 THEN 0 ELSE 1 END \
                        AS BIGINT) AS private, \
                    r.direct, m.role, r.last_seq, m.read_seq, r.message_count, \
                    (SELECT x.ordinal FROM message x \
                        WHERE x.room_id = r.room_id AND x.seq <= m.read_seq \
                        ORDER BY x.seq DESC LIMIT 1) AS read_ordinal, \
                    (SELECT count(*) FROM message_deletion x \
                        WHERE x.room_id = r.room_id AND x.seq > m.read_seq \
                            AND x.sender_id <> m.user_id) AS deleted_after, \
                    (SELECT max(x.seq) FROM message x WHERE x.room_id = r.room_id) \
                        AS newest_message \
                 FROM room_member m JOIN room r ON r.room_id = m.room_id \
                 WHERE m.user_id = $1 \
                 ORDER BY r.last_event_at DESC, r.room_id",
            )
            .bind(user_id)
            .fetch_all(self.db.pool()),
        )
        .await?;

        let newest: Vec<(&str, i64)> = rows
            .iter()
            .filter_map(|row| Some((row.room_id.as_str(), row.newest_message?)))
            .collect();
        let mut last_messages = self.messages_at(&newest).await?;
        Ok(rows
            .iter()
            .map(|row| {
                let before_marker = row.read_ordinal.unwrap_or(0);
                let unread = row.message_count - before_marker - row.deleted_after;
                RoomSummary {
                    id: row.room_id.clone(),
                    name: row.name.clone(),
                    private: row.private != 0,
                    direct: row.direct != 0,
                    role: row.role.clone(),
                    last_seq: row.last_seq,
                    read_seq: row.read_seq,
                    unread: unread.max(0),
                    last_message: last_messages.remove(&row.room_id),
                }
            })
            .collect())
    }

    /// The messages at each `(room, seq)`, in their current state, by room.
    async fn messages_at(&self, at: &[(&str, i64)]) -> Result<HashMap<String, ChatMessage>, Error> {
        let mut found = HashMap::with_capacity(at.len());
        for chunk in at.chunks(LOOKUP_CHUNK) {
            let sql = format!(
                "SELECT {MESSAGE_COLUMNS} FROM message WHERE {}",
                placeholders(chunk.len(), 2, " OR ", |sql, n| {
                    let _ = write!(sql, "(room_id = ${n} AND seq = ${})", n + 1);
                })
            );
            let mut query = sqlx::query_as::<_, MessageRow>(&sql);
            for (room_id, seq) in chunk {
                query = query.bind(*room_id).bind(*seq);
            }
            for row in timed("last_messages", query.fetch_all(self.db.pool())).await? {
                let message = row.current();
                found.insert(message.room_id.clone(), message);
            }
        }
        Ok(found)
    }
}
