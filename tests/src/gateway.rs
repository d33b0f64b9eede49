//! Whole deployments behind WebSocket gateways, and the clients the tests
//! speak to them with: the distributed topology in-process (auth, user, two
//! chat replicas sharing Postgres and Redis, gateway A on replica 1 and
//! gateway B on replica 2) or the all-in-one `parley` binary.

use std::{net::SocketAddr, time::Duration};

use futures_util::{SinkExt as _, StreamExt as _};
use parley_runtime::{CancellationToken, config::ServiceUrl, test_util::RunningBinary};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{self, Message, client::IntoClientRequest as _, protocol::CloseFrame},
};

use crate::{
    DatabaseBackend, TestStack, binary,
    chat::{ChatReplica, FRAME_TIMEOUT, REDIS_URL, test_args},
    media::{MediaServer, Store},
};

/// Which deployment a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// Separate services in-process on Postgres and Redis, two chat
    /// replicas, two gateways each tied to one replica.
    Distributed,
    /// The `parley` binary with its defaults: SQLite, in-process bus.
    AllInOne,
}

/// Settings a test may change.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `AUTH_ACCESS_TOKEN_TTL`.
    pub access_token_ttl: Duration,
    /// `GATEWAY_MAX_CONNECTIONS_PER_USER`.
    pub max_connections_per_user: u32,
    /// `GATEWAY_MAX_FRAME_BYTES`.
    pub max_frame_bytes: u32,
    /// `GATEWAY_MAX_ROOMS_PER_CONNECTION`.
    pub max_rooms_per_connection: u32,
    /// `GATEWAY_SEND_QUEUE`.
    pub send_queue: u32,
    /// `CHAT_SENDS_PER_SECOND`.
    pub sends_per_second: u32,
    /// `CHAT_SEND_BURST`.
    pub send_burst: u32,
    /// `SHUTDOWN_GRACE`.
    pub shutdown_grace: Duration,
    /// `MEDIA_MAX_BYTES`.
    pub media_max_bytes: u64,
    /// The all-in-one's services call each other at `https://localhost`
    /// URLs (their TLS files come in the extra variables).
    pub https: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            access_token_ttl: Duration::from_secs(900),
            max_connections_per_user: 4,
            max_frame_bytes: 8192,
            max_rooms_per_connection: 8,
            send_queue: 256,
            sends_per_second: 10_000,
            send_burst: 10_000,
            shutdown_grace: Duration::from_secs(3),
            media_max_bytes: 25 * 1024 * 1024,
            https: false,
        }
    }
}

/// A gateway running in this process.
#[derive(Debug)]
pub struct GatewayNode {
    /// HTTP and WebSocket address.
    pub http: SocketAddr,
    /// Admin address.
    pub admin: SocketAddr,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), String>>,
}

impl GatewayNode {
    /// Starts a gateway talking to the chat replicas of `chat_url`, and
    /// waits until it is ready.
    pub async fn start(stack: &TestStack, chat_url: ServiceUrl, settings: &Settings) -> Self {
        let localhost: SocketAddr = ([127, 0, 0, 1], 0).into();
        let listeners = parley_gateway::Listeners {
            http: tokio::net::TcpListener::bind(localhost)
                .await
                .expect("binding port 0"),
            admin: tokio::net::TcpListener::bind(localhost)
                .await
                .expect("binding port 0"),
        };
        let http = listeners.http.local_addr().expect("gateway address");
        let admin = listeners.admin.local_addr().expect("gateway admin address");
        let config = parley_gateway::Config {
            gateway: parley_gateway::GatewayArgs {
                http_addr: http,
                admin_addr: admin,
                max_frame_bytes: settings.max_frame_bytes,
                send_queue: settings.send_queue,
                max_rooms_per_connection: settings.max_rooms_per_connection,
                max_connections_per_user: settings.max_connections_per_user,
                streams_per_replica: 2,
                allowed_origins: parley_runtime::config::CorsOrigins::None,
                tls: Default::default(),
                stream_secret: Some(crate::chat::GATEWAY_STREAM_SECRET.into()),
                auth_attempts: 100_000,
                auth_attempt_every: Duration::from_millis(1),
                client_address_header: parley_gateway::ClientAddressHeader::default(),
            },
            auth_url: stack.auth_url(),
            user_url: ServiceUrl::from_addr(stack.user_addr),
            chat_url,
            media_url: stack.media_url(),
            shutdown_grace: settings.shutdown_grace,
        };
        let shutdown = CancellationToken::new();
        let gateway = parley_gateway::with_listeners(config, listeners, shutdown.clone())
            .expect("gateway builds");
        let task = tokio::spawn(async move { gateway.run().await.map_err(|e| format!("{e:#}")) });
        wait_until_ready(admin).await;
        Self {
            http,
            admin,
            shutdown,
            task,
        }
    }

