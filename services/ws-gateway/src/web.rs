//! The web client, embedded in the binary: one page, its script and
//! stylesheet, and the `@parley/client` module it imports (built from
//! `clients/typescript` and committed, so serving it needs no build step).

use axum::{
    Router,
    http::header,
    response::{IntoResponse, Response},
    routing::get,
};

use crate::AppState;

const INDEX_HTML: &str = include_str!("../assets/index.html");
const APP_JS: &str = include_str!("../assets/app.js");
const APP_CSS: &str = include_str!("../assets/app.css");
const CLIENT_JS: &str = include_str!("../../../clients/typescript/dist/parley-client.js");

/// `GET /`, `/app.js`, `/app.css` and `/parley-client.js`.
pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/app.css",
            get(|| async { asset("text/css; charset=utf-8", APP_CSS) }),
        )
        .route(
            "/parley-client.js",
            get(|| async { asset("text/javascript; charset=utf-8", CLIENT_JS) }),
        )
}

/// What the page may load and who may frame it: its own script, style,
/// images and WebSocket, nothing inline, nothing from elsewhere, and no
/// framing (README, "Web client").
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; \
     base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // Small and versioned with the binary: revalidate each time so
            // an upgrade is picked up at once.
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_FRAME_OPTIONS, "DENY"),
            // Image URLs carry `?token=`: no page address, and so no token,
            // leaves with a request.
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
        .into_response()
}
