//! A real Redis Cluster on loopback for the tests: three primaries and
//! three replicas, `redis-server` in cluster mode joined by
//! `redis-cli --cluster create`, with the faults the tests need (a primary
//! killed until its replica takes over, a slot moved to another primary).

use std::time::Duration;

use tokio::process::{Child, Command};

/// How long the cluster takes to notice a dead node (`cluster-node-timeout`).
const NODE_TIMEOUT_MS: u64 = 1_000;
/// Anything the cluster does on loopback ends within this.
const WAIT: Duration = Duration::from_secs(30);

/// One `redis-server` of the cluster.
#[derive(Debug)]
struct Node {
    port: u16,
    child: Option<Child>,
}

/// A running cluster; its processes are killed when it is dropped.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<Node>,
    _dir: tempfile::TempDir,
}

/// Ports `port` and `port + 10000` (the cluster bus) both free, for `count`
/// nodes.
async fn cluster_ports(count: usize) -> Vec<u16> {
    let mut ports = Vec::new();
    let mut candidate: u16 = 20_000 + u16::try_from(std::process::id() % 5_000).unwrap_or(0);
    let mut held = Vec::new();
    while ports.len() < count {
        candidate = if candidate >= 29_990 {
            20_000
        } else {
            candidate + 1
        };
        let (Ok(a), Ok(b)) = (
            tokio::net::TcpListener::bind(("127.0.0.1", candidate)).await,
            tokio::net::TcpListener::bind(("127.0.0.1", candidate + 10_000)).await,
        ) else {
            continue;
        };
        held.push((a, b));
        ports.push(candidate);
    }
    ports
}

async fn connection(port: u16) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    redis::Client::open(format!("redis://127.0.0.1:{port}"))?
        .get_multiplexed_async_connection()
        .await
}

async fn query<T: redis::FromRedisValue>(port: u16, cmd: &redis::Cmd) -> redis::RedisResult<T> {
    let mut connection = connection(port).await?;
    cmd.query_async(&mut connection).await
}

