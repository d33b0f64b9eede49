//! Faults under load: traffic flows while a dependency fails, and at the
//! end every acknowledged message has reached every member exactly once,
//! in order (README: "Behaviour").

use std::time::Duration;

use parley_tests::{
    chat::room_id,
    gateway::{Deployment, Settings, Topology, Ws, username},
};
use serde_json::json;

/// Messages sent in all.
const COUNT: usize = 150;
/// Messages in flight at once: a cut lands among writes under way.
const WINDOW: usize = 10;

/// Sends `client_ids` at once, then collects an answer for each: an ack,
/// or UNAVAILABLE (storage failed under the write; retryable), after which
/// the same `client_id` goes again. Answers the acked seqs.
async fn send_window(ws: &mut Ws, room: &str, client_ids: &[String]) -> Vec<i64> {
    let mut acked = Vec::new();
    let mut waiting: Vec<String> = client_ids.to_vec();
    for attempt in 0..50 {
        for client_id in &waiting {
            ws.say(room, &format!("text of {client_id}"), client_id)
                .await;
        }
        let mut retry = Vec::new();
        for _ in 0..waiting.len() {
            let frame = loop {
                let frame = ws.next().await;
                if frame.get("ack").is_some() || frame.get("error").is_some() {
                    break frame;
                }
            };
            if let Some(ack) = frame.get("ack") {
                acked.push(ack["seq"].as_i64().unwrap());
            } else {
                let error = &frame["error"];
                assert_eq!(
                    error["code"], "UNAVAILABLE",
                    "only retryable failures: {error}"
                );
                retry.push(error["client_id"].as_str().unwrap().to_owned());
            }
        }
        if retry.is_empty() {
            return acked;
        }
        waiting = retry;
        // The retry waits as a client library's would.
        tokio::time::sleep(Duration::from_millis(20 * (attempt + 1))).await;
    }
    panic!("sends still failing after 50 attempts: {waiting:?}");
}

/// Every database connection of chat (and of auth and user, which share
/// the database) is cut several times while messages are written: the
/// writes caught by a cut fail UNAVAILABLE and succeed when retried with
/// their `client_id`, storage recovers by itself, and the member on the
/// other gateway and replica receives every message once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_connections_cut_under_load_lose_nothing() {
    let deployment = Deployment::start(Topology::Distributed, &Settings::default()).await;
    let alice = deployment.sign_up(&username("alice")).await;
    let bob = deployment.sign_up(&username("bob")).await;
    let room = room_id("pg-cut");
    let mut sender = deployment.ws(0, &alice).await;
    sender.join(&room, 0).await;
    let mut watcher = deployment.ws(1, &bob).await;
    watcher.join(&room, 0).await;

    let mut acked = Vec::new();
    let mut cut = 0;
    for window in 0..COUNT / WINDOW {
        let ids: Vec<String> = (0..WINDOW)
            .map(|i| format!("c-{}", window * WINDOW + i))
            .collect();
        let sending = send_window(&mut sender, &room, &ids);
        // Every other window, the connections are cut while it is written.
        if window % 2 == 1 {
            let (seqs, ended) = tokio::join!(sending, deployment.terminate_database_connections());
            cut += ended;
            acked.extend(seqs);
        } else {
            acked.extend(sending.await);
        }
    }
    assert!(cut > 0, "the connections were cut");
    acked.sort_unstable();
    assert_eq!(
        acked,
        (1..=COUNT as i64).collect::<Vec<_>>(),
        "one seq per message"
    );

    let mut seen: Vec<(i64, String)> = Vec::new();
    while seen.len() < COUNT {
        let message = watcher.next_message().await;
        seen.push((
            message["seq"].as_i64().unwrap(),
            message["client_id"].as_str().unwrap().to_owned(),
        ));
    }
    let seqs: Vec<i64> = seen.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(
        seqs,
        (1..=COUNT as i64).collect::<Vec<_>>(),
        "in order, once each"
    );
    let mut ids: Vec<&str> = seen.iter().map(|(_, id)| id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), COUNT, "every message, none twice");
    // Nothing more arrives: a ping is answered before any late duplicate.
    watcher.send(json!({"ping": {"nonce": "end"}})).await;
    let pong = watcher.next().await;
    assert_eq!(pong["pong"]["nonce"], "end", "{pong}");
    sender.close().await;
    watcher.close().await;
    deployment.stop().await;
}

/// A Postgres server of this test's own (initdb into a temp dir, run as the
/// `postgres` user), so stopping it touches no other test.
struct OwnPostgres {
    dir: tempfile::TempDir,
    port: u16,
    bin: std::path::PathBuf,
}