    /// Stops the gateway and checks it drained cleanly.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let result = tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("gateway stops within the grace period")
            .expect("gateway task does not panic");
        assert_eq!(result, Ok(()));
    }
}

/// Polls `/readyz` until it answers 200: readiness has no event to await
/// from outside the process.
///
/// The limit is generous because the whole suite shares two cores; on
/// timeout the panic quotes the last answer, which names the unmet
/// conditions.
pub async fn wait_until_ready(admin: SocketAddr) {
    let mut last = String::from("no answer");
    let ready = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match try_http_get(admin, "/readyz").await {
                Ok((200, _)) => return,
                Ok((status, body)) => last = format!("{status} {}", body.trim()),
                Err(err) => last = err.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    })
    .await;
    ready.unwrap_or_else(|_| panic!("the service at {admin} did not become ready: {last}"));
}

/// The value of an unlabelled series on an admin port, if it is there.
pub async fn metric(admin: SocketAddr, name: &str) -> Option<f64> {
    let (_, body) = try_http_get(admin, "/metrics").await.ok()?;
    body.lines().find_map(|line| {
        line.strip_prefix(name)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

async fn try_http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let response = try_http(addr, "GET", path, &[], None).await?;
    Ok((response.status, response.body))
}

/// A chat replica as its own process on a fixed port, so it can be killed
/// and started again at the same address.
#[derive(Debug)]
pub struct ChatProcess {
    /// The process.
    pub running: RunningBinary,
}

impl ChatProcess {
    /// Starts `parley-chat` on `port` next to `stack`, sharing Redis, with
    /// `extra` variables, and waits until it is ready.
    pub async fn start(stack: &TestStack, port: u16, extra: &[(&str, &str)]) -> Self {
        let addr = format!("127.0.0.1:{port}");
        let database = stack.database_url("chat").expose().to_owned();
        let auth = stack.auth_url().to_string();
        let media = stack.media_url().to_string();
        let mut env = vec![
            ("CHAT_GRPC_ADDR", addr.as_str()),
            ("CHAT_ADMIN_ADDR", "127.0.0.1:0"),
            ("CHAT_DATABASE_URL", database.as_str()),
            ("CHAT_REDIS_URL", REDIS_URL),
            ("CHAT_BUS_SECRET", crate::chat::BUS_SECRET),
            ("CHAT_PRESENCE_TTL", "1500ms"),
            ("AUTH_URL", auth.as_str()),
            ("MEDIA_URL", media.as_str()),
        ];
        env.extend_from_slice(extra);
        let running = RunningBinary::start(&binary("parley-chat"), &env, 1).await;
        wait_until_ready(running.admin_addrs[0]).await;
        Self { running }
    }

    /// SIGKILLs the process.
    pub async fn kill(mut self) {
        self.running.child.kill().await.expect("SIGKILL");
    }
}

/// A gateway as its own process, so it can be killed as a crashed pod's
/// would be: the kernel resets every connection at once.
#[derive(Debug)]
pub struct GatewayProcess {
    /// HTTP and WebSocket address.
    pub http: SocketAddr,
    /// Admin address.
    pub admin: SocketAddr,
    /// The process.
    pub running: RunningBinary,
}

impl GatewayProcess {
    /// Starts `parley-gateway` on free ports next to `stack`, talking to the
    /// chat replicas of `chat_url`, with `extra` variables, and waits until
    /// it is ready.
    pub async fn start(stack: &TestStack, chat_url: &ServiceUrl, extra: &[(&str, &str)]) -> Self {
        let auth = stack.auth_url().to_string();
        let user = ServiceUrl::from_addr(stack.user_addr).to_string();
        let chat = chat_url.to_string();
        let media = stack.media_url().to_string();
        let mut env = vec![
            ("GATEWAY_HTTP_ADDR", "127.0.0.1:0"),
            ("GATEWAY_ADMIN_ADDR", "127.0.0.1:0"),
            ("AUTH_URL", auth.as_str()),
            ("USER_URL", user.as_str()),
            ("CHAT_URL", chat.as_str()),
            ("MEDIA_URL", media.as_str()),
        ];
        env.extend_from_slice(extra);
        let running = RunningBinary::start(&binary("parley-gateway"), &env, 1).await;
        let (http, admin) = (running.http_addrs[0], running.admin_addrs[0]);
        wait_until_ready(admin).await;
        Self {
            http,
            admin,
            running,
        }
    }

    /// SIGKILLs the process.
    pub async fn kill(mut self) {
        self.running.child.kill().await.expect("SIGKILL");
    }
}

/// A running deployment.
#[derive(Debug)]
pub struct Deployment {
    /// What it is.
    pub topology: Topology,
    /// Gateway A's and B's HTTP addresses (one address for the all-in-one).
    pub gateways: Vec<SocketAddr>,
    /// The gateways' admin addresses.
    pub gateway_admins: Vec<SocketAddr>,
    /// The chat replicas' admin addresses.
    pub chat_admins: Vec<SocketAddr>,
    /// media's admin address.
    pub media_admin: SocketAddr,
    /// auth's admin address.
    pub auth_admin: SocketAddr,
    /// user's admin address.
    pub user_admin: SocketAddr,
    /// auth's gRPC address.
    pub auth_grpc: SocketAddr,
    /// user's gRPC address.
    pub user_grpc: SocketAddr,
    /// The chat replicas' gRPC addresses.
    pub chat_grpcs: Vec<SocketAddr>,
    parts: Parts,
}

#[derive(Debug)]
enum Parts {
    Distributed {
        stack: Box<TestStack>,
        media: Box<MediaServer>,
        replicas: Vec<ChatReplica>,
        gateways: Vec<GatewayNode>,
    },
    /// The process, and the environment it was started with (for its
    /// one-off subcommands).
    AllInOne(Box<RunningBinary>, Vec<(String, String)>),
}

impl Deployment {
    /// Starts `topology` with `settings` and waits until every gateway is
    /// ready.
    pub async fn start(topology: Topology, settings: &Settings) -> Self {
        match topology {
            Topology::Distributed => Self::distributed(settings).await,
            Topology::AllInOne => Self::all_in_one(settings, &[]).await,
        }
    }

    async fn distributed(settings: &Settings) -> Self {
        let mut stack =
            TestStack::start_with(DatabaseBackend::Postgres, settings.access_token_ttl).await;
        let media = MediaServer::start(&stack, Store::Folder, |args| {
            args.max_bytes = settings.media_max_bytes;
        })
        .await;
        stack.media_url = Some(ServiceUrl::from_addr(media.addr));
        let mut replicas = Vec::new();
        for _ in 0..2 {
            let mut args = test_args(&stack, Some(REDIS_URL));
            // Gateways prove themselves to chat with the secret.
            args.gateway_stream_secret = Some(crate::chat::GATEWAY_STREAM_SECRET.into());
            args.sends_per_second = settings.sends_per_second;
            args.send_burst = settings.send_burst;
            replicas.push(ChatReplica::start(&stack, args).await);
        }
        let mut gateways = Vec::new();
        for replica in &replicas {
            gateways.push(
                GatewayNode::start(&stack, ServiceUrl::from_addr(replica.addr), settings).await,
            );
        }
        Self {
            topology: Topology::Distributed,
            gateways: gateways.iter().map(|g| g.http).collect(),
            gateway_admins: gateways.iter().map(|g| g.admin).collect(),
            chat_admins: replicas.iter().map(|r| r.admin).collect(),
            media_admin: media.admin,
            auth_admin: stack.auth_admin,
            user_admin: stack.user_admin,
            auth_grpc: stack.auth_addr,
            user_grpc: stack.user_addr,
            chat_grpcs: replicas.iter().map(|r| r.addr).collect(),
            parts: Parts::Distributed {
                stack: Box::new(stack),
                media: Box::new(media),
                replicas,
                gateways,
            },
        }
    }

    /// Starts the `parley` binary with `settings` and extra variables.
    pub async fn all_in_one(settings: &Settings, extra: &[(&str, &str)]) -> Self {
        let ports = free_ports(10).await;
        let addr = |i: usize| format!("127.0.0.1:{}", ports[i]);
        let url = |i: usize| {
            if settings.https {
                format!("https://localhost:{}", ports[i])
            } else {
                format!("http://127.0.0.1:{}", ports[i])
            }
        };
        let owned: Vec<(String, String)> = vec![
            ("AUTH_GRPC_ADDR".into(), addr(0)),
            ("USER_GRPC_ADDR".into(), addr(1)),
            ("CHAT_GRPC_ADDR".into(), addr(2)),
            ("GATEWAY_HTTP_ADDR".into(), addr(3)),
            ("AUTH_ADMIN_ADDR".into(), addr(4)),
            ("USER_ADMIN_ADDR".into(), addr(5)),
            ("CHAT_ADMIN_ADDR".into(), addr(6)),
            ("GATEWAY_ADMIN_ADDR".into(), addr(7)),
            ("MEDIA_GRPC_ADDR".into(), addr(8)),
            ("MEDIA_ADMIN_ADDR".into(), addr(9)),
            ("AUTH_URL".into(), url(0)),
            ("USER_URL".into(), url(1)),
            ("CHAT_URL".into(), url(2)),
            ("MEDIA_URL".into(), url(8)),
            (
                "MEDIA_MAX_BYTES".into(),
                settings.media_max_bytes.to_string(),
            ),
            // Tests sign the same users in often; the limit has its own test.
            ("AUTH_LOGIN_ATTEMPTS".into(), "1000".into()),
            ("GATEWAY_AUTH_ATTEMPTS".into(), "100000".into()),
            (
                "AUTH_ACCESS_TOKEN_TTL".into(),
                format!("{}ms", settings.access_token_ttl.as_millis()),
            ),
            (
                "GATEWAY_MAX_CONNECTIONS_PER_USER".into(),
                settings.max_connections_per_user.to_string(),
            ),
            (
                "GATEWAY_MAX_FRAME_BYTES".into(),
                settings.max_frame_bytes.to_string(),
            ),
            (
                "GATEWAY_MAX_ROOMS_PER_CONNECTION".into(),
                settings.max_rooms_per_connection.to_string(),
            ),
            ("GATEWAY_SEND_QUEUE".into(), settings.send_queue.to_string()),
            ("CHAT_MAX_REPLAY".into(), "20".into()),
            (
                "CHAT_SENDS_PER_SECOND".into(),
                settings.sends_per_second.to_string(),
            ),
            ("CHAT_SEND_BURST".into(), settings.send_burst.to_string()),
            (
                "SHUTDOWN_GRACE".into(),
                format!("{}ms", settings.shutdown_grace.as_millis()),
            ),
        ];
        let mut env: Vec<(&str, &str)> = owned
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        env.extend_from_slice(extra);
        // Five services: auth, user, chat, media and the gateway.
        let running = RunningBinary::start(&binary("parley"), &env, 5).await;
        let gateway: SocketAddr = addr(3).parse().expect("an address");
        let admin: SocketAddr = addr(7).parse().expect("an address");
        wait_until_ready(admin).await;
        Self {
            topology: Topology::AllInOne,
            gateways: vec![gateway],
            gateway_admins: vec![admin],
            chat_admins: vec![addr(6).parse().expect("an address")],
            media_admin: addr(9).parse().expect("an address"),
            auth_admin: addr(4).parse().expect("an address"),
            user_admin: addr(5).parse().expect("an address"),
            auth_grpc: addr(0).parse().expect("an address"),
            user_grpc: addr(1).parse().expect("an address"),
            chat_grpcs: vec![addr(2).parse().expect("an address")],
            parts: Parts::AllInOne(
                Box::new(running),
                env.iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
        }
    }

    /// The auth and user services of a distributed deployment, to start
    /// more services beside them; `None` for the all-in-one.
    pub fn stack(&self) -> Option<&TestStack> {
        match &self.parts {
            Parts::Distributed { stack, .. } => Some(stack),
            Parts::AllInOne(..) => None,
        }
    }

    /// Gateway `index` of two (A = 0, B = 1); the all-in-one has one.
    pub fn gateway(&self, index: usize) -> SocketAddr {
        self.gateways[index % self.gateways.len()]
    }

    /// The process of the all-in-one deployment.
    pub fn process(&mut self) -> Option<&mut RunningBinary> {
        match &mut self.parts {
            Parts::AllInOne(running, _) => Some(running),
            Parts::Distributed { .. } => None,
        }
    }

    /// Starts `topology` with two users signed up, alice and bob (unique
    /// names starting so).
    pub async fn start_with_pair(
        topology: Topology,
        settings: &Settings,
    ) -> (Self, Account, Account) {
        let deployment = Self::start(topology, settings).await;
        let alice = deployment.sign_up(&username("alice")).await;
        let bob = deployment.sign_up(&username("bob")).await;
        (deployment, alice, bob)
    }

    /// Registers `username` over REST and logs in.
    pub async fn sign_up(&self, username: &str) -> Account {
        let gateway = self.gateway(0);
        let registered = http_json(
            gateway,
            "POST",
            "/api/v1/auth/register",
            None,
            &json!({ "username": username, "password": crate::PASSWORD }),
        )
        .await;
        assert_eq!(
            registered.status, 201,
            "registering {username}: {}",
            registered.body
        );
        let user = registered.json();
        let tokens = self.log_in(username).await;
        Account {
            user_id: user["id"].as_str().expect("a user id").to_owned(),
            username: username.to_owned(),
            access_token: tokens["access_token"].as_str().expect("a token").to_owned(),
            refresh_token: tokens["refresh_token"]
                .as_str()
                .expect("a token")
                .to_owned(),
        }
    }

    /// The global admin ([`crate::ADMIN`]), signed up and promoted as an
    /// operator would (`grant-admin`) if the deployment has not done so.
    pub async fn admin(&self) -> Account {
        let _ = http_json(
            self.gateway(0),
            "POST",
            "/api/v1/auth/register",
            None,
            &json!({ "username": crate::ADMIN, "password": crate::PASSWORD }),
        )
        .await;
        if let Parts::AllInOne(running, env) = &self.parts {
            let granted = tokio::process::Command::new(binary("parley"))
                .current_dir(running.dir.path())
                .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .args(["grant-admin", crate::ADMIN])
                .output()
                .await
                .expect("parley grant-admin runs");
            assert!(
                granted.status.success(),
                "parley grant-admin: {}",
                String::from_utf8_lossy(&granted.stderr)
            );
        }
        let tokens = self.log_in(crate::ADMIN).await;
        let token = tokens["access_token"].as_str().expect("a token").to_owned();
        let me = http_json(
            self.gateway(0),
            "GET",
            "/api/v1/me",
            Some(&token),
            &Value::Null,
        )
        .await;
        assert_eq!(me.status, 200, "{}", me.body);
        Account {
            user_id: me.json()["id"].as_str().expect("an id").to_owned(),
            username: crate::ADMIN.to_owned(),
            access_token: token,
            refresh_token: tokens["refresh_token"]
                .as_str()
                .expect("a token")
                .to_owned(),
        }
    }

    /// Logs `username` in over REST and returns the token answer.
    pub async fn log_in(&self, username: &str) -> Value {
        let response = http_json(
            self.gateway(0),
            "POST",
            "/api/v1/auth/login",
            None,
            &json!({ "username": username, "password": crate::PASSWORD }),
        )
        .await;
        assert_eq!(
            response.status, 200,
            "logging {username} in: {}",
            response.body
        );
        response.json()
    }

    /// Ends every database connection of the distributed topology's
    /// services; 0 for the all-in-one.
    pub async fn terminate_database_connections(&self) -> u64 {
        match &self.parts {
            Parts::Distributed { stack, .. } => stack.terminate_database_connections().await,
            Parts::AllInOne(..) => 0,
        }
    }

    /// The HTTP status of a login of `username` with the test password.
    pub async fn log_in_status(&self, username: &str) -> u16 {
        http_json(
            self.gateway(0),
            "POST",
            "/api/v1/auth/login",
            None,
            &json!({ "username": username, "password": crate::PASSWORD }),
        )
        .await
        .status
    }

    /// Opens a WebSocket to gateway `index` as `account`.
    pub async fn ws(&self, index: usize, account: &Account) -> Ws {
        Ws::connect(self.gateway(index), &account.access_token).await
    }

    /// Stops everything, checking every part drains and exits cleanly.
    pub async fn stop(self) {
        match self.parts {
            Parts::Distributed {
                stack,
                media,
                replicas,
                gateways,
            } => {
                for gateway in gateways {
                    gateway.stop().await;
                }
                for replica in replicas {
                    replica.stop().await;
                }
                media.stop().await;
                stack.stop().await;
            }
            Parts::AllInOne(mut running, _) => {
                running.terminate().await;
                let exit = tokio::time::timeout(Duration::from_secs(20), running.child.wait())
                    .await
                    .expect("parley exits within the grace period")
                    .expect("an exit status");
                assert_eq!(exit.code(), Some(0), "parley's exit status");
            }
        }
    }
}

/// `count` ports that were free a moment ago.
pub async fn free_ports(count: usize) -> Vec<u16> {
    let mut listeners = Vec::new();
    for _ in 0..count {
        listeners.push(
            tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("binding port 0"),
        );
    }
    listeners
        .iter()
        .map(|l| l.local_addr().expect("a local address").port())
        .collect()
}

/// A `CHAT_URL` naming the chat replicas on these loopback ports.
pub fn service_url(ports: &[u16]) -> ServiceUrl {
    ports
        .iter()
        .map(|port| format!("http://127.0.0.1:{port}"))
        .collect::<Vec<_>>()
        .join(",")
        .parse()
        .expect("a service URL")
}

/// A signed-up user.
#[derive(Debug, Clone)]
pub struct Account {
    /// The user's id.
    pub user_id: String,
    /// The username.
    pub username: String,
    /// An access token.
    pub access_token: String,
    /// Its refresh token.
    pub refresh_token: String,
}

/// A unique username.
pub fn username(prefix: &str) -> String {
    crate::chat::room_id(prefix)
        .replace('-', "_")
        .chars()
        .take(32)
        .collect()
}

/// An HTTP answer.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Header lines, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: String,
}

impl HttpResponse {
    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|err| panic!("not JSON ({err}): {}", self.body))
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// Sends a JSON body, with a bearer token when given.
pub async fn http_json(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &Value,
) -> HttpResponse {
    let authorization = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(value) = &authorization {
        headers.push(("Authorization", value.as_str()));
    }
    http(addr, method, path, &headers, Some(&body.to_string())).await
}

/// One HTTP/1.1 request.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> HttpResponse {
    try_http(addr, method, path, headers, body)
        .await
        .unwrap_or_else(|err| panic!("{method} {path}: {err}"))
}

/// One HTTP/1.1 request, with I/O errors returned.
///
/// # Errors
/// When the connection or the exchange fails.
pub async fn try_http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> std::io::Result<HttpResponse> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = TcpStream::connect(addr).await?;
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    let body = body.unwrap_or("");
    request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(FRAME_TIMEOUT, stream.read_to_end(&mut raw))
        .await
        .map_err(|_| std::io::Error::other("no answer in time"))??;
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status line in {head:?}")))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_lowercase(), value.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(name, value)| name == "transfer-encoding" && value.contains("chunked"));
    let body = if chunked {
        unchunk(body)
    } else {
        body.to_owned()
    };
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

fn unchunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// What a WebSocket read produced.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A JSON text frame.
    Frame(Value),
    /// The server closed with this code (None: no close frame, the
    /// connection just ended).
    Closed(Option<u16>),
}

