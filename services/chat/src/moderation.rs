//! Roles in a room and who may act on whom (README: "Moderation").
//!
//! The rules are pure functions of the actor's and the target's roles, so
//! they are tested here alone; the store applies them inside the
//! transaction that records the action, so two moderators racing see one
//! consistent room.

use std::time::Duration;

use parley_proto::chat::v1::MemberAction;

use crate::error::Error;

/// Longest user id accepted as a moderation target or direct-room peer.
pub(crate) const MAX_USER_ID_LEN: usize = 128;
/// Longest ban or mute; a longer one is refused rather than overflowing.
const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// A member's role in a room, lowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Role {
    /// Anyone who joined.
    Member,
    /// Kicks, bans and mutes members; deletes any message.
    Moderator,
    /// The room's creator: everything a moderator does, on moderators too,
    /// and roles, renames, passwords and deletion.
    Owner,
}

impl Role {
    /// The role as stored and as frames spell it.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Member => "member",
            Self::Moderator => "moderator",
            Self::Owner => "owner",
        }
    }

    /// A stored role; an unknown one reads as the least.
    pub(crate) fn from_stored(role: &str) -> Self {
        match role {
            "owner" => Self::Owner,
            "moderator" => Self::Moderator,
            _ => Self::Member,
        }
    }

    /// A role `set_role` may give: `member` or `moderator`.
    ///
    /// # Errors
    /// INVALID_ARGUMENT naming `role`.
    pub(crate) fn assignable(role: &str) -> Result<Self, Error> {
        match role {
            "member" => Ok(Self::Member),
            "moderator" => Ok(Self::Moderator),
            _ => Err(Error::invalid(
                "role",
                "must be `member` or `moderator` (a room has one owner, its creator)",
            )),
        }
    }
}

/// What a moderator does to a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Removed from the room; may join again.
    Kick,
    /// Removed and kept out.
    Ban,
    /// A ban ended.
    Unban,
    /// Kept from sending, editing and reacting.
    Mute,
    /// A mute ended.
    Unmute,
    /// Given a role.
    SetRole(Role),
}

impl Action {
    /// The action a frame or RPC names; `role` is read for `SET_ROLE`.
    ///
    /// # Errors
    /// INVALID_ARGUMENT for no action or a bad role.
    pub(crate) fn from_proto(action: MemberAction, role: &str) -> Result<Self, Error> {
        Ok(match action {
            MemberAction::Kick => Self::Kick,
            MemberAction::Ban => Self::Ban,
            MemberAction::Unban => Self::Unban,
            MemberAction::Mute => Self::Mute,
            MemberAction::Unmute => Self::Unmute,
            MemberAction::SetRole => Self::SetRole(Role::assignable(role)?),
            MemberAction::Unspecified => {
                return Err(Error::invalid(
                    "action",
                    "must be one of kick, ban, unban, mute, unmute, set_role",
                ));
            }
        })
    }

    /// The action as frames carry it.
    pub(crate) fn to_proto(self) -> MemberAction {
        match self {
            Self::Kick => MemberAction::Kick,
            Self::Ban => MemberAction::Ban,
            Self::Unban => MemberAction::Unban,
            Self::Mute => MemberAction::Mute,
            Self::Unmute => MemberAction::Unmute,
            Self::SetRole(_) => MemberAction::SetRole,
        }
    }

    /// The action as stored in an event's detail.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Kick => "kick",
            Self::Ban => "ban",
            Self::Unban => "unban",
            Self::Mute => "mute",
            Self::Unmute => "unmute",
            Self::SetRole(_) => "set_role",
        }
    }

    /// A stored action; `None` for one this version does not know.
    pub(crate) fn from_stored(action: &str, role: &str) -> Option<Self> {
        Some(match action {
            "kick" => Self::Kick,
            "ban" => Self::Ban,
            "unban" => Self::Unban,
            "mute" => Self::Mute,
            "unmute" => Self::Unmute,
            "set_role" => Self::SetRole(Role::from_stored(role)),
            _ => return None,
        })
    }

    /// Whether the member's live sessions leave the room.
    pub(crate) fn evicts(self) -> bool {
        matches!(self, Self::Kick | Self::Ban)
    }

    /// Whether the action takes a duration.
    fn timed(self) -> bool {
        matches!(self, Self::Ban | Self::Mute)
    }
}

/// The end of a ban or mute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Until {
    /// Until lifted.
    Forever,
    /// Until this Unix millisecond.
    At(i64),
}

impl Until {
    /// The stored form: `None` for no end.
    pub(crate) fn from_stored(until: Option<i64>) -> Self {
        until.map_or(Self::Forever, Self::At)
    }

    /// The stored form.
    pub(crate) fn ms(self) -> Option<i64> {
        match self {
            Self::Forever => None,
            Self::At(at) => Some(at),
        }
    }

    /// Whether it is still in force at `now` (Unix milliseconds).
    pub(crate) fn in_force(self, now: i64) -> bool {
        match self {
            Self::Forever => true,
            Self::At(at) => at > now,
        }
    }
}

/// When a ban or mute of `duration` from `now` ends; no duration (or a
/// zero one) means no end. Other actions take none.
///
/// # Errors
/// INVALID_ARGUMENT for a duration on another action, a negative one, or
/// one past a century.
pub(crate) fn until(action: Action, duration: Option<Duration>, now: i64) -> Result<Until, Error> {
    let Some(duration) = duration.filter(|d| !d.is_zero()) else {
        return Ok(Until::Forever);
    };
    if !action.timed() {
        return Err(Error::invalid("duration", "only bans and mutes take one"));
    }
    if duration > MAX_DURATION {
        return Err(Error::invalid("duration", "must be at most 100 years"));
    }
    let ms = i64::try_from(duration.as_millis()).unwrap_or(i64::MAX);
    Ok(Until::At(now.saturating_add(ms.max(1))))
}