/// Polls `check` until it holds: a cluster's state has no event to await
/// from outside.
async fn until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let done = tokio::time::timeout(WAIT, async {
        while !check().await {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(done.is_ok(), "the Redis Cluster never got to: {what}");
}

impl RedisCluster {
    /// Starts six nodes and joins them into three primaries with a replica
    /// each; returns once every node reports the cluster ok.
    ///
    /// # Panics
    /// When `redis-server` or `redis-cli` is missing or the cluster does
    /// not form.
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("a temp dir");
        let mut nodes = Vec::new();
        for port in cluster_ports(6).await {
            let mut node = Node { port, child: None };
            node.spawn(dir.path());
            nodes.push(node);
        }
        for node in &nodes {
            let port = node.port;
            until("every node answering", || async move {
                query::<String>(port, &redis::cmd("PING")).await.is_ok()
            })
            .await;
        }
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for node in &nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        let output = create
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .await
            .expect("redis-cli runs");
        assert!(
            output.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        let cluster = Self { nodes, _dir: dir };
        cluster.until_ok().await;
        // Every replica in sync with its primary, so it can take over.
        for node in &cluster.nodes {
            let port = node.port;
            until("every replica's link to its primary up", || async move {
                query::<String>(port, redis::cmd("INFO").arg("replication"))
                    .await
                    .is_ok_and(|info| {
                        info.contains("role:master") || info.contains("master_link_status:up")
                    })
            })
            .await;
        }
        cluster
    }

    /// `CHAT_REDIS_URL` for it: every node as a seed.
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self
            .nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port))
            .collect();
        format!("redis+cluster://{}", seeds.join(","))
    }

    /// Waits until every running node says `cluster_state:ok` and every
    /// slot is served.
    async fn until_ok(&self) {
        for node in self.nodes.iter().filter(|node| node.child.is_some()) {
            let port = node.port;
            until("cluster_state:ok on every node", || async move {
                query::<String>(port, redis::cmd("CLUSTER").arg("INFO"))
                    .await
                    .is_ok_and(|info| {
                        info.contains("cluster_state:ok") && info.contains("cluster_slots_ok:16384")
                    })
            })
            .await;
        }
    }

    /// The slot of `key` (hash tags honoured).
    pub async fn slot(&self, key: &str) -> u16 {
        query(self.any(), redis::cmd("CLUSTER").arg("KEYSLOT").arg(key))
            .await
            .expect("CLUSTER KEYSLOT")
    }

    /// Subscribers of the shard channel `channel` on the primary that owns
    /// its slot (`PUBSUB SHARDNUMSUB`).
    pub async fn shard_subscribers(&self, channel: &str) -> i64 {
        let (port, _) = self.primary_of(self.slot(channel).await).await;
        let counts: Vec<redis::Value> =
            query(port, redis::cmd("PUBSUB").arg("SHARDNUMSUB").arg(channel))
                .await
                .expect("PUBSUB SHARDNUMSUB");
        match counts.get(1) {
            Some(redis::Value::Int(count)) => *count,
            other => panic!("SHARDNUMSUB answered {other:?}"),
        }
    }

    /// Members of the sorted set `key`, asked of the primary that owns it.
    pub async fn zcard(&self, key: &str) -> i64 {
        let (port, _) = self.primary_of(self.slot(key).await).await;
        query(port, redis::cmd("ZCARD").arg(key))
            .await
            .expect("ZCARD")
    }

    /// A running node's port.
    fn any(&self) -> u16 {
        self.nodes
            .iter()
            .find(|node| node.child.is_some())
            .expect("a running node")
            .port
    }

    /// `(port, node id)` of the primary serving `slot`, as a running node
    /// sees it.
    ///
    /// # Panics
    /// When no healthy primary serves it.
    pub async fn primary_of(&self, slot: u16) -> (u16, String) {
        self.serving(slot)
            .await
            .unwrap_or_else(|| panic!("no healthy primary serves slot {slot}"))
    }

    /// The healthy primary serving `slot`, if there is one now.
    async fn serving(&self, slot: u16) -> Option<(u16, String)> {
        let nodes: String = query(self.any(), redis::cmd("CLUSTER").arg("NODES"))
            .await
            .ok()?;
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let serves = fields[8..].iter().any(|range| match range.split_once('-') {
                Some((from, to)) => {
                    from.parse::<u16>().is_ok_and(|from| from <= slot)
                        && to.parse::<u16>().is_ok_and(|to| slot <= to)
                }
                None => range.parse::<u16>() == Ok(slot),
            });
            if serves {
                let port = fields[1].split(['@', ':']).nth(1)?.parse().ok()?;
                return Some((port, fields[0].to_owned()));
            }
        }
        None
    }

    /// The id of a primary other than the one at `port`.
    pub async fn other_primary(&self, port: u16) -> (u16, String) {
        let nodes: String = query(self.any(), redis::cmd("CLUSTER").arg("NODES"))
            .await
            .expect("CLUSTER NODES");
        nodes
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split(' ').collect();
                let node_port: u16 = fields.get(1)?.split(['@', ':']).nth(1)?.parse().ok()?;
                (fields.get(2)?.contains("master")
                    && !fields[2].contains("fail")
                    && node_port != port)
                    .then(|| (node_port, fields[0].to_owned()))
            })
            .next()
            .expect("another primary")
    }

    /// SIGKILLs the primary serving `slot` and waits until its replica has
    /// taken over and the cluster is ok again; returns the killed port.
    pub async fn kill_primary_of(&mut self, slot: u16) -> u16 {
        let (port, _) = self.primary_of(slot).await;
        let node = self
            .nodes
            .iter_mut()
            .find(|node| node.port == port)
            .expect("the primary is ours");
        if let Some(mut child) = node.child.take() {
            child.kill().await.expect("SIGKILL");
        }
        let cluster = &*self;
        until(
            "a replica promoted in the killed primary's place",
            || async move {
                cluster
                    .serving(slot)
                    .await
                    .is_some_and(|(now, _)| now != port)
            },
        )
        .await;
        self.until_ok().await;
        port
    }

    /// Moves `slot` (and its keys) from its primary to another, as
    /// `redis-cli --cluster reshard` does, while clients keep using it.
    pub async fn move_slot(&self, slot: u16) {
        let (from, from_id) = self.primary_of(slot).await;
        let (to, to_id) = self.other_primary(from).await;
        let setslot = |state: &str, id: &str| {
            let mut cmd = redis::cmd("CLUSTER");
            cmd.arg("SETSLOT").arg(slot).arg(state).arg(id);
            cmd
        };
        let () = query(to, &setslot("IMPORTING", &from_id))
            .await
            .expect("SETSLOT IMPORTING");
        let () = query(from, &setslot("MIGRATING", &to_id))
            .await
            .expect("SETSLOT MIGRATING");
        loop {
            let keys: Vec<String> = query(
                from,
                redis::cmd("CLUSTER")
                    .arg("GETKEYSINSLOT")
                    .arg(slot)
                    .arg(100),
            )
            .await
            .expect("GETKEYSINSLOT");
            if keys.is_empty() {
                break;
            }
            let () = query(
                from,
                redis::cmd("MIGRATE")
                    .arg("127.0.0.1")
                    .arg(to)
                    .arg("")
                    .arg(0)
                    .arg(5000)
                    .arg("REPLACE")
                    .arg("KEYS")
                    .arg(&keys),
            )
            .await
            .expect("MIGRATE");
        }
        for port in [to, from] {
            let () = query(port, &setslot("NODE", &to_id))
                .await
                .expect("SETSLOT NODE");
        }
        let cluster = self;
        until("the slot's new owner known", || async move {
            cluster
                .serving(slot)
                .await
                .is_some_and(|(now, _)| now == to)
        })
        .await;
    }
}

impl Node {
    fn spawn(&mut self, dir: &std::path::Path) {
        let port = self.port.to_string();
        let child = Command::new("redis-server")
            .args(["--port", &port, "--bind", "127.0.0.1"])
            .args(["--cluster-enabled", "yes"])
            .arg("--cluster-config-file")
            .arg(dir.join(format!("nodes-{port}.conf")))
            .args(["--cluster-node-timeout", &NODE_TIMEOUT_MS.to_string()])
            // A replica may take over however long it was cut off: in a
            // test its primary only ever dies on purpose.
            .args(["--cluster-replica-validity-factor", "0"])
            .arg("--dir")
            .arg(dir)
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server runs");
        self.child = Some(child);
    }
}
