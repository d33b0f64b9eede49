//! Both client libraries while the deployment fails under a client that
//! streams a room: a chat replica is SIGKILLed and the gateway the client
//! is connected to is restarted (a new one takes new connections, the old
//! one drains with 1001), while another user keeps sending; then the
//! replica comes back, as Kubernetes restarts a killed container. Every
//! event arrives exactly once and in order, and a send made across the
//! restart is stored once (README: "Client libraries").

use std::time::Duration;

use parley_runtime::config::ServiceUrl;
use parley_tests::{
    DatabaseBackend, TestStack,
    gateway::{
        ChatProcess, GatewayNode, Settings, free_ports, http, metric, service_url, username,
    },
    proxy::Proxy,
};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};

use super::client::{WAIT, each_once_in_order, next_message, signed_in};

/// Messages the other user sends while the faults happen.
const COUNT: i64 = 150;
/// Spacing of those sends, so they span the faults.
const PACE: Duration = Duration::from_millis(20);
/// Sends come faster than a person's default limit.
const LIMITS: &[(&str, &str)] = &[
    ("CHAT_SENDS_PER_SECOND", "10000"),
    ("CHAT_SEND_BURST", "10000"),
];

/// Two chat replicas as processes; gateway A, in front of both, for the
/// sender; gateway B, in front of both and behind a proxy (as behind a
/// Service), for the client under test.
struct Faulty {
    stack: TestStack,
    ports: Vec<u16>,
    chat: Vec<Option<ChatProcess>>,
    chat_url: ServiceUrl,
    settings: Settings,
    sender_gateway: GatewayNode,
    gateway: Option<GatewayNode>,
    proxy: Proxy,
}

impl Faulty {
    async fn start() -> Self {
        let stack = TestStack::start(DatabaseBackend::Postgres).await;
        let ports = free_ports(2).await;
        let mut chat = Vec::new();
        // Sends come faster than a person's default limit.
        for port in &ports {
            chat.push(Some(ChatProcess::start(&stack, *port, LIMITS).await));
        }
        let chat_url = service_url(&ports);
        let settings = Settings::default();
        let sender_gateway = GatewayNode::start(&stack, chat_url.clone(), &settings).await;
        let gateway = GatewayNode::start(&stack, chat_url.clone(), &settings).await;
        let proxy = Proxy::start(gateway.http).await;
        Self {
            stack,
            ports,
            chat,
            chat_url,
            settings,
            sender_gateway,
            gateway: Some(gateway),
            proxy,
        }
    }

    /// SIGKILLs chat replica 1.
    async fn kill_a_chat_replica(&mut self) {
        if let Some(replica) = self.chat[0].take() {
            replica.kill().await;
        }
    }

    /// Starts chat replica 1 again at its address.
    async fn restart_the_chat_replica(&mut self) {
        if self.chat[0].is_none() {
            self.chat[0] = Some(ChatProcess::start(&self.stack, self.ports[0], LIMITS).await);
        }
    }

    /// Replaces the client's gateway as a rolling restart does.
    async fn restart_the_gateway(&mut self) {
        let fresh = GatewayNode::start(&self.stack, self.chat_url.clone(), &self.settings).await;
        self.proxy.point_to(fresh.http);
        if let Some(old) = self.gateway.replace(fresh) {
            old.stop().await;
        }
    }

    async fn stop(mut self) {
        drop(self.proxy);
        if let Some(gateway) = self.gateway.take() {
            gateway.stop().await;
        }
        self.sender_gateway.stop().await;
        for replica in self.chat.into_iter().flatten() {
            replica.kill().await;
        }
        self.stack.stop().await;
    }
}

