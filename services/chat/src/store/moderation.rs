//! Room-level timeline events (moderation and room updates), room
//! deletion, direct rooms and what a join needs to know about its user:
//! role, ban and mute.
//!
//! Each moderation or update runs in the transaction that stores its
//! event, under the room's row lock (see [`super::events`]): the
//! permission check sees the roles as they are when the event takes its
//! seq, so two moderators racing cannot both act on stale roles.

use parley_runtime::storage::{now_millis, timed};

use super::{
    ChatStore,
    events::{Tx, actor_in, insert_event, next_seq, sanction},
};
use crate::{
    domain::{Room, RoomId},
    error::Error,
    moderation::{self, Action, Role, Until},
    timeline::{Change, EventRow, MemberDetail, NewEvent, RoomDetail, StoredEvent, kind_of},
};

/// What a member's sessions need to know about them in a room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MemberState {
    /// Their read marker.
    pub(crate) read_seq: i64,
    /// Their role.
    pub(crate) role: Role,
    /// Their mute, when one is in force.
    pub(crate) muted: Option<Until>,
}

#[derive(sqlx::FromRow)]
struct MemberRow {
    read_seq: i64,
    role: String,
    mute_until: Option<i64>,
    muted: i64,
}

impl ChatStore {
    /// Stores a moderation or room update (the room's row is locked), and
    /// commits.
    pub(super) async fn write_room_event(
        &self,
        mut tx: Tx<'_>,
        event: &NewEvent,
        direct: bool,
    ) -> Result<StoredEvent, Error> {
        let room_id = event.room_id.as_str();
        if direct {
            return Err(Error::DirectRoom(room_id.to_owned()));
        }
        let now = now_millis();
        let actor = actor_in(&mut tx, room_id, &event.actor_id, event.actor_admin).await?;
        let detail = match &event.change {
            Change::Moderate {
                user_id,
                action,
                until,
            } => {
                let target: Option<String> = sqlx::query_scalar(
                    "SELECT role FROM room_member WHERE room_id = $1 AND user_id = $2",
                )
                .bind(room_id)
                .bind(user_id)
                .fetch_optional(&mut *tx)
                .await?;
                let target = target.as_deref().map(Role::from_stored);
                moderation::check(actor, *action, target)?;
                let role = apply(&mut tx, room_id, user_id, *action, *until, target, now).await?;
                let name: Option<String> =
                    sqlx::query_scalar("SELECT name FROM known_user WHERE user_id = $1")
                        .bind(user_id)
                        .fetch_optional(&mut *tx)
                        .await?;
                serde_json::to_string(&MemberDetail {
                    user_id: user_id.clone(),
                    name: name.unwrap_or_else(|| user_id.clone()),
                    action: action.as_str().to_owned(),
                    role: role.map(|role| role.as_str().to_owned()).unwrap_or_default(),
                    until: until.ms(),
                })
            }
            Change::UpdateRoom {
                name,
                password_hash,
            } => {
                if !actor.manages_room() {
                    return Err(Error::NotAllowed(
                        "only the room's owner (or an admin) changes it".into(),
                    ));
                }
                if let Some(name) = name {
                    sqlx::query("UPDATE room SET name = $2 WHERE room_id = $1")
                        .bind(room_id)
                        .bind(name)
                        .execute(&mut *tx)
                        .await?;
                }
                if let Some(hash) = password_hash {
                    sqlx::query("UPDATE room SET password_hash = $2 WHERE room_id = $1")
                        .bind(room_id)
                        .bind(hash.as_deref())
                        .execute(&mut *tx)
                        .await?;
                }
                let (name, private): (String, i64) = sqlx::query_as(
                    "SELECT name, CAST(CASE WHEN password_hash IS NULL THEN 0 ELSE 1 END AS BIGINT) \
                     FROM room WHERE room_id = $1",
                )
                .bind(room_id)
                .fetch_one(&mut *tx)
                .await?;
                serde_json::to_string(&RoomDetail {
                    name,
                    private: private != 0,
                })
            }
            _ => return Err(Error::Internal(anyhow::anyhow!("not a room event"))),
        }
        .map_err(|err| Error::Internal(err.into()))?;
        let seq = next_seq(&mut tx, room_id, now).await?;
        let row = EventRow {
            room_id: room_id.to_owned(),
            seq,
            kind: kind_of(&event.change).to_owned(),
            target_seq: 0,
            actor_id: event.actor_id.to_string(),
            actor_name: event.actor_name.to_string(),
            detail,
            created_at: now,
        };
        let client_id = (!event.client_id.is_empty()).then_some(event.client_id.as_str());
        let stored = insert_event(&mut tx, row, client_id).await?;
        tx.commit().await?;
        Ok(stored)
    }

