//! The gateway's settings.

use std::{net::SocketAddr, time::Duration};

use clap::Args;
use parley_runtime::config::{CorsOrigins, GatewayTls, ServiceUrl};

/// Settings read from `GATEWAY_*` variables.
#[derive(Debug, Clone, Args)]
pub struct GatewayArgs {
    /// WebSocket, REST and web client listen address.
    #[arg(
        id = "GATEWAY_HTTP_ADDR",
        long = "gateway-http-addr",
        env = "GATEWAY_HTTP_ADDR",
        default_value = "0.0.0.0:8080"
    )]
    pub http_addr: SocketAddr,

    /// Admin listen address: /metrics, /healthz, /readyz.
    #[arg(
        id = "GATEWAY_ADMIN_ADDR",
        long = "gateway-admin-addr",
        env = "GATEWAY_ADMIN_ADDR",
        default_value = "0.0.0.0:9094"
    )]
    pub admin_addr: SocketAddr,

    /// Largest WebSocket frame or message accepted, in bytes; a larger one
    /// closes the connection with 1009.
    #[arg(
        id = "GATEWAY_MAX_FRAME_BYTES",
        long = "gateway-max-frame-bytes",
        env = "GATEWAY_MAX_FRAME_BYTES",
        default_value_t = 65_536,
        value_parser = clap::value_parser!(u32).range(256..=16_777_216)
    )]
    pub max_frame_bytes: u32,

    /// Frames queued for one connection before it counts as a slow
    /// consumer and is closed with 4008. Must exceed `CHAT_MAX_REPLAY`.
    #[arg(
        id = "GATEWAY_SEND_QUEUE",
        long = "gateway-send-queue",
        env = "GATEWAY_SEND_QUEUE",
        default_value_t = 1024,
        value_parser = clap::value_parser!(u32).range(8..=1_048_576)
    )]
    pub send_queue: u32,

    /// Rooms one connection may have joined at once.
    #[arg(
        id = "GATEWAY_MAX_ROOMS_PER_CONNECTION",
        long = "gateway-max-rooms-per-connection",
        env = "GATEWAY_MAX_ROOMS_PER_CONNECTION",
        default_value_t = 100,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub max_rooms_per_connection: u32,

    /// WebSocket connections one user may hold on this gateway; one more
    /// upgrade is refused with HTTP 429.
    #[arg(
        id = "GATEWAY_MAX_CONNECTIONS_PER_USER",
        long = "gateway-max-connections-per-user",
        env = "GATEWAY_MAX_CONNECTIONS_PER_USER",
        default_value_t = 16,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub max_connections_per_user: u32,

    /// Multiplexed streams the gateway keeps to each chat replica; client
    /// sessions are spread over them.
    #[arg(
        id = "GATEWAY_STREAMS_PER_REPLICA",
        long = "gateway-streams-per-replica",
        env = "GATEWAY_STREAMS_PER_REPLICA",
        default_value_t = 2,
        value_parser = clap::value_parser!(u32).range(1..=64)
    )]
    pub streams_per_replica: u32,

    /// Web pages of other origins that may open WebSockets here:
    /// comma-separated origins, or `*`; the gateway's own origin always
    /// may, and clients that send no `Origin` are not affected.
    #[arg(
        id = "GATEWAY_ALLOWED_ORIGINS",
        long = "gateway-allowed-origins",
        env = "GATEWAY_ALLOWED_ORIGINS",
        default_value = ""
    )]
    pub allowed_origins: CorsOrigins,

    /// Sign-up, sign-in and refresh requests one client address may make
    /// at once; then one more per `GATEWAY_AUTH_ATTEMPT_EVERY`.
    #[arg(
        id = "GATEWAY_AUTH_ATTEMPTS",
        long = "gateway-auth-attempts",
        env = "GATEWAY_AUTH_ATTEMPTS",
        default_value_t = 30,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub auth_attempts: u32,

    /// How often a client address gets one more of those requests back.
    #[arg(
        id = "GATEWAY_AUTH_ATTEMPT_EVERY",
        long = "gateway-auth-attempt-every",
        env = "GATEWAY_AUTH_ATTEMPT_EVERY",
        default_value = "2s",
        value_parser = parley_runtime::config::parse_duration
    )]
    pub auth_attempt_every: std::time::Duration,

    /// A header that carries the client's address, set by the proxy in
    /// front (`x-real-ip`, or `x-forwarded-for`, whose last address is the
    /// one that proxy saw). Unset: the TCP peer's address.
    #[arg(
        id = "GATEWAY_CLIENT_ADDRESS_HEADER",
        long = "gateway-client-address-header",
        env = "GATEWAY_CLIENT_ADDRESS_HEADER",
        default_value = ""
    )]
    pub client_address_header: ClientAddressHeader,

    /// HTTPS and WSS, and TLS for calls to `https://` services.
    #[command(flatten)]
    pub tls: GatewayTls,

    /// The secret this gateway presents to chat to open its
    /// `GatewayStream`s (chat reads the same variable).
    #[arg(
        id = "GATEWAY_STREAM_SECRET",
        long = "gateway-stream-secret",
        env = "GATEWAY_STREAM_SECRET",
        hide_env_values = true
    )]
    pub stream_secret: Option<String>,
}

/// Everything the gateway needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Its own settings.
    pub gateway: GatewayArgs,
    /// Where auth is: public keys, and the REST sign-in routes.
    pub auth_url: ServiceUrl,
    /// Where the user service is, for `GET /api/v1/me`.
    pub user_url: ServiceUrl,
    /// Where the chat replicas are.
    pub chat_url: ServiceUrl,
    /// Where media is, for the attachment routes.
    pub media_url: ServiceUrl,
    /// Drain time on shutdown; sockets get their 1001 spread over it.
    pub shutdown_grace: Duration,
}

/// `GATEWAY_CLIENT_ADDRESS_HEADER`: a header name, or none for "" (so a
/// chart or compose file may set the variable empty).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientAddressHeader(pub Option<http::HeaderName>);

impl std::str::FromStr for ClientAddressHeader {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let value = value.trim();
        if value.is_empty() {
            return Ok(Self(None));
        }
        value
            .parse()
            .map(|name| Self(Some(name)))
            .map_err(|_| format!("`{value}` is not a header name"))
    }
}