/// A WebSocket client speaking the protocol of the README ("WebSocket protocol").
#[derive(Debug)]
pub struct Ws {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Ws {
    /// Connects to `addr` with `?token=`.
    pub async fn connect(addr: SocketAddr, token: &str) -> Self {
        let url = format!("ws://{addr}/ws?token={token}");
        let (stream, _) = tokio_tungstenite::connect_async(url)
            .await
            .unwrap_or_else(|err| panic!("WebSocket upgrade at {addr}: {err}"));
        Self { stream }
    }

    /// Connects to `wss://localhost:<port of addr>/ws` with `?token=`,
    /// trusting `ca_pem` (README, "TLS").
    pub async fn connect_tls(addr: SocketAddr, token: &str, ca_pem: &str) -> Self {
        use rustls::pki_types::{CertificateDer, pem::PemObject as _};
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(cert.expect("a PEM CA")).expect("a usable CA");
        }
        let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        let url = format!("wss://localhost:{}/ws?token={token}", addr.port());
        let (stream, _) = tokio_tungstenite::connect_async_tls_with_config(
            url,
            None,
            false,
            Some(tokio_tungstenite::Connector::Rustls(std::sync::Arc::new(
                config,
            ))),
        )
        .await
        .unwrap_or_else(|err| panic!("WSS upgrade at {addr}: {err}"));
        Self { stream }
    }

