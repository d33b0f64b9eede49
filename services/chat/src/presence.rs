//! Who is online in which room, across replicas.
//!
//! In-process, the hub's own count of local sessions is the whole truth.
//! With Redis, each room has a sorted set of `user_id|replica|name` entries
//! scored by their expiry, for listing, and each online user of the room a
//! small one of their own `replica|name` entries, so "first connection of
//! this user" and "last connection of this user" are answered atomically
//! across replicas without reading the whole room: a join or a leave costs
//! the same in a room of ten and of a hundred thousand. Every replica
//! refreshes its own entries with a heartbeat and sweeps expired ones, so
//! the members of a replica that crashed disappear within one TTL and
//! their `left` presence is still announced. When Redis cannot be reached,
//! presence degrades to what this replica knows.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use parley_proto::chat::v1::Member;
use parley_runtime::storage::now_millis;

use crate::redis_target::{Commands, RedisTarget, by_slot};

/// Key prefix of each room's presence set.
const KEY_PREFIX: &str = "parley:chat:presence:";
/// How long one presence call may take before falling back to local
/// knowledge.
const CALL_TIMEOUT: Duration = Duration::from_millis(750);
/// Expired entries one sweep takes from a room; the next sweep takes more.
const SWEEP_BATCH: usize = 1000;
/// Entries one heartbeat pipeline refreshes (see [`RedisPresence::heartbeat`]).
const PIPELINE_ENTRIES: usize = 256;

/// Adds an entry to the room (KEYS[1]) and to the user's own set
/// (KEYS[2]); answers 1 when the user had no other live entry.
const JOIN_SCRIPT: &str = r"
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
if redis.call('ZCARD', KEYS[2]) == 1 then return 1 end
return 0
";

/// Removes an entry from the room (KEYS[1]) and the user's set (KEYS[2]);
/// answers 1 when the user has no other live entry.
const LEAVE_SCRIPT: &str = r"
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[2])
if redis.call('ZCARD', KEYS[2]) == 0 then return 1 end
return 0
";

/// Takes up to ARGV[2] expired entries out of the room (KEYS[1]) and
/// answers them.
const SWEEP_SCRIPT: &str = r"
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1], 'LIMIT', 0, ARGV[2])
for _, member in ipairs(expired) do
  redis.call('ZREM', KEYS[1], member)
end
return expired
";

/// Takes swept entries (ARGV[1 + i]) out of their users' sets (KEYS[i])
/// and answers, for each, 1 when that user has no live entry left.
const GONE_SCRIPT: &str = r"
local gone = {}
for i, key in ipairs(KEYS) do
  redis.call('ZREM', key, ARGV[i + 1])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. ARGV[1])
  if redis.call('ZCARD', key) == 0 then gone[i] = 1 else gone[i] = 0 end
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
    gone: std::sync::Arc<redis::Script>,
}

impl std::fmt::Debug for RedisPresence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisPresence")
            .field("replica", &self.replica)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// A user with sessions on this replica: `(user_id, name)`.
pub(crate) type PresentUser = (Arc<str>, Arc<str>);
/// A room's users with sessions on this replica.
pub(crate) type RoomPresence = (Arc<str>, Vec<PresentUser>);
/// Part of a room's users: its id and a slice of them.
type RoomPart<'a> = (&'a str, &'a [PresentUser]);

/// `rooms`' entries in chunks of at most `size` (a room's users split
/// where a chunk fills), each chunk a list of `(room_id, users)`.
fn chunks(rooms: &[RoomPresence], size: usize) -> impl Iterator<Item = Vec<RoomPart<'_>>> {
    let mut parts = rooms
        .iter()
        .flat_map(move |(room_id, users)| users.chunks(size).map(move |part| (&**room_id, part)))
        .peekable();
    std::iter::from_fn(move || {
        let mut chunk = Vec::new();
        let mut entries = 0;
        while let Some((_, users)) = parts.peek() {
            if entries > 0 && entries + users.len() > size {
                break;
            }
            entries += users.len();
            chunk.extend(parts.next());
        }
        (!chunk.is_empty()).then_some(chunk)
    })
}

