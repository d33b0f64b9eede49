//! Plumbing every Parley service shares, written once.
//!
//! # Layout
//! - [`config`]: settings shared by every binary, and the value types
//!   (`DatabaseUrl`, `ServiceUrl`, durations) service configs parse into.
//! - [`telemetry`]: logs, OpenTelemetry export, trace-context propagation.
//! - [`metrics`]: the Prometheus registry, buckets, `parley_build_info`.
//! - [`health`]: readiness conditions behind `/readyz` and gRPC health.
//! - [`grpc`]: the server every service goes through (health, reflection,
//!   metrics, tracing, limits, drain) and status helpers.
//! - [`client`]: balanced, observed channels to other services; retries.
//! - [`password`]: Argon2id hashing off the async threads.
//! - [`tls`]: certificates for servers and clients, re-read on rotation.
//! - [`revocations`]: access tokens refused before their expiry.
//! - [`token`]: access-token verification and the caller's identity.
//! - [`storage`]: one sqlx code path for Postgres and SQLite, migrations.
//! - [`admin`]: the `/metrics`, `/healthz`, `/readyz` HTTP server.
//! - [`serve`]: binding and running a service until it has drained.
//! - [`shutdown`]: SIGTERM and SIGINT as a cancellation token.
//! - [`process`]: what every `main` does around a service.
#![warn(missing_docs)]

pub mod admin;
pub mod circuit;
pub mod client;
pub mod config;
pub mod grpc;
pub mod health;
pub mod limits;
pub mod metrics;
pub mod password;
pub mod process;
pub mod revocations;
pub mod serve;
pub mod shutdown;
pub mod storage;
pub mod telemetry;
#[cfg(any(test, feature = "test-util"))]
pub mod test_util;
pub mod tls;
pub mod token;
pub mod vec_set;

pub use tokio_util::sync::CancellationToken;