    /// Connects with a prepared request, returning the upgrade error as
    /// is (for the refusal tests).
    pub async fn try_connect(
        request: http::Request<()>,
    ) -> Result<(Self, http::Response<Option<Vec<u8>>>), Box<tungstenite::Error>> {
        let (stream, response) = tokio_tungstenite::connect_async(request)
            .await
            .map_err(Box::new)?;
        Ok((Self { stream }, response))
    }

    /// A request for `ws://addr/ws` to adjust before connecting.
    pub fn request(addr: SocketAddr, query: &str) -> http::Request<()> {
        format!("ws://{addr}/ws{query}")
            .into_client_request()
            .expect("a valid WebSocket URL")
    }

    /// Sends one JSON frame.
    pub async fn send(&mut self, frame: Value) {
        self.send_text(&frame.to_string()).await;
    }

    /// Sends one raw text frame.
    pub async fn send_text(&mut self, text: &str) {
        self.stream
            .send(Message::text(text))
            .await
            .expect("the socket takes a frame");
    }

    /// Sends one raw WebSocket message.
    pub async fn send_message(&mut self, message: Message) -> Result<(), tungstenite::Error> {
        self.stream.send(message).await
    }

    /// Writes `messages` back to back with one flush at the end, as a
    /// client streaming a large message does.
    ///
    /// # Errors
    /// When the connection fails on the way (the server may close first).
    pub async fn send_all(&mut self, messages: Vec<Message>) -> Result<(), tungstenite::Error> {
        for message in messages {
            self.stream.feed(message).await?;
        }
        self.stream.flush().await
    }

