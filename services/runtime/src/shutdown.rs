//! Turning SIGTERM and SIGINT into a cancellation every part of a service
//! watches.

use tokio_util::sync::CancellationToken;

/// A token that is cancelled on the first SIGTERM or SIGINT. A second
/// signal is left to the default handler's successor: the process keeps
/// draining, bounded by `SHUTDOWN_GRACE`.
///
/// # Errors
/// Fails when the signal handlers cannot be installed.
pub fn on_signal() -> std::io::Result<CancellationToken> {
    let token = CancellationToken::new();
    let cancel = token.clone();
    #[cfg(unix)]
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::spawn(async move {
        #[cfg(unix)]
        let terminated = terminate.recv();
        #[cfg(not(unix))]
        let terminated = std::future::pending::<Option<()>>();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received; shutting down"),
            _ = terminated => tracing::info!("SIGTERM received; shutting down"),
        }
        cancel.cancel();
    });
    Ok(token)
}