fn key(room_id: &str, sharded: bool) -> String {
    if sharded {
        format!("{KEY_PREFIX}{{{room_id}}}")
    } else {
        format!("{KEY_PREFIX}{room_id}")
    }
}

/// The set of one user's entries in a room: in the room's slot on a
/// cluster. Room ids hold no `:`, so it never names a room's set.
fn user_key(room_id: &str, user_id: &str, sharded: bool) -> String {
    user_key_in(&key(room_id, sharded), user_id)
}

/// [`user_key`] from the room's own key.
fn user_key_in(room_key: &str, user_id: &str) -> String {
    format!("{room_key}:u:{user_id}")
}

/// `user_id|replica|name`, in the room's set.
fn entry(user_id: &str, replica: &str, name: &str) -> String {
    format!("{user_id}|{replica}|{name}")
}

/// `replica|name`, in the user's set.
fn own_entry(replica: &str, name: &str) -> String {
    format!("{replica}|{name}")
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
            gone: std::sync::Arc::new(redis::Script::new(GONE_SCRIPT)),
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
            .key(user_key(room_id, user_id, self.sharded))
            .arg(entry(user_id, &self.replica, name))
            .arg(now + millis(self.ttl))
            .arg(now)
            .arg(own_entry(&self.replica, name))
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
            .key(user_key(room_id, user_id, self.sharded))
            .arg(entry(user_id, &self.replica, name))
            .arg(now_millis())
            .arg(own_entry(&self.replica, name))
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

    /// Refreshes this replica's entries.
    ///
    /// # Errors
    /// When Redis cannot be reached in time.
    pub(crate) async fn heartbeat(&self, rooms: &[RoomPresence]) -> redis::RedisResult<()> {
        let expiry = now_millis() + millis(self.ttl);
        let keep = millis(self.ttl) * 10;
        self.per_rooms(rooms, |pipeline, key, users| {
            let mut add = redis::cmd("ZADD");
            add.arg(key);
            for (user_id, name) in users {
                add.arg(expiry).arg(entry(user_id, &self.replica, name));
                let own = user_key_in(key, user_id);
                pipeline
                    .cmd("ZADD")
                    .arg(&own)
                    .arg(expiry)
                    .arg(own_entry(&self.replica, name))
                    .ignore();
                pipeline.cmd("PEXPIRE").arg(own).arg(keep).ignore();
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
        let now = now_millis();
        let expired: Vec<String> = self
            .sweep
            .key(key(room_id, self.sharded))
            .arg(now)
            .arg(SWEEP_BATCH)
            .invoke_async(&mut connection)
            .await?;
        let swept: Vec<(String, String, String)> = expired
            .iter()
            .filter_map(|entry| {
                let mut parts = entry.splitn(3, '|');
                Some((
                    parts.next()?.to_owned(),
                    parts.next()?.to_owned(),
                    parts.next()?.to_owned(),
                ))
            })
            .collect();
        if swept.is_empty() {
            return Ok(Vec::new());
        }
        let mut gone = self.gone.prepare_invoke();
        gone.arg(now);
        for (user_id, replica, name) in &swept {
            gone.key(user_key(room_id, user_id, self.sharded))
                .arg(own_entry(replica, name));
        }
        let flags: Vec<i64> = gone.invoke_async(&mut connection).await?;
        let members = swept
            .into_iter()
            .zip(flags)
            .filter(|(_, flag)| *flag == 1)
            .map(|((user_id, _, name), _)| Member { user_id, name });
        Ok(dedupe(members))
    }

    /// Removes every entry of this replica in `rooms`, on shutdown.
    ///
    /// # Errors
    /// When Redis cannot be reached in time.
    pub(crate) async fn remove_all(&self, rooms: &[RoomPresence]) -> redis::RedisResult<()> {
        self.per_rooms(rooms, |pipeline, key, users| {
            for (user_id, name) in users {
                pipeline
                    .cmd("ZREM")
                    .arg(key)
                    .arg(entry(user_id, &self.replica, name))
                    .ignore();
                pipeline
                    .cmd("ZREM")
                    .arg(user_key_in(key, user_id))
                    .arg(own_entry(&self.replica, name))
                    .ignore();
            }
        })
        .await
    }

    /// Runs `fill`'s commands for every room's entries, a pipeline of at
    /// most [`PIPELINE_ENTRIES`] entries at a time, so what a heartbeat
    /// holds in memory (and the connection's write buffer keeps) does not
    /// grow with the replica's sessions. On a cluster, where a pipeline
    /// stays within one slot, each of those is split by slot and its parts
    /// run at once.
    async fn per_rooms(
        &self,
        rooms: &[RoomPresence],
        fill: impl Fn(&mut redis::Pipeline, &str, &[PresentUser]),
    ) -> redis::RedisResult<()> {
        for chunk in chunks(rooms, PIPELINE_ENTRIES) {
            let keyed: Vec<(String, &[PresentUser])> = chunk
                .into_iter()
                .map(|(room_id, users)| (key(room_id, self.sharded), users))
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
                .collect::<redis::RedisResult<()>>()?;
        }
        Ok(())
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
    use futures_util::StreamExt as _;

    use super::*;

    /// The Redis the test suite runs against.
    const REDIS_URL: &str = "redis://127.0.0.1:6379";

    fn replica(name: &str, ttl: Duration) -> RedisPresence {
        RedisPresence::new(REDIS_URL, name.to_owned(), ttl).expect("a Redis URL")
    }

    fn unique_room() -> String {
        format!("presence-test-{}", uuid::Uuid::new_v4().simple())
    }

    #[tokio::test]
    async fn a_users_first_and_last_session_are_known_across_replicas() {
        let room = unique_room();
        let (one, two) = (
            replica("one", Duration::from_secs(30)),
            replica("two", Duration::from_secs(30)),
        );
        assert!(
            one.join(&room, "u1", "ann").await.expect("Redis"),
            "first anywhere"
        );
        assert!(
            !two.join(&room, "u1", "ann").await.expect("Redis"),
            "on one already"
        );
        assert!(
            two.join(&room, "u2", "bob").await.expect("Redis"),
            "bob's first"
        );
        let names: Vec<String> = one
            .members(&room)
            .await
            .expect("Redis")
            .into_iter()
            .map(|m| m.name)
            .collect();
        assert_eq!(names, ["ann", "bob"]);
        assert!(
            !one.leave(&room, "u1", "ann").await.expect("Redis"),
            "still on two"
        );
        assert!(
            two.leave(&room, "u1", "ann").await.expect("Redis"),
            "gone everywhere"
        );
        assert!(
            one.join(&room, "u1", "ann").await.expect("Redis"),
            "back: first again"
        );
    }

    #[tokio::test]
    async fn a_crashed_replicas_users_are_swept_once_unless_online_elsewhere() {
        let room = unique_room();
        // Entries that expire at once: a replica that stopped heartbeating.
        let crashed = replica("crashed", Duration::from_millis(20));
        let alive = replica("alive", Duration::from_secs(30));
        crashed
            .join(&room, "u1", "ann|with bar")
            .await
            .expect("Redis");
        crashed.join(&room, "u2", "bob").await.expect("Redis");
        alive.join(&room, "u2", "bob").await.expect("Redis");
        // Past the crashed replica's expiry.
        tokio::time::sleep(Duration::from_millis(40)).await;
        let gone = alive.sweep(&room).await.expect("Redis");
        let names: Vec<&str> = gone.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["ann|with bar"], "bob is still on the live replica");
        assert!(
            alive.sweep(&room).await.expect("Redis").is_empty(),
            "swept once"
        );
        assert!(
            alive.leave(&room, "u2", "bob").await.expect("Redis"),
            "bob's last"
        );
    }

    /// A join or a leave touches the room's own set only with writes of one
    /// entry, never a read of its members: their cost does not grow with
    /// the room (README: "Limits").
    #[tokio::test]
    async fn joins_and_leaves_do_not_read_the_rooms_members() {
        let room = unique_room();
        let room_key = key(&room, false);
        let client = redis::Client::open(REDIS_URL).expect("a Redis URL");
        let mut control = client
            .get_multiplexed_async_connection()
            .await
            .expect("Redis on 127.0.0.1:6379");
        let mut seed = redis::cmd("ZADD");
        seed.arg(&room_key);
        let far = now_millis() + 60_000;
        for n in 0..1000 {
            seed.arg(far)
                .arg(entry(&format!("other{n}"), "elsewhere", "x"));
        }
        seed.query_async::<()>(&mut control).await.expect("seeded");

        let mut monitor = client
            .get_async_monitor()
            .await
            .expect("MONITOR")
            .into_on_message::<String>();
        let presence = replica("one", Duration::from_secs(30));
        assert!(presence.join(&room, "u1", "ann").await.expect("Redis"));
        assert!(presence.leave(&room, "u1", "ann").await.expect("Redis"));
        let done = format!("done {room}");
        redis::cmd("ECHO")
            .arg(&done)
            .query_async::<String>(&mut control)
            .await
            .expect("ECHO");

        let quoted = format!("\"{room_key}\"");
        let mut commands = Vec::new();
        while let Some(line) = tokio::time::timeout(Duration::from_secs(10), monitor.next())
            .await
            .expect("MONITOR answers")
        {
            if line.contains(&done) {
                break;
            }
            // `<time> [<db> <client>] "COMMAND" "first key" ...`
            let mut tokens = line.split(' ').skip_while(|t| !t.starts_with('"'));
            let (Some(command), Some(first)) = (tokens.next(), tokens.next()) else {
                continue;
            };
            if first == quoted {
                commands.push(command.trim_matches('"').to_ascii_uppercase());
            }
        }
        assert!(commands.contains(&"ZADD".to_owned()), "seen: {commands:?}");
        for command in &commands {
            assert!(
                ["ZADD", "ZREM", "PEXPIRE"].contains(&command.as_str()),
                "{command} on the room's set: {commands:?}"
            );
        }
        redis::cmd("DEL")
            .arg(&room_key)
            .query_async::<()>(&mut control)
            .await
            .expect("DEL");
    }

    fn users(prefix: &str, count: usize) -> Vec<PresentUser> {
        (0..count)
            .map(|i| {
                (
                    Arc::from(format!("{prefix}{i}")),
                    Arc::from(format!("n{i}")),
                )
            })
            .collect()
    }

    /// A heartbeat larger than one pipeline refreshes every entry: those
    /// of a room split over two pipelines and those of the rooms around it.
    #[tokio::test]
    async fn a_heartbeat_over_several_pipelines_refreshes_every_entry() {
        let presence = replica("heartbeat", Duration::from_secs(30));
        let rooms: Vec<RoomPresence> = [3, PIPELINE_ENTRIES + 5, 2]
            .into_iter()
            .map(|count| (Arc::from(unique_room()), users("u", count)))
            .collect();
        presence.heartbeat(&rooms).await.expect("Redis");
        for (room_id, users) in &rooms {
            let listed = presence.members(room_id).await.expect("Redis");
            assert_eq!(listed.len(), users.len(), "every entry of {room_id}");
        }
        presence.remove_all(&rooms).await.expect("Redis");
        for (room_id, _) in &rooms {
            assert!(
                presence.members(room_id).await.expect("Redis").is_empty(),
                "removed from {room_id}"
            );
        }
    }

    #[test]
    fn chunks_hold_at_most_their_size_and_keep_every_entry_in_order() {
        let rooms: Vec<RoomPresence> = vec![
            (Arc::from("a"), users("a", 3)),
            (Arc::from("b"), users("b", 10)),
            (Arc::from("c"), Vec::new()),
            (Arc::from("d"), users("d", 1)),
        ];
        let chunks: Vec<_> = chunks(&rooms, 4).collect();
        let sizes: Vec<usize> = chunks
            .iter()
            .map(|chunk| chunk.iter().map(|(_, users)| users.len()).sum())
            .collect();
        assert_eq!(sizes, [3, 4, 4, 3], "a | b b b b | b b b b | b b d");
        let flat: Vec<(&str, &str)> = chunks
            .iter()
            .flatten()
            .flat_map(|(room, users)| users.iter().map(move |(id, _)| (*room, &**id)))
            .collect();
        let expected: Vec<(&str, &str)> = rooms
            .iter()
            .flat_map(|(room, users)| users.iter().map(move |(id, _)| (&**room, &**id)))
            .collect();
        assert_eq!(flat, expected);
        assert_eq!(super::chunks(&[], 4).count(), 0);
    }

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