    /// The next frame or the close, failing the test after
    /// [`FRAME_TIMEOUT`].
    pub async fn next_event(&mut self) -> Event {
        loop {
            let next = tokio::time::timeout(FRAME_TIMEOUT, self.stream.next())
                .await
                .expect("a frame within the timeout");
            match next {
                Some(Ok(Message::Text(text))) => {
                    return Event::Frame(
                        serde_json::from_str(text.as_str())
                            .unwrap_or_else(|err| panic!("a server frame is JSON ({err}): {text}")),
                    );
                }
                Some(Ok(Message::Close(frame))) => {
                    return Event::Closed(frame.map(|CloseFrame { code, .. }| u16::from(code)));
                }
                Some(Ok(Message::Binary(_))) => panic!("the server sent a binary frame"),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return Event::Closed(None),
            }
        }
    }

    /// The next frame, failing if the connection closes.
    pub async fn next(&mut self) -> Value {
        match self.next_event().await {
            Event::Frame(frame) => frame,
            Event::Closed(code) => panic!("the connection closed ({code:?})"),
        }
    }

    /// The body of the next `kind` frame, skipping other kinds; an
    /// unexpected `error` frame fails the test.
    pub async fn next_kind(&mut self, kind: &str) -> Value {
        loop {
            let frame = self.next().await;
            if let Some(body) = frame.get(kind) {
                return body.clone();
            }
            if let Some(error) = frame.get("error") {
                panic!("expected a {kind} frame, got an error: {error}");
            }
        }
    }

