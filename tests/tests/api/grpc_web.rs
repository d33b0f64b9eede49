//! gRPC-Web on every gRPC port (README, "gRPC-Web"): a real gRPC-Web client
//! (Connect's transport for Node, from npm, with message types built from
//! Parley's descriptor set) registers, fails a login, reads a profile and
//! reads a server stream; CORS answers only the origins `<SVC>_CORS_ORIGINS`
//! lists.

use parley_runtime::config::CorsOrigins;
use parley_tests::{
    DatabaseBackend, TestStack,
    gateway::{HttpResponse, try_http},
    media::{MediaServer, Store},
};
use serde_json::Value;

const GRPC_WEB: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/grpc-web");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_web_client_calls_auth_and_user() {
    let stack = TestStack::start(DatabaseBackend::Sqlite).await;
    let dir = tempfile::tempdir().unwrap();
    let descriptors = dir.path().join("parley.binpb");
    std::fs::write(&descriptors, parley_proto::FILE_DESCRIPTOR_SET).unwrap();
    let output = tokio::process::Command::new("node")
        .arg(format!("{GRPC_WEB}/calls.mjs"))
        .arg(&descriptors)
        .arg(format!("http://{}", stack.auth_addr))
        .arg(format!("http://{}", stack.user_addr))
        .arg("webby")
        .arg(parley_tests::PASSWORD)
        .output()
        .await
        .expect("node runs (`make tools` installs the client in tests/grpc-web)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the gRPC-Web calls failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let answers: Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    assert_eq!(answers["registered"], "webby");
    assert_eq!(answers["wrong_password"], "Unauthenticated");
    assert_eq!(answers["get_user"], "webby");
    assert_eq!(answers["list_users"], serde_json::json!(["webby"]));
    stack.stop().await;
}

async fn preflight(addr: std::net::SocketAddr, origin: &str) -> HttpResponse {
    try_http(
        addr,
        "OPTIONS",
        "/parley.media.v1.MediaService/GetAttachment",
        &[
            ("Origin", origin),
            ("Access-Control-Request-Method", "POST"),
            (
                "Access-Control-Request-Headers",
                "authorization,content-type,x-grpc-web",
            ),
        ],
        None,
    )
    .await
    .expect("the gRPC port answers HTTP/1.1")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_answers_only_the_listed_origins() {
    let stack = TestStack::start(DatabaseBackend::Sqlite).await;
    let media = MediaServer::start(&stack, Store::Folder, |args| {
        args.cors_origins = "https://app.example.com".parse().unwrap();
    })
    .await;

    let allowed = preflight(media.addr, "https://app.example.com").await;
    assert_eq!(
        allowed.header("access-control-allow-origin"),
        Some("https://app.example.com"),
        "{allowed:?}"
    );
    let methods = allowed
        .header("access-control-allow-methods")
        .unwrap_or_default();
    assert!(methods.contains("POST"), "{methods}");
    let headers = allowed
        .header("access-control-allow-headers")
        .unwrap_or_default()
        .to_ascii_lowercase();
    assert!(
        headers.contains("authorization") && headers.contains("x-grpc-web"),
        "{headers}"
    );

    let other = preflight(media.addr, "https://evil.example.com").await;
    assert_eq!(other.header("access-control-allow-origin"), None);
    // auth lists no origin (the default): no CORS header at all.
    let default = preflight(stack.auth_addr, "https://app.example.com").await;
    assert_eq!(default.header("access-control-allow-origin"), None);

    assert_eq!(
        "*".parse::<CorsOrigins>(),
        Ok(CorsOrigins::Any),
        "any origin"
    );
    for bad in [
        "app.example.com",
        "https://app.example.com/path",
        "https://",
    ] {
        assert!(bad.parse::<CorsOrigins>().is_err(), "{bad}");
    }
    media.stop().await;
    stack.stop().await;
}
