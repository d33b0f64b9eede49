//! The chat service's settings.

use std::{net::SocketAddr, time::Duration};

use clap::Args;
use parley_runtime::config::{ChatTls, CorsOrigins, DatabaseUrl, ServiceUrl, parse_duration};

/// Settings read from `CHAT_*` variables.
#[derive(Debug, Clone, Args)]
pub struct ChatArgs {
    /// gRPC API listen address.
    #[arg(
        id = "CHAT_GRPC_ADDR",
        long = "chat-grpc-addr",
        env = "CHAT_GRPC_ADDR",
        default_value = "0.0.0.0:50053"
    )]
    pub grpc_addr: SocketAddr,

    /// Admin listen address: /metrics, /healthz, /readyz.
    #[arg(
        id = "CHAT_ADMIN_ADDR",
        long = "chat-admin-addr",
        env = "CHAT_ADMIN_ADDR",
        default_value = "0.0.0.0:9093"
    )]
    pub admin_addr: SocketAddr,

    /// `postgres://...` (tables in schema `chat`) or `sqlite://path`.
    #[arg(
        id = "CHAT_DATABASE_URL",
        long = "chat-database-url",
        env = "CHAT_DATABASE_URL",
        default_value = "sqlite://data/chat.db",
        hide_env_values = true
    )]
    pub database_url: DatabaseUrl,

    /// `redis://...` for fan-out and presence across replicas; unset means
    /// the in-process bus, for a single process.
    #[arg(
        id = "CHAT_REDIS_URL",
        long = "chat-redis-url",
        env = "CHAT_REDIS_URL",
        hide_env_values = true,
        value_parser = parse_redis_url
    )]
    pub redis_url: Option<String>,

    /// Largest message content, in bytes of UTF-8.
    #[arg(
        id = "CHAT_MAX_CONTENT_BYTES",
        long = "chat-max-content-bytes",
        env = "CHAT_MAX_CONTENT_BYTES",
        default_value_t = 4096,
        value_parser = clap::value_parser!(u32).range(1..=1_048_576)
    )]
    pub max_content_bytes: u32,

    /// Most messages replayed on a join with `since_seq`.
    #[arg(
        id = "CHAT_MAX_REPLAY",
        long = "chat-max-replay",
        env = "CHAT_MAX_REPLAY",
        default_value_t = 1000,
        value_parser = clap::value_parser!(u32).range(0..=100_000)
    )]
    pub max_replay: u32,

    /// Sends per second per user on one replica (token bucket refill).
    #[arg(
        id = "CHAT_SENDS_PER_SECOND",
        long = "chat-sends-per-second",
        env = "CHAT_SENDS_PER_SECOND",
        default_value_t = 20,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub sends_per_second: u32,

    /// Sends a user may make at once before the rate applies (bucket size).
    #[arg(
        id = "CHAT_SEND_BURST",
        long = "chat-send-burst",
        env = "CHAT_SEND_BURST",
        default_value_t = 40,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub send_burst: u32,

    /// Joins and leaves per second per user on one replica once the burst
    /// is spent (token bucket refill). Each join costs several queries.
    #[arg(
        id = "CHAT_JOINS_PER_SECOND",
        long = "chat-joins-per-second",
        env = "CHAT_JOINS_PER_SECOND",
        default_value_t = 10,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub joins_per_second: u32,

    /// Joins and leaves a user may make at once before the rate applies
    /// (bucket size): a client rejoining its rooms after a reconnect stays
    /// within it.
    #[arg(
        id = "CHAT_JOIN_BURST",
        long = "chat-join-burst",
        env = "CHAT_JOIN_BURST",
        default_value_t = 100,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub join_burst: u32,

    /// Rooms one session (a `Chat` stream, or one client of a gateway
    /// stream) may have joined at once.
    #[arg(
        id = "CHAT_MAX_ROOMS_PER_SESSION",
        long = "chat-max-rooms-per-session",
        env = "CHAT_MAX_ROOMS_PER_SESSION",
        default_value_t = 100,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub max_rooms_per_session: u32,

    /// Sessions one user may hold on this replica at once, over every
    /// gateway stream and `Chat` stream; one more is RESOURCE_EXHAUSTED.
    #[arg(
        id = "CHAT_MAX_SESSIONS_PER_USER",
        long = "chat-max-sessions-per-user",
        env = "CHAT_MAX_SESSIONS_PER_USER",
        default_value_t = 64,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub max_sessions_per_user: u32,

    /// Rooms one user may have created before a join of an unknown id (which
    /// would create one more) is refused with RESOURCE_EXHAUSTED; admins
    /// have no limit.
    #[arg(
        id = "CHAT_MAX_ROOMS_PER_CREATOR",
        long = "chat-max-rooms-per-creator",
        env = "CHAT_MAX_ROOMS_PER_CREATOR",
        default_value_t = 1000,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub max_rooms_per_creator: u32,

    /// Sessions one gateway stream may carry at once.
    #[arg(
        id = "CHAT_MAX_SESSIONS_PER_STREAM",
        long = "chat-max-sessions-per-stream",
        env = "CHAT_MAX_SESSIONS_PER_STREAM",
        default_value_t = 65_536,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub max_sessions_per_stream: u32,

    /// Frames queued on one outgoing stream before its reader counts as a
    /// slow consumer and the stream is cut. Must exceed `CHAT_MAX_REPLAY`.
    #[arg(
        id = "CHAT_STREAM_QUEUE",
        long = "chat-stream-queue",
        env = "CHAT_STREAM_QUEUE",
        default_value_t = 4096,
        value_parser = clap::value_parser!(u32).range(16..=1_048_576)
    )]
    pub stream_queue: u32,

    /// Writer lanes on Postgres: batches stored at once, each on its own
    /// connection. A room always uses the same lane. One lane makes the
    /// largest batches, so the fewest commits per message (BENCHMARKS.md,
    /// "Group commit"); more lanes overlap commits when one replica stores
    /// more than one lane can. SQLite always uses one.
    #[arg(
        id = "CHAT_WRITER_LANES",
        long = "chat-writer-lanes",
        env = "CHAT_WRITER_LANES",
        default_value_t = 1,
        value_parser = clap::value_parser!(u32).range(1..=64)
    )]
    pub writer_lanes: u32,

    /// How long a busy writer lane waits for more sends after the first one
    /// of a batch arrives, before it stores the batch: a commit costs the
    /// database far more than a row, so a short wait at a moderate rate
    /// turns many one-message commits into a few larger ones. A lane is
    /// busy when its previous batch began within four lingers; a quiet one
    /// stores at once. At most 100ms; `0s` never waits.
    #[arg(
        id = "CHAT_WRITE_LINGER",
        long = "chat-write-linger",
        env = "CHAT_WRITE_LINGER",
        default_value = "1ms",
        value_parser = parse_linger
    )]
    pub write_linger: Duration,

    /// How long a replica's presence entries live without a heartbeat: the
    /// members of a crashed replica disappear after this. Heartbeats run at
    /// a third of it.
    #[arg(
        id = "CHAT_PRESENCE_TTL",
        long = "chat-presence-ttl",
        env = "CHAT_PRESENCE_TTL",
        default_value = "6s",
        value_parser = parse_duration
    )]
    pub presence_ttl: Duration,

    /// Browser origins that may call with gRPC-Web: comma-separated, or
    /// `*`; empty sends no CORS headers.
    #[arg(
        id = "CHAT_CORS_ORIGINS",
        long = "chat-cors-origins",
        env = "CHAT_CORS_ORIGINS",
        default_value = ""
    )]
    pub cors_origins: CorsOrigins,

    /// TLS on the gRPC port and for calls to `https://` services.
    #[command(flatten)]
    pub tls: ChatTls,

    /// The secret every replica signs its Redis bus events with, and
    /// checks theirs against: whoever can publish to Redis cannot forge a
    /// message. Unset, events are not signed.
    #[arg(
        id = "CHAT_BUS_SECRET",
        long = "chat-bus-secret",
        env = "CHAT_BUS_SECRET",
        hide_env_values = true
    )]
    pub bus_secret: Option<String>,

    /// The secret gateways present to open `GatewayStream`s (the gateway
    /// reads the same variable). Unset, only callers on this host or with
    /// a client certificate (mTLS) may open one.
    #[arg(
        id = "CHAT_GATEWAY_STREAM_SECRET",
        long = "chat-gateway-stream-secret",
        env = "GATEWAY_STREAM_SECRET",
        hide_env_values = true
    )]
    pub gateway_stream_secret: Option<String>,
}

