//! End-to-end tests of auth and user: every RPC's success and error paths,
//! on Postgres and on SQLite, plus health, reflection and metrics.

// A test that cannot go on should stop right there, loudly.
#![allow(clippy::unwrap_used)]

mod auth;
mod ops;
mod user;