    /// The close code, skipping frames before it.
    pub async fn closed(&mut self) -> Option<u16> {
        loop {
            if let Event::Closed(code) = self.next_event().await {
                // Answer the close frame at once, as browsers do (the reply
                // is queued when the close frame is read).
                let _ = self.stream.flush().await;
                return code;
            }
        }
    }

    /// Joins `room_id` after `since_seq` and returns the `joined` body.
    pub async fn join(&mut self, room_id: &str, since_seq: i64) -> Value {
        self.send(json!({ "join": { "room_id": room_id, "since_seq": since_seq } }))
            .await;
        self.next_kind("joined").await
    }

    /// Sends `content` to `room_id` with `client_id`.
    pub async fn say(&mut self, room_id: &str, content: &str, client_id: &str) {
        self.send(
            json!({ "send": { "room_id": room_id, "content": content, "client_id": client_id } }),
        )
        .await;
    }

    /// The next `message` body.
    pub async fn next_message(&mut self) -> Value {
        self.next_kind("message").await
    }

    /// Closes from the client's side.
    pub async fn close(mut self) {
        let _ = self.stream.close(None).await;
    }
}

/// Declares a test that runs against the distributed topology and against
/// the all-in-one binary.
#[macro_export]
macro_rules! on_both_topologies {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn distributed() {
                    super::$name($crate::gateway::Topology::Distributed).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn all_in_one() {
                    super::$name($crate::gateway::Topology::AllInOne).await
                }
            }
        )*
    };
}
