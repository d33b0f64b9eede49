//! A whole Parley stack (auth and user, wired to each other) started
//! in-process on port 0 against a real database, with helpers to call it.

use std::{net::SocketAddr, time::Duration};

use parley_auth::keys::SigningKeys;
use parley_proto::{
    auth::v1::{LoginRequest, RegisterRequest, TokenPair, auth_service_client::AuthServiceClient},
    user::v1::{User, user_service_client::UserServiceClient},
};
use parley_runtime::{
    CancellationToken,
    config::ServiceUrl,
    serve::Listeners,
    test_util::{Backend, TestDatabase, init_tracing},
};
use tonic::{Request, transport::Channel};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

pub use parley_runtime::test_util::Backend as DatabaseBackend;

pub mod chat;
pub mod gateway;
pub mod media;
pub mod proxy;
pub mod redis_cluster;

/// The username that gets `admin` in every test stack.
pub const ADMIN: &str = "admin";
/// The password of every user the helpers register.
pub const PASSWORD: &str = "correct horse battery";

/// Running auth and user services.
#[derive(Debug)]
pub struct TestStack {
    /// auth's gRPC address.
    pub auth_addr: SocketAddr,
    /// user's gRPC address.
    pub user_addr: SocketAddr,
    /// auth's admin address.
    pub auth_admin: SocketAddr,
    /// user's admin address.
    pub user_admin: SocketAddr,
    /// A client of auth.
    pub auth: AuthServiceClient<Channel>,
    /// A client of user.
    pub users: UserServiceClient<Channel>,
    /// An access token of the `admin` user.
    pub admin_token: String,
    /// Where a media service beside the stack is, for the chat replicas
    /// and gateways started next; `None` when there is none.
    pub media_url: Option<ServiceUrl>,
    /// auth's signing key, to mint service tokens in tests.
    signing_pem: String,
    shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<Result<(), String>>>,
    _database: TestDatabase,
}

/// Listeners on loopback port 0.
pub async fn listeners() -> Listeners {
    let localhost: SocketAddr = ([127, 0, 0, 1], 0).into();
    Listeners::bind(localhost, "grpc", localhost, "admin")
        .await
        .expect("binding port 0")
}

impl TestStack {
    /// Starts auth and user on `backend` and waits until both are ready.
    pub async fn start(backend: Backend) -> Self {
        Self::start_with(backend, Duration::from_secs(900)).await
    }

