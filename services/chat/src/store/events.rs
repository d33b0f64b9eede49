//! The transaction of one edit, deletion or reaction change: the target
//! checked, the message's current state changed, and the event stored with
//! the room's next seq, all under the room's row lock.
//!
//! Every writer of a room's seqs takes that lock first (the batch
//! statement too), so the checks here see no concurrent change: two
//! replicas deleting the same message make one event, and reactions from
//! many users on many replicas end in exact counts.

use parley_runtime::storage::{now_millis, timed, unique_violation};

use super::{ChatStore, EVENT_COLUMNS};
use crate::{
    error::Error,
    moderation::{Actor, Role, Until},
    timeline::{Change, EventRow, MAX_EMOJI_PER_MESSAGE, NewEvent, StoredEvent, kind_of},
};

/// Attempts of an event that collided with a concurrent retry of itself
/// (a unique violation on the idempotency key).
const WRITE_ATTEMPTS: usize = 3;

/// What became of an edit, deletion or reaction change.
#[derive(Debug, Clone)]
pub(crate) enum EventOutcome {
    /// Stored now, with the next seq.
    Stored {
        /// The event members receive.
        event: StoredEvent,
        /// The id of the message it changed.
        message_id: String,
    },
    /// A retry: the event stored earlier with the same `client_id`.
    Duplicate {
        /// That event.
        event: StoredEvent,
        /// The id of the message it changed.
        message_id: String,
    },
    /// Nothing to change (a repeated reaction, or a removal of none): no
    /// event, no seq.
    Unchanged {
        /// The seq of the message.
        target_seq: i64,
        /// Its id.
        message_id: String,
    },
}

#[derive(sqlx::FromRow)]
struct Target {
    message_id: String,
    sender_id: String,
    deleted_at: Option<i64>,
}