    /// What a join needs about its user in the room, or `None` for a
    /// non-member.
    ///
    /// # Errors
    /// Database failures.
    pub(crate) async fn member(
        &self,
        room_id: &str,
        user_id: &str,
    ) -> Result<Option<MemberState>, Error> {
        let row = timed(
            "get_member_state",
            sqlx::query_as::<_, MemberRow>(
                "SELECT m.read_seq, m.role, s.until AS mute_until, \
                    CAST(CASE WHEN s.kind IS NULL THEN 0 ELSE 1 END AS BIGINT) AS muted \
                 FROM room_member m LEFT JOIN room_sanction s \
                    ON s.room_id = m.room_id AND s.user_id = m.user_id AND s.kind = 'mute' \
                        AND (s.until IS NULL OR s.until > $3) \
                 WHERE m.room_id = $1 AND m.user_id = $2",
            )
            .bind(room_id)
            .bind(user_id)
            .bind(now_millis())
            .fetch_optional(self.db.pool()),
        )
        .await?;
        Ok(row.map(|row| MemberState {
            read_seq: row.read_seq,
            role: Role::from_stored(&row.role),
            muted: (row.muted != 0).then(|| Until::from_stored(row.mute_until)),
        }))
    }

    /// Whether `user_id` was kicked or banned from the room after `since`:
    /// a connection resuming from `since` missed its own removal.
    ///
    /// # Errors
    /// Database failures.
    pub(crate) async fn removed_since(
        &self,
        room_id: &str,
        user_id: &str,
        since: i64,
    ) -> Result<bool, Error> {
        let details: Vec<String> = timed(
            "get_removals",
            sqlx::query_scalar(
                "SELECT detail FROM room_event \
                 WHERE room_id = $1 AND kind = 'member_update' AND seq > $2",
            )
            .bind(room_id)
            .bind(since)
            .fetch_all(self.db.pool()),
        )
        .await?;
        Ok(details.iter().any(|detail| {
            serde_json::from_str::<MemberDetail>(detail).is_ok_and(|detail| {
                detail.user_id == user_id
                    && Action::from_stored(&detail.action, &detail.role).is_some_and(Action::evicts)
            })
        }))
    }

    /// The user's ban from the room, when one is in force.
    ///
    /// # Errors
    /// Database failures.
    pub(crate) async fn ban(&self, room_id: &str, user_id: &str) -> Result<Option<Until>, Error> {
        timed(
            "get_ban",
            sanction(self.db.pool(), room_id, user_id, "ban", now_millis()),
        )
        .await
    }

    /// Remembers the username an access token gave for a user.
    ///
    /// # Errors
    /// Database failures.
    pub(crate) async fn remember_name(&self, user_id: &str, name: &str) -> Result<(), Error> {
        timed(
            "remember_name",
            sqlx::query(
                "INSERT INTO known_user (user_id, name) VALUES ($1, $2) \
                 ON CONFLICT (user_id) DO UPDATE SET name = excluded.name \
                 WHERE known_user.name <> excluded.name",
            )
            .bind(user_id)
            .bind(name)
            .execute(self.db.pool()),
        )
        .await?;
        Ok(())
    }