    /// Starts auth and user with access tokens that live `access_token_ttl`.
    pub async fn start_with(backend: Backend, access_token_ttl: Duration) -> Self {
        init_tracing();
        let database = TestDatabase::new(backend).await;
        let signing_pem = SigningKeys::generate_pem().expect("a key");
        let (auth_listeners, user_listeners) = (listeners().await, listeners().await);
        let auth_addr = auth_listeners.grpc_addr().expect("auth address");
        let user_addr = user_listeners.grpc_addr().expect("user address");
        let auth_admin = auth_listeners.admin_addr().expect("auth admin address");
        let user_admin = user_listeners.admin_addr().expect("user admin address");
        let shutdown = CancellationToken::new();
        let grace = Duration::from_secs(5);

        let auth_config = parley_auth::Config {
            auth: parley_auth::AuthArgs {
                grpc_addr: auth_addr,
                admin_addr: auth_admin,
                database_url: database.url_for("auth"),
                jwt_private_key: Some(signing_pem.clone().into()),
                jwt_private_key_file: None,
                access_token_ttl,
                refresh_token_ttl: Duration::from_secs(3600),
                api_key_token_ttl: Duration::from_secs(300),
                login_attempts: 1000,
                login_attempt_every: Duration::from_millis(100),
                cors_origins: parley_runtime::config::CorsOrigins::None,
                tls: Default::default(),
            },
            user_url: ServiceUrl::from_addr(user_addr),
            shutdown_grace: grace,
        };
        let user_config = parley_user::Config {
            user: parley_user::UserArgs {
                grpc_addr: user_addr,
                admin_addr: user_admin,
                database_url: database.url_for("user"),
                cors_origins: parley_runtime::config::CorsOrigins::None,
                tls: Default::default(),
            },
            auth_url: ServiceUrl::from_addr(auth_addr),
            shutdown_grace: grace,
        };
        let auth_app = parley_auth::with_listeners(auth_config, auth_listeners, shutdown.clone())
            .await
            .expect("auth builds");
        let user_app = parley_user::with_listeners(user_config, user_listeners, shutdown.clone())
            .await
            .expect("user builds");
        let tasks = vec![
            tokio::spawn(async move { auth_app.run().await.map_err(|e| format!("{e:#}")) }),
            tokio::spawn(async move { user_app.run().await.map_err(|e| format!("{e:#}")) }),
        ];

        let auth_channel = channel(auth_addr).await;
        let user_channel = channel(user_addr).await;
        wait_until_serving(user_channel.clone(), "parley.user.v1.UserService").await;
        wait_until_serving(auth_channel.clone(), "parley.auth.v1.AuthService").await;

        let mut stack = Self {
            auth_addr,
            user_addr,
            auth_admin,
            user_admin,
            auth: AuthServiceClient::new(auth_channel),
            users: UserServiceClient::new(user_channel),
            admin_token: String::new(),
            media_url: None,
            signing_pem,
            shutdown,
            tasks,
            _database: database,
        };
        stack.register(ADMIN).await;
        parley_user::set_admin(&stack.database_url("user"), ADMIN, true)
            .await
            .expect("the admin promoted");
        stack.admin_token = stack.login(ADMIN).await.access_token;
        stack
    }

    /// Ends every database connection of the stack's services (the chat
    /// replicas' too, which share the database); see
    /// [`TestDatabase::terminate_connections`].
    pub async fn terminate_database_connections(&self) -> u64 {
        self._database.terminate_connections().await
    }

    /// A token with the `service` role, as auth signs for its own calls.
    ///
    /// # Panics
    /// When the key cannot sign.
    pub fn service_token(&self) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("a clock after 1970")
            .as_secs() as i64;
        self.sign(&parley_runtime::token::AccessClaims {
            sub: "00000000-0000-0000-0000-000000000000".into(),
            name: "tests".into(),
            roles: vec![parley_runtime::token::SERVICE_ROLE.into()],
            iat: now,
            nbf: now,
            exp: now + 300,
            jti: format!("test-{now}"),
            iss: parley_runtime::token::ISSUER.into(),
            aud: parley_runtime::token::SERVICE_AUDIENCE.into(),
            scope: None,
            fam: None,
            key: None,
        })
    }

    /// `claims` signed with auth's key, for tests of what verifiers accept.
    ///
    /// # Panics
    /// When the key cannot sign.
    pub fn sign(&self, claims: &parley_runtime::token::AccessClaims) -> String {
        SigningKeys::from_pem(&self.signing_pem)
            .and_then(|keys| keys.sign(claims))
            .expect("a signed token")
    }

    /// Registers `username` with [`PASSWORD`].
    pub async fn register(&mut self, username: &str) -> User {
        self.auth
            .register(RegisterRequest {
                username: username.into(),
                password: PASSWORD.into(),
                email: format!("{username}@example.com"),
                display_name: String::new(),
            })
            .await
            .unwrap_or_else(|status| panic!("registering {username}: {status:?}"))
            .into_inner()
            .user
            .expect("a registered user")
    }

    /// Logs `username` in with [`PASSWORD`].
    pub async fn login(&mut self, username: &str) -> TokenPair {
        self.auth
            .login(LoginRequest {
                username: username.into(),
                password: PASSWORD.into(),
            })
            .await
            .unwrap_or_else(|status| panic!("logging {username} in: {status:?}"))
            .into_inner()
            .tokens
            .expect("tokens")
    }

    /// Registers and logs in `username`, returning the user and an access
    /// token.
    pub async fn signed_up(&mut self, username: &str) -> (User, String) {
        let user = self.register(username).await;
        let token = self.login(username).await.access_token;
        (user, token)
    }

    /// Registers and logs in `username`, as the gateway tests' [`Account`].
    ///
    /// [`Account`]: crate::gateway::Account
    pub async fn account(&mut self, username: &str) -> crate::gateway::Account {
        let (user, token) = self.signed_up(username).await;
        crate::gateway::Account {
            user_id: user.id,
            username: user.username,
            access_token: token,
            refresh_token: String::new(),
        }
    }

    /// The URL of `service`'s database in this stack.
    pub fn database_url(&self, service: &str) -> parley_runtime::config::DatabaseUrl {
        self._database.url_for(service)
    }

    /// Where auth is, for services started next to this stack.
    pub fn auth_url(&self) -> ServiceUrl {
        ServiceUrl::from_addr(self.auth_addr)
    }

    /// Where media is for services started next to this stack: the one set
    /// in [`Self::media_url`], else a port nothing listens on (sends with
    /// attachments then fail UNAVAILABLE).
    pub fn media_url(&self) -> ServiceUrl {
        self.media_url
            .clone()
            .unwrap_or_else(|| ServiceUrl::from_addr(([127, 0, 0, 1], 9).into()))
    }

    /// Stops both services and checks they drained cleanly.
    pub async fn stop(self) {
        self.shutdown.cancel();
        for task in self.tasks {
            let result = tokio::time::timeout(Duration::from_secs(15), task)
                .await
                .expect("services stop within the grace period")
                .expect("service task does not panic");
            assert_eq!(result, Ok(()));
        }
    }
}

