//! `parley-auth`: see the crate documentation of `parley_auth`.

use std::process::ExitCode;

use clap::Parser;
use parley_runtime::config::{CommonConfig, UserUrl};

/// Parley's auth service: accounts and tokens over gRPC.
#[derive(Debug, Parser)]
#[command(name = "parley-auth", version, about)]
struct Cli {
    #[command(flatten)]
    auth: parley_auth::AuthArgs,
    #[command(flatten)]
    user: UserUrl,
    #[command(flatten)]
    common: CommonConfig,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = parley_auth::Config {
        auth: cli.auth,
        user_url: cli.user.user_url,
        shutdown_grace: cli.common.shutdown_grace,
    };
    parley_runtime::process::run("parley-auth", &cli.common, |shutdown| {
        parley_auth::serve(config, shutdown)
    })
}
