//! Entry points for the fuzz targets of `fuzz/` (feature `fuzzing`): each
//! parser of untrusted input the gateway has, run without a server. None
//! may panic, hang or allocate without bound, whatever the bytes.

use axum::http::{HeaderMap, HeaderValue, header::AUTHORIZATION};

/// A WebSocket text frame from a client.
pub fn client_frame(text: &str) {
    let _ = crate::frames::parse(text);
}

/// A REST request body, read as every route's.
pub fn rest_body(bytes: &[u8]) {
    crate::rest::fuzz_bodies(bytes);
}

/// A query string, read as the history route's and the upgrade's.
pub fn query_string(query: &str) {
    crate::rest::fuzz_query(query);
}

/// An `Authorization` header, from which REST and the upgrade take a token.
pub fn authorization(value: &[u8]) {
    if let Ok(value) = HeaderValue::from_bytes(value) {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, value);
        let _ = crate::rest::bearer_token(&headers);
    }
}
