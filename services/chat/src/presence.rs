//! Who is online in which room, across replicas.
//!
//! In-process, the hub's own count of local sessions is the whole truth.
//! With Redis, each room has a sorted set of `user_id|replica|name` entries
//! scored by their expiry: every replica refreshes its own entries with a
//! heartbeat and sweeps expired ones, so the members of a replica that
//! crashed disappear within one TTL and their `left` presence is still
//! announced. Scripts make "first connection of this user" and "last
//! connection of this user" atomic across replicas. When Redis cannot be
//! reached, presence degrades to what this replica knows.

use std::{collections::BTreeMap, time::Duration};

use parley_proto::chat::v1::Member;
use parley_runtime::storage::now_millis;

use crate::redis_target::{Commands, RedisTarget, by_slot};

/// Key prefix of each room's presence set.
const KEY_PREFIX: &str = "parley:chat:presence:";
/// How long one presence call may take before falling back to local
/// knowledge.
const CALL_TIMEOUT: Duration = Duration::from_millis(750);

/// Adds an entry; answers 1 when the user had no other live entry.
const JOIN_SCRIPT: &str = r"
local live = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[3], '+inf')
local first = 1
for _, member in ipairs(live) do
  if member ~= ARGV[1] and string.sub(member, 1, string.len(ARGV[4])) == ARGV[4] then
    first = 0
    break
  end
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return first
";

/// Removes an entry; answers 1 when the user has no other live entry.
const LEAVE_SCRIPT: &str = r"
redis.call('ZREM', KEYS[1], ARGV[1])
local live = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[2], '+inf')
for _, member in ipairs(live) do
  if string.sub(member, 1, string.len(ARGV[3])) == ARGV[3] then
    return 0
  end
end
return 1
";

/// Removes expired entries; answers the `user_id|replica|name` of those
/// whose user has no live entry left, one per user.
const SWEEP_SCRIPT: &str = r"
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1])
if #expired == 0 then return {} end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1])
local live = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], '+inf')
local present = {}
for _, member in ipairs(live) do
  present[string.match(member, '^[^|]*')] = true
end
local gone = {}
for _, member in ipairs(expired) do
  local user = string.match(member, '^[^|]*')
  if not present[user] then
    present[user] = true
    table.insert(gone, member)
  end
end
return gone
";

/// Presence across replicas. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) enum Presence {
    /// One process: the hub's local counts are everything.
    Local,
    /// Shared in Redis.
    Redis(RedisPresence),
}

impl Presence {
    /// Records that `user_id` is online in the room on this replica, which
    /// had no session of theirs there before; answers whether it is their
    /// first session anywhere (so their arrival is announced). Without
    /// Redis, or when Redis fails, this replica's knowledge answers: yes.
    pub(crate) async fn arrive(&self, room_id: &str, user_id: &str, name: &str) -> bool {
        match self {
            Self::Local => true,
            Self::Redis(redis) => redis.join(room_id, user_id, name).await.unwrap_or_else(|err| {
                tracing::warn!(error = %err, "presence unavailable; announcing from local knowledge");
                true
            }),
        }
    }

    /// Records that `user_id` left the room on this replica, where they
    /// have no session left; answers whether it was their last session
    /// anywhere (so their departure is announced). Without Redis, or when
    /// Redis fails: yes.
    pub(crate) async fn depart(&self, room_id: &str, user_id: &str, name: &str) -> bool {
        match self {
            Self::Local => true,
            Self::Redis(redis) => redis.leave(room_id, user_id, name).await.unwrap_or_else(|err| {
                tracing::warn!(error = %err, "presence unavailable; announcing from local knowledge");
                true
            }),
        }
    }

    /// The users online in the room across replicas; `local` (this
    /// replica's own) without Redis or when Redis fails.
    pub(crate) async fn members(
        &self,
        room_id: &str,
        local: impl FnOnce() -> Vec<Member>,
    ) -> Vec<Member> {
        match self {
            Self::Local => local(),
            Self::Redis(redis) => match redis.members(room_id).await {
                Ok(members) => members,
                Err(err) => {
                    tracing::warn!(error = %err, "presence unavailable; listing local members");
                    local()
                }
            },
        }
    }
}

