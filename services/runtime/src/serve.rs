//! The life of a service process: bind, serve the API and admin ports,
//! drain on shutdown. Every service's `build` returns a [`Service`].

use std::net::SocketAddr;

use anyhow::Context as _;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    grpc::{self, ServerOptions, Services},
    health::Readiness,
};

/// A service's two listening sockets, bound before anything else starts so
/// callers (and tests, with port 0) know the addresses at once.
#[derive(Debug)]
pub struct Listeners {
    /// The gRPC API.
    pub grpc: TcpListener,
    /// `/metrics`, `/healthz`, `/readyz`.
    pub admin: TcpListener,
}

impl Listeners {
    /// Binds both addresses; `grpc_var` and `admin_var` name the variables
    /// they came from, for the error message.
    ///
    /// # Errors
    /// Fails when an address cannot be bound.
    pub async fn bind(
        grpc: SocketAddr,
        grpc_var: &str,
        admin: SocketAddr,
        admin_var: &str,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            grpc: TcpListener::bind(grpc)
                .await
                .with_context(|| format!("{grpc_var}: cannot listen on {grpc}"))?,
            admin: TcpListener::bind(admin)
                .await
                .with_context(|| format!("{admin_var}: cannot listen on {admin}"))?,
        })
    }

    /// The bound gRPC address (the real port when 0 was asked for).
    ///
    /// # Errors
    /// Fails when the socket has no local address.
    pub fn grpc_addr(&self) -> std::io::Result<SocketAddr> {
        self.grpc.local_addr()
    }

    /// The bound admin address.
    ///
    /// # Errors
    /// Fails when the socket has no local address.
    pub fn admin_addr(&self) -> std::io::Result<SocketAddr> {
        self.admin.local_addr()
    }
}

/// A service built and bound, ready to run: what every service's
/// `build` returns, so callers (binaries, the all-in-one, tests) handle all
/// services alike.
#[derive(Debug)]
pub struct Service {
    name: &'static str,
    listeners: Listeners,
    services: Services,
    readiness: Readiness,
    options: ServerOptions,
    shutdown: CancellationToken,
}

impl Service {
    /// Assembles a service from its parts; `name` labels its logs.
    pub fn new(
        name: &'static str,
        listeners: Listeners,
        services: Services,
        readiness: Readiness,
        options: ServerOptions,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            name,
            listeners,
            services,
            readiness,
            options,
            shutdown,
        }
    }

    /// The bound gRPC address.
    ///
    /// # Errors
    /// Fails when the socket has no local address.
    pub fn grpc_addr(&self) -> std::io::Result<SocketAddr> {
        self.listeners.grpc_addr()
    }

    /// The bound admin address.
    ///
    /// # Errors
    /// Fails when the socket has no local address.
    pub fn admin_addr(&self) -> std::io::Result<SocketAddr> {
        self.listeners.admin_addr()
    }

    /// Serves until the shutdown token fires, then drains.
    ///
    /// # Errors
    /// Fails when a server fails.
    pub async fn run(self) -> anyhow::Result<()> {
        run(
            self.name,
            self.listeners,
            self.services,
            self.readiness,
            self.options,
            self.shutdown,
        )
        .await
    }
}

/// Serves `services` and the admin port until `shutdown`, then drains
/// within `options.shutdown_grace`.
///
/// # Errors
/// Fails when either server fails.
async fn run(
    service: &'static str,
    listeners: Listeners,
    services: Services,
    readiness: Readiness,
    options: ServerOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    tracing::info!(
        service,
        grpc = %listeners.grpc_addr()?,
        admin = %listeners.admin_addr()?,
        "listening"
    );
    let admin = crate::admin::start(listeners.admin, &readiness, &shutdown);
    let served = grpc::serve(
        listeners.grpc,
        services,
        readiness,
        options,
        shutdown.clone(),
    )
    .await;
    // The gRPC server also returns when it fails; take the admin port down
    // with it rather than leave a half-alive process.
    shutdown.cancel();
    let admin_result = admin.finish().await;
    served?;
    admin_result?;
    tracing::info!(service, "stopped");
    Ok(())
}
