//! How a session comes to receive a room, and how it stops: the one place
//! where joins and leaves touch storage, the hub and presence.
//!
//! A join is admitted ([`Engine::admit`]: the room found or created, a
//! private room's password checked, the membership stored), counted into
//! the hub and presence ([`Hub::enter`](crate::hub::Hub::enter), which
//! also subscribes the room on the bus when it is the replica's first
//! session there), and attached ([`Hub::attach`](crate::hub::Hub::attach):
//! `joined`, the replay, then live events, with nothing lost or repeated
//! at the seam). What it returns, a [`Membership`], is the
//! session's place in the room: it lasts until [`Membership::leave`] is
//! awaited or the membership is dropped (the session closed, its stream
//! ended, a join raced its session's close), and either way the session is
//! detached from the hub and counted out of presence exactly once.
//!
//! Removing someone else's sessions (kicks and bans) goes through the same
//! door: whoever owns the session's memberships drops or leaves them.

use std::borrow::Borrow;

use parley_proto::chat::v1::{Joined, Member, PresenceState};
use parley_runtime::storage::{now_millis, timestamp};

use crate::{
    domain::{JoinRequest, JoinTarget, Room, RoomId},
    engine::{Engine, User},
    error::Error,
    hub::Replay,
    link::{Link, SessionId},
    moderation::Until,
    store::MemberState,
};

/// A session's place in a room on this replica: while it lives, the
/// session receives the room's events. Dropping it detaches the session
/// and counts it out of presence (in the background); [`Self::leave`]
/// does the same and waits for it.
#[derive(Debug)]
pub(crate) struct Membership {
    engine: Engine,
    link: Link,
    room_id: RoomId,
    user: User,
    /// The user's mute, kept current by `member_update` events; checked on
    /// each send without a query.
    muted: Option<Until>,
    /// Set once the session was detached, so it happens once.
    detached: bool,
}

/// Where a session's frames go: its stream's link and its id there.
#[derive(Debug, Clone, Copy)]
pub(crate) struct To<'a> {
    /// The stream's link.
    pub(crate) link: &'a Link,
    /// The session on it.
    pub(crate) session: SessionId,
}

impl Engine {
    /// Admits `user` to the room `request` names and starts delivering it
    /// to the session: `joined`, the messages after `since` (when set),
    /// then every live event.
    ///
    /// A session that receives the room already (`already_joined`) is
    /// answered `joined` and its replay again without being counted twice,
    /// and gets no new membership (`None`).
    ///
    /// # Errors
    /// As [`Engine::admit`]; database failures while reading the replay.
    pub(crate) async fn join(
        &self,
        to: To<'_>,
        user: &User,
        request: &JoinRequest,
        since: Option<i64>,
        already_joined: bool,
    ) -> Result<Option<Membership>, Error> {
        let _turn = self.join_turn().await;
        if let (
            Some(since),
            JoinRequest {
                target: JoinTarget::Id(room_id),
                ..
            },
        ) = (since, request)
            && self.store().removed_since(room_id, &user.id, since).await?
        {
            // A connection resuming (a reconnect, or a gateway moving its
            // session) missed its own kick: it stays out, as it would
            // have had it been connected.
            return Err(Error::RemovedSince(room_id.to_string()));
        }
        let (room, state) = self.admit(user, request).await?;
        let membership = if already_joined {
            None
        } else {
            Some(self.enter(&room, user, to.link, &state).await)
        };
        let (members, members_truncated) = capped(self.members(&room.id).await, &user.id);
        let joined = Joined {
            members,
            members_truncated,
            read_seq: state.read_seq,
            name: room.name.clone(),
            private: room.is_private(),
            direct: room.direct,
            role: state.role.as_str().to_owned(),
            muted: state.muted.is_some(),
            muted_until: state.muted.and_then(Until::ms).map(timestamp),
            ..Joined::default()
        };
        let replay = Replay {
            since,
            max: self.limits().max_replay,
        };
        let attached = self
            .hub()
            .attach(
                to.link,
                to.session,
                &room.id,
                replay,
                joined,
                already_joined,
            )
            .await;
        match (attached, membership) {
            (Ok(()), membership) => Ok(membership),
            (Err(err), Some(mut membership)) => {
                // Entered but never attached: only presence is undone.
                membership.detached = true;
                membership.exit().await;
                Err(err)
            }
            (Err(err), None) => Err(err),
        }
    }

    /// Ends `user`'s stored membership of the room, then stops the
    /// session's delivery of it when it had joined (`membership`); only
    /// then does the caller answer `left`, so nothing of the room follows.
    ///
    /// # Errors
    /// Database failures, handing the membership back untouched.
    pub(crate) async fn leave(
        &self,
        user: &User,
        room_id: &RoomId,
        membership: Option<Membership>,
    ) -> Result<(), (Error, Option<Membership>)> {
        if let Err(err) = self.joins_and_leaves(user) {
            return Err((err, membership));
        }
        if let Err(err) = self.store().remove_member(room_id, &user.id).await {
            return Err((err, membership));
        }
        if let Some(membership) = membership {
            membership.leave().await;
        }
        Ok(())
    }

