//! `parley-chat`: see the crate documentation of `parley_chat`.

use std::process::ExitCode;

use clap::Parser;
use parley_runtime::config::{AuthUrl, CommonConfig, MediaUrl};

/// Parley's chat service: rooms, messages, presence over gRPC.
#[derive(Debug, Parser)]
#[command(name = "parley-chat", version, about)]
struct Cli {
    #[command(flatten)]
    chat: parley_chat::ChatArgs,
    #[command(flatten)]
    auth: AuthUrl,
    #[command(flatten)]
    media: MediaUrl,
    #[command(flatten)]
    common: CommonConfig,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = parley_chat::Config {
        chat: cli.chat,
        auth_url: cli.auth.auth_url,
        media_url: cli.media.media_url,
        shutdown_grace: cli.common.shutdown_grace,
    };
    parley_runtime::process::run("parley-chat", &cli.common, |shutdown| {
        parley_chat::serve(config, shutdown)
    })
}