/// Resident set size of a process in KiB (`VmRSS`), or 0 when unreadable:
/// how the tests and the bench watch a process's memory.
pub fn rss_kib(pid: u32) -> u64 {
    proc_kib(pid, "status", "VmRSS:")
}

/// The `field` line (`Name:   N kB`) of `/proc/<pid>/<file>`, in KiB, or 0
/// when unreadable.
pub fn proc_kib(pid: u32, file: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix(field))
                .and_then(|value| value.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// The path of a workspace binary: cargo puts them beside the test's own,
/// unless `PARLEY_BIN_DIR` names another folder (release builds, for the
/// storm's recovery time in RELIABILITY.md).
pub fn binary(name: &str) -> String {
    if let Some(dir) = std::env::var_os("PARLEY_BIN_DIR") {
        return std::path::Path::new(&dir).join(name).display().to_string();
    }
    let mut path = std::env::current_exe().expect("test binary path");
    path.pop();
    if path.ends_with("deps") {
        path.pop();
    }
    path.join(name).display().to_string()
}

/// A lazily connected plaintext channel to `addr`.
pub async fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .expect("a valid URI")
        .connect()
        .await
        .unwrap_or_else(|err| panic!("connecting to {addr}: {err}"))
}

/// Watches `service`'s health until it is SERVING.
pub async fn wait_until_serving(channel: Channel, service: &str) {
    let mut health = HealthClient::new(channel);
    let mut watch = health
        .watch(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .expect("health watch")
        .into_inner();
    let serving = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(response) = watch.message().await.expect("health stream") {
            if response.status == ServingStatus::Serving as i32 {
                return;
            }
        }
        panic!("health stream of {service} ended before SERVING");
    })
    .await;
    serving.unwrap_or_else(|_| panic!("{service} did not become SERVING"));
}

/// `message` with `authorization: Bearer <token>`.
pub fn authed<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}")
            .parse()
            .expect("a token is valid metadata"),
    );
    request
}

/// GETs `path` from an admin port over plain HTTP/1.1, returning the status
/// code and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("admin port reachable");
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .expect("request written");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("response read");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("an HTTP status line");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Declares a test that runs once on Postgres and once on SQLite.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$name($crate::DatabaseBackend::Postgres).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name($crate::DatabaseBackend::Sqlite).await
                }
            }
        )*
    };
}