impl OwnPostgres {
    async fn start() -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL's binaries under /usr/lib/postgresql")
            .filter_map(Result::ok)
            .map(|entry| entry.path().join("bin"))
            .find(|bin| bin.join("initdb").exists())
            .expect("initdb");
        let dir = tempfile::tempdir().unwrap();
        let port = parley_tests::gateway::free_ports(1).await[0];
        let own = Self { dir, port, bin };
        own.as_postgres(
            &["chown", "postgres", &own.dir.path().display().to_string()],
            true,
        )
        .await;
        let data = own.data();
        own.as_postgres(
            &[
                &own.bin.join("initdb").display().to_string(),
                "-D",
                &data,
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
            false,
        )
        .await;
        own.up().await;
        own
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Runs `command` (as root for `chown`, else as `postgres`), which must
    /// succeed.
    async fn as_postgres(&self, command: &[&str], as_root: bool) {
        let mut cmd = if as_root {
            tokio::process::Command::new(command[0])
        } else {
            let mut cmd = tokio::process::Command::new("runuser");
            cmd.args(["-u", "postgres", "--", command[0]]);
            cmd
        };
        let output = cmd.args(&command[1..]).output().await.unwrap();
        assert!(
            output.status.success(),
            "{command:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Starts the server and waits until it takes connections.
    async fn up(&self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("log").display().to_string();
        self.as_postgres(
            &[
                &self.bin.join("pg_ctl").display().to_string(),
                "-D",
                &self.data(),
                "-o",
                &options,
                "-l",
                &log,
                "-w",
                "start",
            ],
            false,
        )
        .await;
    }

    /// Stops it at once, as a crash would (`pg_ctl stop -m immediate`).
    async fn crash(&self) {
        self.as_postgres(
            &[
                &self.bin.join("pg_ctl").display().to_string(),
                "-D",
                &self.data(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
            false,
        )
        .await;
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let _ = std::process::Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .args(["-D", &self.data(), "-m", "immediate", "stop"])
            .output();
    }
}

/// Polls chat's `/readyz` until it answers `status` (readiness has no event
/// to await from outside).
async fn readiness_becomes(admin: std::net::SocketAddr, status: u16) {
    for _ in 0..200 {
        if parley_tests::gateway::http(admin, "GET", "/readyz", &[], None)
            .await
            .status
            == status
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("/readyz never answered {status}");
}

/// Chat's Postgres crashes while a member sends: the sends during the
/// outage fail UNAVAILABLE (retryable), chat reports itself not ready and
/// ready again once Postgres is back, the writer lanes recover by
/// themselves, and the member on the other replica receives every
/// acknowledged message once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_under_load_loses_no_acknowledged_message() {
    use parley_proto::chat::v1::chat_response::Frame as Out;
    use parley_tests::{
        DatabaseBackend, TestStack,
        chat::{ChatReplica, ChatStream, test_args},
    };

    let postgres = OwnPostgres::start().await;
    let mut stack = TestStack::start(DatabaseBackend::Postgres).await;
    let mut args = test_args(&stack, Some(parley_tests::chat::REDIS_URL));
    args.database_url = postgres.url().parse().unwrap();
    let one = ChatReplica::start(&stack, args.clone()).await;
    let two = ChatReplica::start(&stack, args).await;
    let (_, alice_token) = stack.signed_up("alice").await;
    let (_, bob_token) = stack.signed_up("bob").await;
    let room = room_id("pg-restart");
    let mut listener = ChatStream::open(one.client.clone(), &alice_token).await;
    listener.join(&room, 0).await;
    let mut sender = ChatStream::open(two.client.clone(), &bob_token).await;
    sender.join(&room, 0).await;

    const TOTAL: i64 = 60;
    // Sends 20 to 22 meet the outage (each waits out the pool's acquire
    // timeout); Postgres is back for send 23.
    const RESTART: i64 = 23;
    let mut refused = 0;
    for i in 1..=TOTAL {
        if i == 20 {
            postgres.crash().await;
            readiness_becomes(two.admin, 503).await;
        }
        if i == RESTART {
            postgres.up().await;
        }
        // Retried with the same client_id until acknowledged, as a client
        // library does; during the outage each try is refused UNAVAILABLE.
        let seq = loop {
            sender.say(&room, &format!("n{i}"), &format!("k{i}")).await;
            let answer = sender
                .next_matching(|frame| match frame {
                    Out::Ack(ack) => Some(Ok(ack.seq)),
                    Out::Error(error) => Some(Err(error)),
                    _ => None,
                })
                .await;
            match answer {
                Ok(seq) => break seq,
                Err(error) => {
                    assert_eq!(error.code, "UNAVAILABLE", "{error:?}");
                    refused += 1;
                    if i < RESTART {
                        // Nothing can be stored until Postgres is back:
                        // skip ahead to its restart.
                        break 0;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        if seq == 0 {
            continue;
        }
    }
    assert!(refused > 0, "sends during the outage were refused");
    readiness_becomes(two.admin, 200).await;
    // What was acknowledged: messages 1-19 before the crash and the ones
    // from the restart on.
    let expected = 19 + (TOTAL - RESTART + 1);
    let mut received = Vec::new();
    while (received.len() as i64) < expected {
        received.push(
            listener
                .next_matching(|frame| match frame {
                    Out::Message(message) => Some((message.seq, message.client_id)),
                    _ => None,
                })
                .await,
        );
    }
    let seqs: Vec<i64> = received.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(
        seqs,
        (1..=expected).collect::<Vec<_>>(),
        "gap-free, in order, once each"
    );
    let ids: Vec<&str> = received.iter().map(|(_, id)| id.as_str()).collect();
    let wanted: Vec<String> = (1..20)
        .chain(RESTART..=TOTAL)
        .map(|i| format!("k{i}"))
        .collect();
    assert_eq!(ids, wanted, "exactly the acknowledged messages");
    one.stop().await;
    two.stop().await;
    stack.stop().await;
}