/// Checks a protobuf duration: not negative, and converted.
///
/// # Errors
/// INVALID_ARGUMENT naming `duration`.
pub(crate) fn duration(
    duration: Option<&prost_types::Duration>,
) -> Result<Option<Duration>, Error> {
    let Some(duration) = duration else {
        return Ok(None);
    };
    Duration::try_from(*duration)
        .map(Some)
        .map_err(|_| Error::invalid("duration", "must not be negative"))
}

/// Who acts: their role in the room (`None` when not a member) and whether
/// they hold the global `admin` role.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Actor {
    /// Their role in the room.
    pub(crate) role: Option<Role>,
    /// Whether they are an admin.
    pub(crate) admin: bool,
}

impl Actor {
    /// Whether they may delete other users' messages.
    pub(crate) fn deletes_any(self) -> bool {
        self.admin || self.role >= Some(Role::Moderator)
    }

    /// Whether they may rename, lock or delete the room.
    pub(crate) fn manages_room(self) -> bool {
        self.admin || self.role == Some(Role::Owner)
    }
}

/// Whether `actor` may do `action` to a user whose role is `target`
/// (`None`: not a member). Moderators act on members, owners on
/// moderators and members, admins on anyone; only owners (and admins)
/// give roles.
///
/// # Errors
/// PERMISSION_DENIED saying who may.
pub(crate) fn check(actor: Actor, action: Action, target: Option<Role>) -> Result<(), Error> {
    if actor.admin {
        return Ok(());
    }
    let needed = match action {
        Action::SetRole(_) => Role::Owner,
        _ => Role::Moderator,
    };
    let Some(role) = actor.role.filter(|role| *role >= needed) else {
        return Err(Error::NotAllowed(match needed {
            Role::Owner => "only the room's owner (or an admin) gives roles".into(),
            _ => "only the room's moderators and owner (or an admin) moderate it".into(),
        }));
    };
    let target = target.unwrap_or(Role::Member);
    if target >= role {
        return Err(Error::NotAllowed(format!(
            "a {} cannot act on a {}",
            role.as_str(),
            target.as_str()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn actor(role: Option<Role>) -> Actor {
        Actor { role, admin: false }
    }

    #[test]
    fn moderators_act_on_members_owners_on_both_admins_on_anyone() {
        let (member, moderator, owner) = (Role::Member, Role::Moderator, Role::Owner);
        assert!(check(actor(Some(moderator)), Action::Kick, Some(member)).is_ok());
        assert!(check(actor(Some(moderator)), Action::Ban, None).is_ok());
        assert!(check(actor(Some(moderator)), Action::Kick, Some(moderator)).is_err());
        assert!(check(actor(Some(moderator)), Action::Mute, Some(owner)).is_err());
        assert!(check(actor(Some(owner)), Action::Ban, Some(moderator)).is_ok());
        assert!(check(actor(Some(owner)), Action::Kick, Some(owner)).is_err());
        assert!(check(actor(Some(member)), Action::Kick, Some(member)).is_err());
        assert!(check(actor(None), Action::Unban, None).is_err());
        let admin = Actor {
            role: None,
            admin: true,
        };
        assert!(check(admin, Action::Ban, Some(owner)).is_ok());
        assert!(check(admin, Action::SetRole(member), Some(owner)).is_ok());
    }

    #[test]
    fn only_owners_give_roles() {
        let promote = Action::SetRole(Role::Moderator);
        assert!(check(actor(Some(Role::Owner)), promote, Some(Role::Member)).is_ok());
        let err = check(actor(Some(Role::Moderator)), promote, Some(Role::Member)).unwrap_err();
        assert!(err.to_string().contains("owner"), "{err}");
        assert!(Role::assignable("owner").is_err());
        assert_eq!(Role::assignable("moderator").ok(), Some(Role::Moderator));
    }

    #[test]
    fn durations_end_bans_and_mutes_only() {
        let hour = Some(Duration::from_secs(3600));
        assert_eq!(
            until(Action::Ban, hour, 1_000).ok(),
            Some(Until::At(3_601_000))
        );
        assert_eq!(until(Action::Mute, None, 1_000).ok(), Some(Until::Forever));
        assert_eq!(
            until(Action::Ban, Some(Duration::ZERO), 1).ok(),
            Some(Until::Forever)
        );
        assert!(until(Action::Kick, hour, 1).is_err());
        assert!(until(Action::Ban, Some(Duration::from_secs(u64::MAX)), 1).is_err());
        assert!(Until::At(5).in_force(4));
        assert!(!Until::At(5).in_force(5));
        assert!(Until::Forever.in_force(i64::MAX));
        let negative = prost_types::Duration {
            seconds: -1,
            nanos: 0,
        };
        assert!(duration(Some(&negative)).is_err());
    }

    #[test]
    fn actions_round_trip_through_storage() {
        for action in [
            Action::Kick,
            Action::Ban,
            Action::Unban,
            Action::Mute,
            Action::Unmute,
            Action::SetRole(Role::Moderator),
        ] {
            let role = match action {
                Action::SetRole(role) => role.as_str(),
                _ => "",
            };
            assert_eq!(Action::from_stored(action.as_str(), role), Some(action));
            assert_eq!(
                Action::from_proto(action.to_proto(), role).ok(),
                Some(action)
            );
        }
        assert!(Action::from_proto(MemberAction::Unspecified, "").is_err());
    }
}
