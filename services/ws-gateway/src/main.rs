//! `parley-gateway`: see the crate documentation of `parley_gateway`.

use std::process::ExitCode;

use clap::Parser;
use parley_runtime::config::{AuthUrl, ChatUrl, CommonConfig, MediaUrl, UserUrl};

/// Parley's WebSocket gateway: WebSocket and REST edge, and the web client.
#[derive(Debug, Parser)]
#[command(name = "parley-gateway", version, about)]
struct Cli {
    #[command(flatten)]
    gateway: parley_gateway::GatewayArgs,
    #[command(flatten)]
    auth: AuthUrl,
    #[command(flatten)]
    user: UserUrl,
    #[command(flatten)]
    chat: ChatUrl,
    #[command(flatten)]
    media: MediaUrl,
    #[command(flatten)]
    common: CommonConfig,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = parley_gateway::Config {
        gateway: cli.gateway,
        auth_url: cli.auth.auth_url,
        user_url: cli.user.user_url,
        chat_url: cli.chat.chat_url,
        media_url: cli.media.media_url,
        shutdown_grace: cli.common.shutdown_grace,
    };
    parley_runtime::process::run("parley-gateway", &cli.common, |shutdown| {
        parley_gateway::serve(config, shutdown)
    })
}
