//! `parley-user`: see the crate documentation of `parley_user`.

use std::process::ExitCode;

use clap::Parser;
use parley_runtime::config::{AuthUrl, CommonConfig};

/// Parley's user service: profiles over gRPC.
#[derive(Debug, Parser)]
#[command(name = "parley-user", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<parley_user::AdminCommand>,
    #[command(flatten)]
    user: parley_user::UserArgs,
    #[command(flatten)]
    auth: AuthUrl,
    #[command(flatten)]
    common: CommonConfig,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(command) = cli.command {
        return command.run("parley-user", &cli.user.database_url);
    }
    let config = parley_user::Config {
        user: cli.user,
        auth_url: cli.auth.auth_url,
        shutdown_grace: cli.common.shutdown_grace,
    };
    parley_runtime::process::run("parley-user", &cli.common, |shutdown| {
        parley_user::serve(config, shutdown)
    })
}
