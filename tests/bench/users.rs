//! Users for a run: registered and logged in over the REST API.

use std::net::SocketAddr;

use anyhow::{Context as _, bail};
use futures_util::{StreamExt as _, stream};
use parley_tests::gateway::{HttpResponse, try_http, username};
use serde_json::json;

/// Password of every bench user.
const PASSWORD: &str = "bench password 0123456789";

/// Registers `count` users through `api` and returns an access token of
/// each. Password hashing dominates, so a few run at once.
pub(crate) async fn sign_up(api: SocketAddr, count: usize) -> anyhow::Result<Vec<String>> {
    let tokens: Vec<anyhow::Result<String>> = stream::iter(0..count)
        .map(|_| async move {
            let name = username("bench");
            let registered = post(api, "/api/v1/auth/register", &name).await?;
            if registered.status != 201 {
                bail!(
                    "registering {name}: {} {}",
                    registered.status,
                    registered.body
                );
            }
            let login = post(api, "/api/v1/auth/login", &name).await?;
            if login.status != 200 {
                bail!("logging {name} in: {} {}", login.status, login.body);
            }
            login.json()["access_token"]
                .as_str()
                .map(str::to_owned)
                .context("a login answer without a token")
        })
        .buffer_unordered(4)
        .collect()
        .await;
    tokens.into_iter().collect()
}

async fn post(api: SocketAddr, path: &str, name: &str) -> anyhow::Result<HttpResponse> {
    let body = json!({"username": name, "password": PASSWORD}).to_string();
    try_http(
        api,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        Some(&body),
    )
    .await
    .with_context(|| format!("POST {path} at {api}"))
}
