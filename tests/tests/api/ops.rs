//! Health, reflection and metrics: what operators and tools rely on.

use parley_proto::user::v1::GetUserRequest;
use parley_tests::{DatabaseBackend, TestStack, authed, channel, http_get};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_liveness_and_readiness_per_service() {
    let stack = TestStack::start(DatabaseBackend::Sqlite).await;
    for (addr, service) in [
        (stack.auth_addr, "parley.auth.v1.AuthService"),
        (stack.user_addr, "parley.user.v1.UserService"),
    ] {
        let mut health = HealthClient::new(channel(addr).await);
        for name in ["", service] {
            let status = health
                .check(HealthCheckRequest {
                    service: name.into(),
                })
                .await
                .unwrap()
                .into_inner()
                .status;
            assert_eq!(
                status,
                ServingStatus::Serving as i32,
                "{service} entry {name:?}"
            );
        }
    }
    for admin in [stack.auth_admin, stack.user_admin] {
        assert_eq!(http_get(admin, "/healthz").await.0, 200);
        assert_eq!(http_get(admin, "/readyz").await.0, 200);
    }
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_every_service_and_describes_its_types() {
    let stack = TestStack::start(DatabaseBackend::Sqlite).await;
    let mut reflection = ServerReflectionClient::new(channel(stack.user_addr).await);
    let requests = tokio_stream::iter([
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        },
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(
                "parley.user.v1.User".into(),
            )),
        },
    ]);
    let mut responses = reflection
        .server_reflection_info(requests)
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        responses.message().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list");
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [
        "parley.user.v1.UserService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }
    assert!(
        !names.iter().any(|n| n == "parley.chat.v1.ChatService"),
        "{names:?}"
    );
    let Some(MessageResponse::FileDescriptorResponse(files)) =
        responses.message().await.unwrap().unwrap().message_response
    else {
        panic!("expected file descriptors");
    };
    assert!(!files.file_descriptor_proto.is_empty());
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_calls_with_their_labels_and_histogram_buckets() {
    let mut stack = TestStack::start(DatabaseBackend::Sqlite).await;
    let (user, token) = stack.signed_up("uma").await;
    stack
        .users
        .get_user(authed(GetUserRequest { id: user.id }, &token))
        .await
        .unwrap();
    let missing = stack
        .users
        .get_user(authed(GetUserRequest { id: "nope".into() }, &token))
        .await;
    assert!(missing.is_err());

    let (status, body) = http_get(stack.user_admin, "/metrics").await;
    assert_eq!(status, 200);
    let lines: Vec<&str> = body.lines().collect();
    let has = |needles: &[&str]| {
        lines
            .iter()
            .any(|line| needles.iter().all(|n| line.contains(n)))
    };
    assert!(has(&[
        "grpc_server_handled_total{",
        "grpc_service=\"parley.user.v1.UserService\"",
        "grpc_method=\"GetUser\"",
        "grpc_type=\"unary\"",
        "grpc_code=\"OK\"",
    ]));
    assert!(has(&[
        "grpc_server_handled_total{",
        "grpc_method=\"GetUser\"",
        "grpc_code=\"NotFound\""
    ]));
    assert!(has(&[
        "grpc_server_handling_seconds_bucket{",
        "le=\"0.005\""
    ]));
    assert!(has(&[
        "grpc_server_started_total{",
        "grpc_method=\"GetUser\""
    ]));
    assert!(has(&[
        "grpc_server_msg_received_total{",
        "grpc_method=\"GetUser\""
    ]));
    assert!(has(&[
        "grpc_client_handled_total{",
        "grpc_method=\"CreateUser\"",
        "grpc_code=\"OK\""
    ]));
    assert!(has(&["grpc_client_handling_seconds_bucket{"]));
    assert!(has(&["parley_auth_logins_total{", "result=\"success\""]));
    assert!(has(&["parley_auth_password_hash_seconds_bucket{"]));
    assert!(has(&[
        "parley_db_query_seconds_bucket{",
        "operation=\"get_user\""
    ]));
    assert!(has(&["parley_build_info{", "service=\"user\""]));
    assert!(
        !body.contains("quantile="),
        "histograms must not be summaries"
    );
    stack.stop().await;
}
