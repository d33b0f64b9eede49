//! `parley-media`: see the crate documentation of `parley_media`.

use std::process::ExitCode;

use clap::Parser;
use parley_runtime::config::{AuthUrl, CommonConfig};

/// Parley's media service: attachments over gRPC.
#[derive(Debug, Parser)]
#[command(name = "parley-media", version, about)]
struct Cli {
    #[command(flatten)]
    media: parley_media::MediaArgs,
    #[command(flatten)]
    auth: AuthUrl,
    #[command(flatten)]
    common: CommonConfig,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = parley_media::Config {
        media: cli.media,
        auth_url: cli.auth.auth_url,
        shutdown_grace: cli.common.shutdown_grace,
    };
    parley_runtime::process::run("parley-media", &cli.common, |shutdown| {
        parley_media::serve(config, shutdown)
    })
}