    /// Deletes a room with everything in it, keeping its id from being
    /// used again.
    ///
    /// # Errors
    /// NOT_FOUND for no room; FAILED_PRECONDITION for a direct room;
    /// PERMISSION_DENIED unless the actor is its owner or an admin.
    pub(crate) async fn delete_room(
        &self,
        room_id: &RoomId,
        actor_id: &str,
        admin: bool,
    ) -> Result<(), Error> {
        let mut tx = self.db.begin_write().await?;
        let direct: i64 = sqlx::query_scalar(
            "UPDATE room SET last_seq = last_seq WHERE room_id = $1 RETURNING direct",
        )
        .bind(room_id.as_str())
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| Error::RoomNotFound(room_id.to_string()))?;
        if direct != 0 {
            return Err(Error::DirectRoom(room_id.to_string()));
        }
        if !actor_in(&mut tx, room_id, actor_id, admin)
            .await?
            .manages_room()
        {
            return Err(Error::NotAllowed(
                "only the room's owner (or an admin) deletes it".into(),
            ));
        }
        // Children first: foreign keys are not relied on to cascade.
        for table in [
            "reaction",
            "message_deletion",
            "room_event",
            "message",
            "room_member",
            "room_sanction",
            "direct_room",
            "room",
        ] {
            sqlx::query(&format!("DELETE FROM {table} WHERE room_id = $1"))
                .bind(room_id.as_str())
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("INSERT INTO deleted_room (room_id, deleted_at) VALUES ($1, $2)")
            .bind(room_id.as_str())
            .bind(now_millis())
            .execute(&mut *tx)
            .await?;
        timed("delete_room", tx.commit()).await?;
        Ok(())
    }

    /// The direct room of `user_id` and `peer_id`, created (with both as
    /// members) if there is none; answers it and whether it was created.
    /// Two callers racing on two replicas make one room: the pair's
    /// primary key admits one insert, and the other answers that room.
    ///
    /// # Errors
    /// Database failures.
    pub(crate) async fn open_direct_room(
        &self,
        room_id: String,
        user_id: &str,
        peer_id: &str,
    ) -> Result<(Room, bool), Error> {
        let (low, high) = if user_id < peer_id {
            (user_id, peer_id)
        } else {
            (peer_id, user_id)
        };
        let now = now_millis();
        let existing: Option<String> = sqlx::query_scalar(
            "SELECT room_id FROM direct_room WHERE user_low = $1 AND user_high = $2",
        )
        .bind(low)
        .bind(high)
        .fetch_optional(self.db.pool())
        .await?;
        let (room_id, created) = match existing {
            Some(existing) => (existing, false),
            None => {
                self.insert_direct_room(room_id, user_id, low, high, now)
                    .await?
            }
        };
        // Both are members again, whoever left meanwhile.
        for member in [user_id, peer_id] {
            sqlx::query(
                "INSERT INTO room_member (room_id, user_id, joined_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (room_id, user_id) DO NOTHING",
            )
            .bind(&room_id)
            .bind(member)
            .bind(now)
            .execute(self.db.pool())
            .await?;
        }
        let room = self
            .room(&room_id)
            .await?
            .ok_or_else(|| Error::RoomNotFound(room_id.clone()))?;
        Ok((room, created))
    }