impl ChatStore {
    /// Stores one change of a message as a timeline event.
    ///
    /// # Errors
    /// NOT_FOUND for no room or no message at the seq; PERMISSION_DENIED
    /// for another user's message; FAILED_PRECONDITION for a deleted one;
    /// INVALID_ARGUMENT for an emoji past the message's limit; database
    /// failures (then nothing was stored).
    pub(crate) async fn write_event(&self, event: &NewEvent) -> Result<EventOutcome, Error> {
        let mut attempt = 1;
        loop {
            match timed("write_event", self.try_write_event(event)).await {
                Err(Error::Database(err))
                    if unique_violation(&err).is_some() && attempt < WRITE_ATTEMPTS =>
                {
                    // A retry of this event was stored meanwhile; the next
                    // attempt finds it.
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    async fn try_write_event(&self, event: &NewEvent) -> Result<EventOutcome, Error> {
        let room_id = event.room_id.as_str();
        let client_id = (!event.client_id.is_empty()).then_some(event.client_id.as_str());
        let mut tx = self.db.begin_write().await?;

        // The room's row lock first, before anything is read: SQLite
        // cannot upgrade a transaction that read first to a writer once
        // another connection has written (it fails at once instead of
        // waiting), and on Postgres every check then sees no concurrent
        // change.
        let direct: i64 = sqlx::query_scalar(
            "UPDATE room SET last_seq = last_seq WHERE room_id = $1 RETURNING direct",
        )
        .bind(room_id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| Error::RoomNotFound(room_id.to_owned()))?;
        if let Some(client_id) = client_id {
            let sql = format!(
                "SELECT {EVENT_COLUMNS} FROM room_event \
                 WHERE room_id = $1 AND actor_id = $2 AND client_id = $3"
            );
            let earlier = sqlx::query_as::<_, EventRow>(&sql)
                .bind(room_id)
                .bind(&*event.actor_id)
                .bind(client_id)
                .fetch_optional(&mut *tx)
                .await?;
            if let Some(row) = earlier {
                let message_id: Option<String> = sqlx::query_scalar(
                    "SELECT message_id FROM message WHERE room_id = $1 AND seq = $2",
                )
                .bind(room_id)
                .bind(row.target_seq)
                .fetch_optional(&mut *tx)
                .await?;
                if let Some(stored) = row.into_event() {
                    return Ok(EventOutcome::Duplicate {
                        event: stored,
                        message_id: message_id.unwrap_or_default(),
                    });
                }
            }
        }

        if event.change.is_about_room() {
            return self
                .write_room_event(tx, event, direct != 0)
                .await
                .map(|event| EventOutcome::Stored {
                    event,
                    message_id: String::new(),
                });
        }
        let target = sqlx::query_as::<_, Target>(
            "SELECT message_id, sender_id, deleted_at FROM message WHERE room_id = $1 AND seq = $2",
        )
        .bind(room_id)
        .bind(event.target_seq)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| Error::NoSuchMessage {
            room: room_id.to_owned(),
            seq: event.target_seq,
        })?;
        let own = target.sender_id == *event.actor_id;
        let now = now_millis();
        match &event.change {
            Change::Edit { .. } if !own => return Err(Error::NotYourMessage(event.target_seq)),
            Change::Delete if !own => {
                let actor = actor_in(&mut tx, room_id, &event.actor_id, event.actor_admin).await?;
                if !actor.deletes_any() {
                    return Err(Error::NotYourMessage(event.target_seq));
                }
            }
            _ => {}
        }
        if target.deleted_at.is_some() {
            return Err(Error::MessageDeleted(event.target_seq));
        }
        if matches!(event.change, Change::Edit { .. } | Change::React { .. })
            && muted(&mut tx, room_id, &event.actor_id, now).await?
        {
            return Err(Error::Muted(room_id.to_owned()));
        }
        if let Change::React { emoji, remove } = &event.change {
            let mine: Option<i64> = sqlx::query_scalar(
                "SELECT seq FROM reaction \
                 WHERE room_id = $1 AND target_seq = $2 AND emoji = $3 AND user_id = $4",
            )
            .bind(room_id)
            .bind(event.target_seq)
            .bind(emoji)
            .bind(&*event.actor_id)
            .fetch_optional(&mut *tx)
            .await?;
            if mine.is_some() != *remove {
                return Ok(EventOutcome::Unchanged {
                    target_seq: event.target_seq,
                    message_id: target.message_id,
                });
            }
            if !*remove {
                self.check_emoji_room(&mut tx, room_id, event.target_seq, emoji)
                    .await?;
            }
        }

        let seq = next_seq(&mut tx, room_id, now).await?;
        let detail = match &event.change {
            Change::Edit { content } => {
                sqlx::query(
                    "UPDATE message SET original_content = COALESCE(original_content, content), \
                     content = $3, edited_at = $4 WHERE room_id = $1 AND seq = $2",
                )
                .bind(room_id)
                .bind(event.target_seq)
                .bind(content)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                content.clone()
            }
            Change::Delete => {
                // The text is gone for good: no copy is kept.
                sqlx::query(
                    "UPDATE message SET content = '', original_content = NULL, \
                     deleted_at = $3, deleted_by = $4 WHERE room_id = $1 AND seq = $2",
                )
                .bind(room_id)
                .bind(event.target_seq)
                .bind(now)
                .bind(&*event.actor_id)
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "INSERT INTO message_deletion (room_id, seq, sender_id) VALUES ($1, $2, $3)",
                )
                .bind(room_id)
                .bind(event.target_seq)
                .bind(&target.sender_id)
                .execute(&mut *tx)
                .await?;
                String::new()
            }
            Change::React {
                emoji,
                remove: false,
            } => {
                sqlx::query(
                    "INSERT INTO reaction (room_id, target_seq, emoji, user_id, seq) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(room_id)
                .bind(event.target_seq)
                .bind(emoji)
                .bind(&*event.actor_id)
                .bind(seq)
                .execute(&mut *tx)
                .await?;
                emoji.clone()
            }
            Change::Moderate { .. } | Change::UpdateRoom { .. } => String::new(),
            Change::React {
                emoji,
                remove: true,
            } => {
                sqlx::query(
                    "DELETE FROM reaction \
                     WHERE room_id = $1 AND target_seq = $2 AND emoji = $3 AND user_id = $4",
                )
                .bind(room_id)
                .bind(event.target_seq)
                .bind(emoji)
                .bind(&*event.actor_id)
                .execute(&mut *tx)
                .await?;
                emoji.clone()
            }
        };
        let row = EventRow {
            room_id: room_id.to_owned(),
            seq,
            kind: kind_of(&event.change).to_owned(),
            target_seq: event.target_seq,
            actor_id: event.actor_id.to_string(),
            actor_name: event.actor_name.to_string(),
            detail,
            created_at: now,
        };
        let event = insert_event(&mut tx, row, client_id).await?;
        tx.commit().await?;
        Ok(EventOutcome::Stored {
            event,
            message_id: target.message_id,
        })
    }

    /// Refuses a new emoji on a message that has the most distinct ones.
    async fn check_emoji_room(
        &self,
        tx: &mut Tx<'_>,
        room_id: &str,
        target_seq: i64,
        emoji: &str,
    ) -> Result<(), Error> {
        let used: Option<i64> = sqlx::query_scalar(
            "SELECT seq FROM reaction WHERE room_id = $1 AND target_seq = $2 AND emoji = $3 LIMIT 1",
        )
        .bind(room_id)
        .bind(target_seq)
        .bind(emoji)
        .fetch_optional(&mut **tx)
        .await?;
        if used.is_some() {
            return Ok(());
        }
        let distinct: i64 = sqlx::query_scalar(
            "SELECT count(DISTINCT emoji) FROM reaction WHERE room_id = $1 AND target_seq = $2",
        )
        .bind(room_id)
        .bind(target_seq)
        .fetch_one(&mut **tx)
        .await?;
        if distinct >= MAX_EMOJI_PER_MESSAGE {
            return Err(Error::invalid(
                "emoji",
                format!("a message has at most {MAX_EMOJI_PER_MESSAGE} distinct emoji"),
            ));
        }
        Ok(())
    }
}

/// The transaction of a timeline event.
pub(super) type Tx<'a> = sqlx::Transaction<'a, sqlx::Any>;

/// Takes the room's next seq (its row is locked already).
pub(super) async fn next_seq(tx: &mut Tx<'_>, room_id: &str, now: i64) -> Result<i64, Error> {
    Ok(sqlx::query_scalar(
        "UPDATE room SET last_seq = last_seq + 1, last_event_at = $2 \
         WHERE room_id = $1 RETURNING last_seq",
    )
    .bind(room_id)
    .bind(now)
    .fetch_one(&mut **tx)
    .await?)
}

/// Stores an event's row, and answers the event members receive.
pub(super) async fn insert_event(
    tx: &mut Tx<'_>,
    row: EventRow,
    client_id: Option<&str>,
) -> Result<StoredEvent, Error> {
    sqlx::query(
        "INSERT INTO room_event (room_id, seq, kind, target_seq, actor_id, actor_name, \
         detail, client_id, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(&row.room_id)
    .bind(row.seq)
    .bind(&row.kind)
    .bind(row.target_seq)
    .bind(&row.actor_id)
    .bind(&row.actor_name)
    .bind(&row.detail)
    .bind(client_id)
    .bind(row.created_at)
    .execute(&mut **tx)
    .await?;
    row.into_event()
        .ok_or_else(|| Error::Internal(anyhow::anyhow!("an event of an unknown kind")))
}

/// The actor's standing in the room.
pub(super) async fn actor_in(
    tx: &mut Tx<'_>,
    room_id: &str,
    user_id: &str,
    admin: bool,
) -> Result<Actor, Error> {
    let role: Option<String> =
        sqlx::query_scalar("SELECT role FROM room_member WHERE room_id = $1 AND user_id = $2")
            .bind(room_id)
            .bind(user_id)
            .fetch_optional(&mut **tx)
            .await?;
    Ok(Actor {
        role: role.as_deref().map(Role::from_stored),
        admin,
    })
}

/// Whether the user's ban or mute (`kind`) is in force at `now`.
pub(super) async fn sanction<'e>(
    executor: impl sqlx::Executor<'e, Database = sqlx::Any>,
    room_id: &str,
    user_id: &str,
    kind: &str,
    now: i64,
) -> Result<Option<Until>, Error> {
    let row: Option<Option<i64>> = sqlx::query_scalar(
        "SELECT until FROM room_sanction WHERE room_id = $1 AND user_id = $2 AND kind = $3",
    )
    .bind(room_id)
    .bind(user_id)
    .bind(kind)
    .fetch_optional(executor)
    .await?;
    Ok(row
        .map(Until::from_stored)
        .filter(|until| until.in_force(now)))
}

async fn muted(tx: &mut Tx<'_>, room_id: &str, user_id: &str, now: i64) -> Result<bool, Error> {
    Ok(sanction(&mut **tx, room_id, user_id, "mute", now)
        .await?
        .is_some())
}
