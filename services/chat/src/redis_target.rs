//! Where chat's Redis is: one server (`redis://host:port`) or a Redis
//! Cluster (`redis+cluster://host:port[,host:port...]`, any of its nodes;
//! README "Configuration", `CHAT_REDIS_URL`).
//!
//! The bus and presence talk to either through [`Commands`], a connection
//! that reconnects by itself. In a cluster, a room's channel and its
//! presence key share the room's hash slot, so every script touches one
//! slot and every room event is published and received on the shard that
//! owns it (`SPUBLISH`/`SSUBSCRIBE`).

use std::time::Duration;

use redis::{
    Cmd, Pipeline, RedisFuture, RedisResult, Value,
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig},
    cluster::{ClusterClient, ClusterClientBuilder, ClusterConfig},
    cluster_async::ClusterConnection,
    cluster_routing::Slot,
};

/// The scheme that names a cluster's seed nodes.
const CLUSTER_SCHEME: &str = "redis+cluster://";

/// A parsed `CHAT_REDIS_URL`.
#[derive(Clone)]
pub(crate) enum RedisTarget {
    /// One Redis server.
    Single(redis::Client),
    /// A Redis Cluster, known by some of its nodes.
    Cluster(Box<ClusterClient>),
}

impl std::fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Single(_) => f.write_str("RedisTarget::Single"),
            Self::Cluster(_) => f.write_str("RedisTarget::Cluster"),
        }
    }
}

impl RedisTarget {
    /// Reads a `redis://` (or `rediss://`) URL, or a `redis+cluster://`
    /// list of seed nodes (`redis+cluster://[user:password@]host:port,...`).
    ///
    /// # Errors
    /// A message saying what is wrong with the value.
    pub(crate) fn parse(url: &str) -> Result<Self, String> {
        let url = url.trim();
        let Some(nodes) = url.strip_prefix(CLUSTER_SCHEME) else {
            return redis::Client::open(url)
                .map(Self::Single)
                .map_err(|err| format!("not a redis:// or redis+cluster:// URL: {err}"));
        };
        // Credentials given once, on the first node, hold for every node.
        let (auth, nodes) = match nodes.split_once('@') {
            Some((auth, rest)) if !auth.contains(',') => (format!("{auth}@"), rest),
            _ => (String::new(), nodes),
        };
        let seeds: Vec<String> = nodes
            .split(',')
            .map(str::trim)
            .filter(|node| !node.is_empty())
            .map(|node| format!("redis://{auth}{node}"))
            .collect();
        if seeds.is_empty() {
            return Err("a redis+cluster:// URL names at least one host:port".to_owned());
        }
        for seed in &seeds {
            redis::Client::open(seed.as_str())
                .map_err(|err| format!("{seed} in the cluster URL: {err}"))?;
        }
        ClusterClientBuilder::new(seeds)
            .use_protocol(redis::ProtocolVersion::RESP3)
            .build()
            .map(|client| Self::Cluster(Box::new(client)))
            .map_err(|err| format!("not a usable cluster URL: {err}"))
    }

    /// Whether room events go through sharded pub/sub.
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    /// A connection for commands, created at once and connected in the
    /// background; it reconnects (and, in a cluster, follows the slots) by
    /// itself. `response_timeout` bounds each call.
    ///
    /// # Errors
    /// When the connection cannot be set up at all.
    pub(crate) fn commands(&self, response_timeout: Duration) -> RedisResult<Commands> {
        match self {
            Self::Single(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(2)))
                    .set_response_timeout(Some(response_timeout))
                    .set_number_of_retries(1);
                ConnectionManager::new_lazy_with_config(client.clone(), config)
                    .map(Commands::Single)
            }
            Self::Cluster(client) => {
                let config = ClusterConfig::new()
                    .set_connection_timeout(Duration::from_secs(2))
                    .set_response_timeout(response_timeout);
                Ok(Commands::Cluster(
                    client.get_pending_async_connection_with_config(config),
                ))
            }
        }
    }
}

/// A command connection to a single Redis or a cluster. Cheap to clone.
#[derive(Clone)]
pub(crate) enum Commands {
    /// One server.
    Single(ConnectionManager),
    /// A cluster: each command goes to the node that owns its slot.
    Cluster(ClusterConnection),
}

impl Commands {
    /// Whether commands of different slots must go separately (a pipeline
    /// or script in a cluster touches one slot).
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }
}

impl ConnectionLike for Commands {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(connection) => connection.req_packed_command(cmd),
            Self::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(connection) => connection.req_packed_commands(pipeline, offset, count),
            Self::Cluster(connection) => connection.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(connection) => connection.get_db(),
            Self::Cluster(connection) => connection.get_db(),
        }
    }
}

/// Groups `items` by the hash slot of `key(item)`, keeping their order
/// within each group: what one cluster pipeline may carry.
pub(crate) fn by_slot<T>(items: Vec<T>, key: impl Fn(&T) -> Vec<u8>) -> Vec<Vec<T>> {
    let mut groups: Vec<(Slot, Vec<T>)> = Vec::new();
    for item in items {
        let slot = Slot::for_key(key(&item));
        match groups.iter_mut().find(|(s, _)| *s == slot) {
            Some((_, group)) => group.push(item),
            None => groups.push((slot, vec![item])),
        }
    }
    groups.into_iter().map(|(_, group)| group).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_and_cluster_urls() {
        assert!(
            !RedisTarget::parse("redis://127.0.0.1:6379")
                .unwrap()
                .is_cluster()
        );
        assert!(
            RedisTarget::parse("redis+cluster://127.0.0.1:7000, 127.0.0.1:7001")
                .unwrap()
                .is_cluster()
        );
        assert!(RedisTarget::parse("redis+cluster://").is_err());
        assert!(RedisTarget::parse("http://127.0.0.1").is_err());
        assert!(RedisTarget::parse("redis+cluster://a b:1").is_err());
        assert!(
            RedisTarget::parse("redis+cluster://:secret@10.0.0.1:6379,10.0.0.2:6379")
                .unwrap()
                .is_cluster()
        );
    }

    #[test]
    fn groups_follow_hash_tags() {
        let keys = vec!["x:{room1}:a", "y:{room2}", "z:{room1}:b"];
        let groups = by_slot(keys, |k| k.as_bytes().to_vec());
        assert_eq!(
            groups,
            vec![vec!["x:{room1}:a", "z:{room1}:b"], vec!["y:{room2}"]]
        );
    }
}