/// The longest `CHAT_WRITE_LINGER`: every send of a busy replica waits
/// for it.
const MAX_LINGER: Duration = Duration::from_millis(100);

fn parse_linger(value: &str) -> Result<Duration, String> {
    let linger = parse_duration(value)?;
    if linger > MAX_LINGER {
        return Err("at most 100ms: every send of a busy replica waits for it".into());
    }
    Ok(linger)
}

fn parse_redis_url(value: &str) -> Result<String, String> {
    crate::redis_target::RedisTarget::parse(value).map(|_| value.trim().to_owned())
}

/// Everything the chat service needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Its own settings.
    pub chat: ChatArgs,
    /// Where auth is, for public keys.
    pub auth_url: ServiceUrl,
    /// Where media is, to check the attachments of sends.
    pub media_url: ServiceUrl,
    /// Drain time on shutdown.
    pub shutdown_grace: Duration,
}

impl Config {
    /// Checks the settings that depend on each other.
    ///
    /// # Errors
    /// Names the variables that disagree.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.chat.stream_queue > self.chat.max_replay,
            "CHAT_STREAM_QUEUE ({}) must exceed CHAT_MAX_REPLAY ({}): a replay passes through the stream's queue",
            self.chat.stream_queue,
            self.chat.max_replay
        );
        anyhow::ensure!(
            self.chat.presence_ttl >= Duration::from_millis(300),
            "CHAT_PRESENCE_TTL must be at least 300ms"
        );
        Ok(())
    }
}