    /// Counts a session of `user` into a room it was admitted to and, for
    /// the user's first session anywhere, announces them.
    async fn enter(
        &self,
        room: &Room,
        user: &User,
        link: &Link,
        state: &MemberState,
    ) -> Membership {
        let first_here = self
            .hub()
            .enter(&room.id, room.last_seq, &user.id, &user.name);
        if first_here && self.presence().arrive(&room.id, &user.id, &user.name).await {
            self.announce(&room.id, &user.id, &user.name, PresenceState::Joined);
        }
        Membership {
            engine: self.clone(),
            link: link.clone(),
            room_id: room.id.clone(),
            user: user.clone(),
            muted: state.muted,
            detached: false,
        }
    }
}

impl Membership {
    /// The room.
    pub(crate) fn room_id(&self) -> &RoomId {
        &self.room_id
    }

    /// Whether the user is muted in the room now.
    pub(crate) fn is_muted(&self) -> bool {
        self.muted.is_some_and(|until| until.in_force(now_millis()))
    }

    /// A moderator muted (`Some`) or unmuted (`None`) the user.
    pub(crate) fn set_muted(&mut self, muted: Option<Until>) {
        self.muted = muted;
    }

    /// Stops delivering the room to the session and, for the user's last
    /// session anywhere, announces that they left; returns once that is
    /// done.
    pub(crate) async fn leave(mut self) {
        self.detach();
        self.exit().await;
    }

    fn detach(&mut self) {
        if !self.detached {
            self.detached = true;
            self.engine.hub().detach(&self.link, &self.room_id);
        }
    }

    /// Counts the session out of the hub and presence.
    async fn exit(&self) {
        exit(&self.engine, &self.room_id, &self.user).await;
    }
}

/// Counts a session of `user` out of a room and, for the user's last
/// session anywhere, announces that they left.
async fn exit(engine: &Engine, room_id: &RoomId, user: &User) {
    if !engine.hub().exit(room_id, &user.id) {
        return;
    }
    if engine
        .presence()
        .depart(room_id, &user.id, &user.name)
        .await
    {
        engine.announce(room_id, &user.id, &user.name, PresenceState::Left);
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        if self.detached {
            return;
        }
        self.detach();
        // Presence may need Redis: counted out in the background. Without
        // a runtime (the process is ending) there is nobody to tell.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let engine = self.engine.clone();
            let room_id = self.room_id.clone();
            let user = self.user.clone();
            runtime.spawn(async move { exit(&engine, &room_id, &user).await });
        }
    }
}

impl Borrow<str> for Membership {
    fn borrow(&self) -> &str {
        &self.room_id
    }
}

/// Memberships are told apart by their room: a session has one per room.
impl PartialEq for Membership {
    fn eq(&self, other: &Self) -> bool {
        self.room_id == other.room_id
    }
}

/// Most members a `joined` frame lists: a huge room's whole list would
/// outgrow a gRPC message and the gateway stream it shares with other
/// sessions.
pub(crate) const MAX_JOINED_MEMBERS: usize = 1000;

/// The members a `joined` frame carries, in their order, the joining user
/// always among them, and whether some were left out.
fn capped(mut members: Vec<Member>, user_id: &str) -> (Vec<Member>, bool) {
    let truncated = members.len() > MAX_JOINED_MEMBERS;
    if truncated {
        if let Some(at) = members.iter().position(|m| m.user_id == user_id)
            && at >= MAX_JOINED_MEMBERS
        {
            members.swap(MAX_JOINED_MEMBERS - 1, at);
        }
        members.truncate(MAX_JOINED_MEMBERS);
    }
    (members, truncated)
}

#[cfg(test)]
mod capped_tests {
    use super::*;

    fn member(i: usize) -> Member {
        Member {
            user_id: format!("u{i}"),
            name: format!("n{i}"),
        }
    }

    #[test]
    fn a_huge_room_lists_a_thousand_the_joiner_among_them() {
        let everyone: Vec<Member> = (0..MAX_JOINED_MEMBERS + 500).map(member).collect();
        let (listed, truncated) = capped(everyone, "u1400");
        assert!(truncated);
        assert_eq!(listed.len(), MAX_JOINED_MEMBERS);
        assert!(
            listed.iter().any(|m| m.user_id == "u1400"),
            "the joiner is listed"
        );
        assert_eq!(listed[0].user_id, "u0", "the others keep their order");

        let few: Vec<Member> = (0..3).map(member).collect();
        let (listed, truncated) = capped(few.clone(), "u2");
        assert!(!truncated);
        assert_eq!(listed, few);
    }
}