    async fn insert_direct_room(
        &self,
        room_id: String,
        user_id: &str,
        low: &str,
        high: &str,
        now: i64,
    ) -> Result<(String, bool), Error> {
        let mut tx = self.db.begin_write().await?;
        sqlx::query(
            "INSERT INTO room (room_id, name, short_code, password_hash, created_by, created_at, \
             last_seq, direct, last_event_at) VALUES ($1, '', NULL, NULL, $2, $3, 0, 1, $3)",
        )
        .bind(&room_id)
        .bind(user_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let inserted = sqlx::query(
            "INSERT INTO direct_room (user_low, user_high, room_id) VALUES ($1, $2, $3) \
             ON CONFLICT (user_low, user_high) DO NOTHING",
        )
        .bind(low)
        .bind(high)
        .bind(&room_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 1 {
            timed("open_direct_room", tx.commit()).await?;
            return Ok((room_id, true));
        }
        // The other user won the race: their room is the pair's.
        tx.rollback().await?;
        let existing: String = sqlx::query_scalar(
            "SELECT room_id FROM direct_room WHERE user_low = $1 AND user_high = $2",
        )
        .bind(low)
        .bind(high)
        .fetch_one(self.db.pool())
        .await?;
        Ok((existing, false))
    }

    /// The two users of a direct room.
    ///
    /// # Errors
    /// Database failures.
    pub(crate) async fn direct_pair(
        &self,
        room_id: &str,
    ) -> Result<Option<(String, String)>, Error> {
        Ok(timed(
            "get_direct_pair",
            sqlx::query_as::<_, (String, String)>(
                "SELECT user_low, user_high FROM direct_room WHERE room_id = $1",
            )
            .bind(room_id)
            .fetch_optional(self.db.pool()),
        )
        .await?)
    }

    /// The username chat knows for a user.
    ///
    /// # Errors
    /// Database failures.
    pub(crate) async fn known_name(&self, user_id: &str) -> Result<Option<String>, Error> {
        Ok(timed(
            "get_known_name",
            sqlx::query_scalar("SELECT name FROM known_user WHERE user_id = $1")
                .bind(user_id)
                .fetch_optional(self.db.pool()),
        )
        .await?)
    }
}

/// Applies a moderation action; answers the target's role afterwards
/// (`None` once not a member).
async fn apply(
    tx: &mut Tx<'_>,
    room_id: &str,
    user_id: &str,
    action: Action,
    until: Until,
    role: Option<Role>,
    now: i64,
) -> Result<Option<Role>, Error> {
    let needs_member = matches!(action, Action::Kick | Action::Mute | Action::SetRole(_));
    if needs_member && role.is_none() {
        return Err(Error::NotInRoom(user_id.to_owned()));
    }
    match action {
        Action::Kick | Action::Ban => {
            if action == Action::Ban {
                upsert_sanction(tx, room_id, user_id, "ban", until).await?;
            }
            sqlx::query("DELETE FROM room_member WHERE room_id = $1 AND user_id = $2")
                .bind(room_id)
                .bind(user_id)
                .execute(&mut **tx)
                .await?;
            Ok(None)
        }
        Action::Mute => {
            upsert_sanction(tx, room_id, user_id, "mute", until).await?;
            Ok(role)
        }
        Action::Unban | Action::Unmute => {
            let (kind, what) = if action == Action::Unban {
                ("ban", "banned")
            } else {
                ("mute", "muted")
            };
            if sanction(&mut **tx, room_id, user_id, kind, now)
                .await?
                .is_none()
            {
                return Err(Error::NotSanctioned {
                    user: user_id.to_owned(),
                    what,
                });
            }
            sqlx::query(
                "DELETE FROM room_sanction WHERE room_id = $1 AND user_id = $2 AND kind = $3",
            )
            .bind(room_id)
            .bind(user_id)
            .bind(kind)
            .execute(&mut **tx)
            .await?;
            Ok(role)
        }
        Action::SetRole(new_role) => {
            sqlx::query("UPDATE room_member SET role = $3 WHERE room_id = $1 AND user_id = $2")
                .bind(room_id)
                .bind(user_id)
                .bind(new_role.as_str())
                .execute(&mut **tx)
                .await?;
            Ok(Some(new_role))
        }
    }
}

async fn upsert_sanction(
    tx: &mut Tx<'_>,
    room_id: &str,
    user_id: &str,
    kind: &str,
    until: Until,
) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO room_sanction (room_id, user_id, kind, until) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (room_id, user_id, kind) DO UPDATE SET until = excluded.until",
    )
    .bind(room_id)
    .bind(user_id)
    .bind(kind)
    .bind(until.ms())
    .execute(&mut **tx)
    .await?;
    Ok(())
}
