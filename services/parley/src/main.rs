//! `parley`: every Parley service in one process, for a laptop and for
//! tests. The services run exactly as they do apart, each on its own ports,
//! calling each other over gRPC on loopback, with one shared metrics
//! registry behind every admin port. With no settings it keeps everything
//! in SQLite under `./data/` and fans out in-process: `parley`, then open
//! http://localhost:8080.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use parley_runtime::{
    CancellationToken,
    config::{AuthUrl, ChatUrl, CommonConfig, MediaUrl, UserUrl},
};

/// Parley all-in-one: the auth, user, chat, media and WebSocket gateway
/// services in one process.
#[derive(Debug, Parser)]
#[command(name = "parley", version, about)]
struct Cli {
    /// A one-off task on the user database (`grant-admin USERNAME` makes
    /// the first admin); without one, Parley runs.
    #[command(subcommand)]
    command: Option<parley_user::AdminCommand>,
    #[command(flatten)]
    auth: parley_auth::AuthArgs,
    #[command(flatten)]
    user: parley_user::UserArgs,
    #[command(flatten)]
    chat: parley_chat::ChatArgs,
    #[command(flatten)]
    media: parley_media::MediaArgs,
    #[command(flatten)]
    gateway: parley_gateway::GatewayArgs,
    #[command(flatten)]
    auth_url: AuthUrl,
    #[command(flatten)]
    user_url: UserUrl,
    #[command(flatten)]
    chat_url: ChatUrl,
    #[command(flatten)]
    media_url: MediaUrl,
    #[command(flatten)]
    common: CommonConfig,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(command) = cli.command {
        return command.run("parley", &cli.user.database_url);
    }
    // Replays pass through a connection's queue, so a queue no longer than
    // the longest replay would cut every client that rejoins after a while.
    if cli.gateway.send_queue <= cli.chat.max_replay {
        eprintln!(
            "parley: GATEWAY_SEND_QUEUE ({}) must exceed CHAT_MAX_REPLAY ({}): a replay passes through the connection's queue",
            cli.gateway.send_queue, cli.chat.max_replay
        );
        return ExitCode::from(2);
    }
    let auth = parley_auth::Config {
        auth: cli.auth,
        user_url: cli.user_url.user_url,
        shutdown_grace: cli.common.shutdown_grace,
    };
    let user = parley_user::Config {
        user: cli.user,
        auth_url: cli.auth_url.auth_url,
        shutdown_grace: cli.common.shutdown_grace,
    };
    let chat = parley_chat::Config {
        chat: cli.chat,
        auth_url: user.auth_url.clone(),
        media_url: cli.media_url.media_url.clone(),
        shutdown_grace: cli.common.shutdown_grace,
    };
    let media = parley_media::Config {
        media: cli.media,
        auth_url: user.auth_url.clone(),
        shutdown_grace: cli.common.shutdown_grace,
    };
    let gateway = parley_gateway::Config {
        gateway: cli.gateway,
        auth_url: user.auth_url.clone(),
        user_url: auth.user_url.clone(),
        chat_url: cli.chat_url.chat_url,
        media_url: cli.media_url.media_url,
        shutdown_grace: cli.common.shutdown_grace,
    };
    parley_runtime::process::run("parley", &cli.common, |shutdown| {
        run(
            Services {
                auth,
                user,
                chat,
                media,
                gateway,
            },
            shutdown,
        )
    })
}

/// Every service's configuration.
struct Services {
    auth: parley_auth::Config,
    user: parley_user::Config,
    chat: parley_chat::Config,
    media: parley_media::Config,
    gateway: parley_gateway::Config,
}

async fn run(services: Services, shutdown: CancellationToken) -> anyhow::Result<()> {
    let Services {
        auth,
        user,
        chat,
        media,
        gateway,
    } = services;
    // The gateway stops first: its sockets get 1001 at once (no other
    // gateway stands beside it to spread reconnects over), its chat streams
    // close, and only then do the services behind it drain, so nothing
    // they hold is cut under a client.
    let backends = CancellationToken::new();
    // All bind before any runs, so a port clash stops everything at once.
    let auth = parley_auth::build(auth, backends.clone()).await?;
    let user = parley_user::build(user, backends.clone()).await?;
    let chat = parley_chat::build(chat, backends.clone()).await?;
    let media = parley_media::build(media, backends.clone()).await?;
    let gateway = parley_gateway::build(gateway, shutdown.clone())
        .await?
        .close_at_once();
    tracing::info!(
        "Parley is up: open http://{} in a browser",
        browsable(gateway.http_addr()?)
    );
    let auth = tokio::spawn(auth.run());
    let user = tokio::spawn(user.run());
    let chat = tokio::spawn(chat.run());
    let media = tokio::spawn(media.run());
    let gateway = {
        let backends = backends.clone();
        tokio::spawn(async move {
            let stopped = gateway.run().await;
            backends.cancel();
            stopped
        })
    };
    // One service failing takes the process down: a half-running all-in-one
    // is worse than a clear exit. Its failure stops the gateway, which then
    // stops the rest.
    let (auth, user, chat, media, gateway) = tokio::join!(
        watch(auth, shutdown.clone(), "auth"),
        watch(user, shutdown.clone(), "user"),
        watch(chat, shutdown.clone(), "chat"),
        watch(media, shutdown.clone(), "media"),
        watch(gateway, shutdown.clone(), "gateway")
    );
    auth.and(user).and(chat).and(media).and(gateway)
}

/// `0.0.0.0:8080` is where the gateway listens, not an address to browse.
fn browsable(address: std::net::SocketAddr) -> String {
    if address.ip().is_unspecified() {
        format!("localhost:{}", address.port())
    } else {
        address.to_string()
    }
}

async fn watch(
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    shutdown: CancellationToken,
    name: &'static str,
) -> anyhow::Result<()> {
    let result = task
        .await
        .with_context(|| format!("{name} service task panicked"))
        .and_then(|r| r);
    if result.is_err() {
        shutdown.cancel();
    }
    result.with_context(|| format!("{name} service"))
}