/// While replica 1 is down, the sender's gateway balances its unary calls
/// (REST reads) over the replica that answers only: every one succeeds at
/// once, with no retry, and no circuit opens (README, "When a chat
/// replica goes away").
async fn reads_skip_the_dead_replica(faulty: &mut Faulty, room_id: &str) {
    let admin = faulty.sender_gateway.admin;
    let answering = tokio::time::timeout(WAIT, async {
        while metric(admin, "parley_client_endpoints{target=\"chat\"}").await != Some(1.0) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        answering.is_ok(),
        "the gateway still balances over the dead replica"
    );
    let reader = faulty.stack.account(&username("reader")).await;
    let bearer = format!("Bearer {}", reader.access_token);
    let path = format!("/api/v1/rooms/{room_id}/messages?limit=1");
    for _ in 0..20 {
        let answer = http(
            faulty.sender_gateway.http,
            "GET",
            &path,
            &[("Authorization", &bearer)],
            None,
        )
        .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_client_streams_through_a_replica_kill_and_a_gateway_restart() {
    let mut faulty = Faulty::start().await;
    let alice = signed_in(faulty.sender_gateway.http, "alice").await;
    let bob = signed_in(faulty.proxy.addr, "bob").await;
    let room_id = username("faults");
    let alices = alice.connect().await.unwrap();
    let bobs = bob.connect().await.unwrap();
    let at_alice = alices.join(&room_id).await.unwrap();
    let mut at_bob = bobs.join(&room_id).await.unwrap();

    let sender = tokio::spawn(async move {
        for n in 1..=COUNT {
            at_alice.send(&format!("m{n}")).await.unwrap();
            tokio::time::sleep(PACE).await;
        }
        at_alice
    });
    let mut seen = Vec::new();
    while seen.len() < 20 {
        seen.push(next_message(&mut at_bob).await);
    }
    faulty.kill_a_chat_replica().await;
    while seen.len() < 50 {
        seen.push(next_message(&mut at_bob).await);
    }
    faulty.restart_the_gateway().await;
    let bobs_send = at_bob.sender();
    let across = tokio::spawn(async move { bobs_send.send("bob across the restart").await });
    let total = COUNT + 1;
    while (seen.len() as i64) < total {
        seen.push(next_message(&mut at_bob).await);
    }
    let at_alice = sender.await.unwrap();
    assert!(across.await.unwrap().unwrap().seq > 0);
    reads_skip_the_dead_replica(&mut faulty, &room_id).await;
    faulty.restart_the_chat_replica().await;
    each_once_in_order(&seen, COUNT, total, &alice, &room_id).await;
    drop((at_alice, at_bob, alices, bobs));
    faulty.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_typescript_client_streams_through_a_replica_kill_and_a_gateway_restart() {
    let mut faulty = Faulty::start().await;
    let mut node = tokio::process::Command::new("node")
        .args(["--experimental-websocket", "test/faults.mjs"])
        .arg(format!("http://{}", faulty.sender_gateway.http))
        .arg(format!("http://{}", faulty.proxy.addr))
        .arg(COUNT.to_string())
        .arg(PACE.as_millis().to_string())
        .current_dir(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../clients/typescript"
        ))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs");
    let mut go = node.stdin.take().unwrap();
    let mut lines = tokio::io::BufReader::new(node.stdout.take().unwrap()).lines();
    let mut last = String::new();
    // The script says how far the stream is; the faults follow it.
    while let Some(line) = tokio::time::timeout(WAIT * 3, lines.next_line())
        .await
        .expect("the script goes on")
        .unwrap()
    {
        match line.as_str() {
            "seen 20" => faulty.kill_a_chat_replica().await,
            "seen 50" => faulty.restart_the_gateway().await,
            "streamed" => {
                faulty.restart_the_chat_replica().await;
                go.write_all(b"go\n").await.unwrap();
            }
            _ => {}
        }
        last = line;
    }
    let status = tokio::time::timeout(WAIT, node.wait())
        .await
        .expect("the script ends")
        .unwrap();
    assert!(status.success(), "the script failed; its last line: {last}");
    let report: serde_json::Value = serde_json::from_str(&last).unwrap();
    assert_eq!(report["seen"], COUNT + 1, "{report}");
    assert_eq!(report["stored"], COUNT + 1, "{report}");
    faulty.stop().await;
}
