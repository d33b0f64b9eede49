//! What every binary's `main` does: start the runtime and telemetry, turn
//! signals into a shutdown, run the service, and exit with a code that
//! says how it went.

use std::{future::Future, process::ExitCode};

use tokio_util::sync::CancellationToken;

use crate::config::CommonConfig;

/// Runs `serve` to completion on a multi-threaded Tokio runtime, with
/// telemetry installed and SIGTERM/SIGINT wired to its shutdown token.
/// Exit codes: 0 after a clean drain, 2 for configuration that cannot work
/// (a bad log filter or exporter), 1 when the service fails.
pub fn run<F, Fut>(name: &'static str, common: &CommonConfig, serve: F) -> ExitCode
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = common.worker_threads {
        builder.worker_threads(threads.get());
    }
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("{name}: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let _telemetry = match crate::telemetry::init(name, common) {
            Ok(guard) => guard,
            Err(err) => {
                eprintln!("{name}: {err:#}");
                return ExitCode::from(2);
            }
        };
        let shutdown = match crate::shutdown::on_signal() {
            Ok(token) => token,
            Err(err) => {
                tracing::error!(error = %err, "cannot install signal handlers");
                return ExitCode::FAILURE;
            }
        };
        match serve(shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(err)
                if err
                    .chain()
                    .any(|cause| cause.is::<crate::config::BadValue>()) =>
            {
                eprintln!("{name}: {err:#}");
                tracing::error!(error = format!("{err:#}"), "{name} cannot start");
                ExitCode::from(2)
            }
            Err(err) => {
                tracing::error!(error = format!("{err:#}"), "{name} failed");
                ExitCode::FAILURE
            }
        }
    })
}