/// Presence kept in Redis.
#[derive(Clone)]
pub(crate) struct RedisPresence {
    connection: Commands,
    /// On a cluster, keys carry the room id as a hash tag (one slot per
    /// room, the same as the room's channel).
    sharded: bool,
    replica: String,
    ttl: Duration,
    join: std::sync::Arc<redis::Script>,
    leave: std::sync::Arc<redis::Script>,
    sweep: std::sync::Arc<redis::Script>,
}

impl std::fmt::Debug for RedisPresence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisPresence")
            .field("replica", &self.replica)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

fn key(room_id: &str, sharded: bool) -> String {
    if sharded {
        format!("{KEY_PREFIX}{{{room_id}}}")
    } else {
        format!("{KEY_PREFIX}{room_id}")
    }
}

/// `user_id|replica|name`.
fn entry(user_id: &str, replica: &str, name: &str) -> String {
    format!("{user_id}|{replica}|{name}")
}

/// The member an entry stands for.
fn parse_entry(entry: &str) -> Option<Member> {
    let mut parts = entry.splitn(3, '|');
    let user_id = parts.next()?;
    let _replica = parts.next()?;
    let name = parts.next()?;
    Some(Member {
        user_id: user_id.to_owned(),
        name: name.to_owned(),
    })
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

impl RedisPresence {
    /// Presence in the Redis at `url`, for the replica `replica`.
    ///
    /// # Errors
    /// When the URL is unusable.
    pub(crate) fn new(url: &str, replica: String, ttl: Duration) -> anyhow::Result<Self> {
        let target = RedisTarget::parse(url)
            .map_err(|err| anyhow::anyhow!("CHAT_REDIS_URL is unusable: {err}"))?;
        let connection = target
            .commands(CALL_TIMEOUT)
            .map_err(|err| anyhow::anyhow!("creating the Redis presence connection: {err}"))?;
        Ok(Self {
            connection,
            sharded: target.is_cluster(),
            replica,
            ttl,
            join: std::sync::Arc::new(redis::Script::new(JOIN_SCRIPT)),
            leave: std::sync::Arc::new(redis::Script::new(LEAVE_SCRIPT)),
            sweep: std::sync::Arc::new(redis::Script::new(SWEEP_SCRIPT)),
        })
    }

    /// Records the user's presence on this replica; whether it is their
    /// first anywhere.
    ///
    /// # Errors
    /// When Redis cannot be reached in time.
    pub(crate) async fn join(
        &self,
        room_id: &str,
        user_id: &str,
        name: &str,
    ) -> redis::RedisResult<bool> {
        let now = now_millis();
        let mut connection = self.connection.clone();
        let first: i64 = self
            .join
            .key(key(room_id, self.sharded))
            .arg(entry(user_id, &self.replica, name))
            .arg(now + millis(self.ttl))
            .arg(now)
            .arg(format!("{user_id}|"))
            .arg(millis(self.ttl) * 10)
            .invoke_async(&mut connection)
            .await?;
        Ok(first == 1)
    }

    /// Removes the user's presence on this replica; whether it was their
    /// last anywhere.
    ///
    /// # Errors
    /// When Redis cannot be reached in time.
    pub(crate) async fn leave(
        &self,
        room_id: &str,
        user_id: &str,
        name: &str,
    ) -> redis::RedisResult<bool> {
        let mut connection = self.connection.clone();
        let last: i64 = self
            .leave
            .key(key(room_id, self.sharded))
            .arg(entry(user_id, &self.replica, name))
            .arg(now_millis())
            .arg(format!("{user_id}|"))
            .invoke_async(&mut connection)
            .await?;
        Ok(last == 1)
    }

    /// The users online in the room, each once, ordered by name.
    ///
    /// # Errors
    /// When Redis cannot be reached in time.
    pub(crate) async fn members(&self, room_id: &str) -> redis::RedisResult<Vec<Member>> {
        let mut connection = self.connection.clone();
        let entries: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(key(room_id, self.sharded))
            .arg(now_millis())
            .arg("+inf")
            .query_async(&mut connection)
            .await?;
        Ok(dedupe(entries.iter().filter_map(|e| parse_entry(e))))
    }

    /// Refreshes this replica's entries: `(room, [(user_id, name)])`.
    ///
    /// # Errors
    /// When Redis cannot be reached in time.
    pub(crate) async fn heartbeat(
        &self,
        rooms: &[(String, Vec<(String, String)>)],
    ) -> redis::RedisResult<()> {
        if rooms.is_empty() {
            return Ok(());
        }
        let expiry = now_millis() + millis(self.ttl);
        let keep = millis(self.ttl) * 10;
        self.per_rooms(rooms, |pipeline, key, users| {
            let mut add = redis::cmd("ZADD");
            add.arg(key);
            for (user_id, name) in users {
                add.arg(expiry).arg(entry(user_id, &self.replica, name));
            }
            pipeline.add_command(add).ignore();
            pipeline.cmd("PEXPIRE").arg(key).arg(keep).ignore();
        })
        .await
    }

    /// Removes expired entries of `room_id`: the members (of crashed
    /// replicas) who are gone now.
    ///
    /// # Errors
    /// When Redis cannot be reached in time.
    pub(crate) async fn sweep(&self, room_id: &str) -> redis::RedisResult<Vec<Member>> {
        let mut connection = self.connection.clone();
        let gone: Vec<String> = self
            .sweep
            .key(key(room_id, self.sharded))
            .arg(now_millis())
            .invoke_async(&mut connection)
            .await?;
        Ok(gone.iter().filter_map(|e| parse_entry(e)).collect())
    }

    /// Removes every entry of this replica in `rooms`, on shutdown.
    ///
    /// # Errors
    /// When Redis cannot be reached in time.
    pub(crate) async fn remove_all(
        &self,
        rooms: &[(String, Vec<(String, String)>)],
    ) -> redis::RedisResult<()> {
        self.per_rooms(rooms, |pipeline, key, users| {
            for (user_id, name) in users {
                pipeline
                    .cmd("ZREM")
                    .arg(key)
                    .arg(entry(user_id, &self.replica, name))
                    .ignore();
            }
        })
        .await
    }

    /// Runs `fill`'s commands for every room's key: one pipeline on a
    /// single Redis; on a cluster, where a pipeline stays within one slot,
    /// one per slot, all at once.
    async fn per_rooms(
        &self,
        rooms: &[(String, Vec<(String, String)>)],
        fill: impl Fn(&mut redis::Pipeline, &str, &[(String, String)]),
    ) -> redis::RedisResult<()> {
        let keyed: Vec<(String, &[(String, String)])> = rooms
            .iter()
            .map(|(room_id, users)| (key(room_id, self.sharded), users.as_slice()))
            .collect();
        let groups = if self.connection.is_cluster() {
            by_slot(keyed, |(key, _)| key.clone().into_bytes())
        } else {
            vec![keyed]
        };
        let runs = groups.into_iter().map(|group| {
            let mut pipeline = redis::pipe();
            for (key, users) in &group {
                fill(&mut pipeline, key, users);
            }
            let mut connection = self.connection.clone();
            async move { pipeline.query_async::<()>(&mut connection).await }
        });
        futures_util::future::join_all(runs)
            .await
            .into_iter()
            .collect()
    }

    /// How often heartbeats and sweeps run.
    pub(crate) fn heartbeat_every(&self) -> Duration {
        self.ttl / 3
    }
}

/// Members by user id, each once, ordered by name then id.
pub(crate) fn dedupe(members: impl Iterator<Item = Member>) -> Vec<Member> {
    let mut by_user: BTreeMap<String, Member> = BTreeMap::new();
    for member in members {
        by_user.entry(member.user_id.clone()).or_insert(member);
    }
    let mut members: Vec<Member> = by_user.into_values().collect();
    members.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.user_id.cmp(&b.user_id)));
    members
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_names_with_bars() {
        let member = parse_entry(&entry("u1", "r1", "odd|name")).unwrap();
        assert_eq!(member.user_id, "u1");
        assert_eq!(member.name, "odd|name");
        assert!(parse_entry("garbage").is_none());
    }

    #[test]
    fn members_are_listed_once() {
        let members = dedupe(
            [("u2", "bob"), ("u1", "alice"), ("u2", "bob")]
                .into_iter()
                .map(|(id, name)| Member {
                    user_id: id.into(),
                    name: name.into(),
                }),
        );
        let names: Vec<_> = members.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["alice", "bob"]);
    }
}
