//! End-to-end tests of auth and user: every RPC's success and error paths,
//! on Postgres and on SQLite, plus health, reflection and metrics.

mod auth;
mod ops;
mod user;
