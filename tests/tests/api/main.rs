//! End-to-end tests of auth, user and chat: every RPC's success and error paths,
//! on Postgres and on SQLite, plus health, reflection and metrics.

// A test that cannot go on should stop right there, loudly.
#![allow(clippy::unwrap_used)]

mod abuse;
mod api_keys;
mod attachments;
mod auth;
mod chat;
mod chat_cluster;
mod circuits;
mod client;
mod client_faults;
mod compose;
mod conversations;
mod faults;
mod gateway;
mod gateway_cluster;
mod grpc_web;
mod media;
mod moderation;
mod observability;
mod ops;
mod readme;
mod redis_cluster;
mod rest;
mod storm;
mod tls;
mod traces;
mod typescript_client;
mod user;
mod web_client;
