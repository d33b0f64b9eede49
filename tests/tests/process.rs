//! The binaries as operators run them: no configuration, then SIGTERM with
//! a stream still open.

// A test that cannot go on should stop right there, loudly.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use parley_runtime::test_util::RunningBinary;
use parley_tests::{binary, channel};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

async fn starts_bare_and_drains_on_sigterm(
    program: &str,
    prefix: &str,
    service: &str,
    database: &str,
) {
    let grpc = format!("{prefix}_GRPC_ADDR");
    let admin = format!("{prefix}_ADMIN_ADDR");
    let running = RunningBinary::start(
        &binary(program),
        &[
            (grpc.as_str(), "127.0.0.1:0"),
            (admin.as_str(), "127.0.0.1:0"),
            ("SHUTDOWN_GRACE", "3s"),
        ],
        1,
    )
    .await;
    let addr = running.grpc_addrs[0];
    assert!(
        running.dir.path().join("data").join(database).exists(),
        "{database} created under data/"
    );

    // What `grpcurl -plaintext host:port list` does.
    let mut reflection = ServerReflectionClient::new(channel(addr).await);
    let mut answers = reflection
        .server_reflection_info(tokio_stream::iter([ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        }]))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        answers.message().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list");
    };
    assert!(
        list.service.iter().any(|s| s.name == service),
        "{service} not listed"
    );

    // A stream stays open across the signal: the health watch of liveness.
    let mut health = HealthClient::new(channel(addr).await);
    let mut watch = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);

    running.terminate().await;
    let mut running = running;
    let exit = tokio::time::timeout(Duration::from_secs(3 + 5), running.child.wait())
        .await
        .expect("exits within SHUTDOWN_GRACE + 5s")
        .expect("exit status");
    assert_eq!(exit.code(), Some(0), "{program} exit status");

    // The open stream saw the drain: NOT_SERVING, then the end.
    let mut saw_not_serving = false;
    while let Ok(Some(update)) = watch.message().await {
        saw_not_serving |= update.status == ServingStatus::NotServing as i32;
    }
    assert!(
        saw_not_serving,
        "the watch stream was told NOT_SERVING before it ended"
    );
}

#[tokio::test]
async fn parley_user_starts_bare_and_drains_on_sigterm() {
    starts_bare_and_drains_on_sigterm(
        "parley-user",
        "USER",
        "parley.user.v1.UserService",
        "user.db",
    )
    .await;
}

#[tokio::test]
async fn parley_chat_starts_bare_and_drains_on_sigterm() {
    starts_bare_and_drains_on_sigterm(
        "parley-chat",
        "CHAT",
        "parley.chat.v1.ChatService",
        "chat.db",
    )
    .await;
}

#[tokio::test]
async fn parley_auth_starts_bare_and_drains_on_sigterm() {
    starts_bare_and_drains_on_sigterm(
        "parley-auth",
        "AUTH",
        "parley.auth.v1.AuthService",
        "auth.db",
    )
    .await;
}

/// Runs `program` in `dir` with `env`, expects it to refuse to start with
/// exit code 2 (a bad setting), and returns what it wrote to stderr.
async fn refused(program: &str, dir: &std::path::Path, env: &[(&str, &str)]) -> String {
    let output = tokio::process::Command::new(binary(program))
        .current_dir(dir)
        .envs(env.iter().copied())
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(
        output.status.code(),
        Some(2),
        "{program} with {env:?}: {stderr}"
    );
    stderr
}

#[tokio::test]
async fn a_bad_value_exits_with_code_2_naming_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let stderr = refused(
        "parley-user",
        dir.path(),
        &[("USER_DATABASE_URL", "mysql://nope")],
    )
    .await;
    assert!(stderr.contains("USER_DATABASE_URL"), "{stderr}");
}

/// A signing key that is not a PEM key is a bad value like any other:
/// exit 2 naming the variable (and never printing the key), whether it
/// comes in the variable or in the file it names.
#[tokio::test]
async fn a_signing_key_that_is_not_pem_exits_2_naming_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("key.pem");
    std::fs::write(&file, "not a key at all").unwrap();
    let missing = dir.path().join("missing.pem");
    for (variable, value) in [
        ("AUTH_JWT_PRIVATE_KEY", "secret-looking-garbage".to_owned()),
        ("AUTH_JWT_PRIVATE_KEY_FILE", file.display().to_string()),
        ("AUTH_JWT_PRIVATE_KEY_FILE", missing.display().to_string()),
    ] {
        let stderr = refused(
            "parley-auth",
            dir.path(),
            &[
                (variable, &value),
                ("AUTH_GRPC_ADDR", "127.0.0.1:0"),
                ("AUTH_ADMIN_ADDR", "127.0.0.1:0"),
            ],
        )
        .await;
        assert!(stderr.contains(variable), "{stderr}");
        assert!(!stderr.contains("secret-looking-garbage"), "{stderr}");
    }
}

#[tokio::test]
async fn help_lists_every_variable_without_secrets() {
    let output = tokio::process::Command::new(binary("parley-auth"))
        .arg("--help")
        .env("AUTH_JWT_PRIVATE_KEY", "super-secret-value")
        .output()
        .await
        .unwrap();
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for variable in [
        "AUTH_GRPC_ADDR",
        "AUTH_ADMIN_ADDR",
        "AUTH_DATABASE_URL",
        "AUTH_JWT_PRIVATE_KEY",
        "AUTH_JWT_PRIVATE_KEY_FILE",
        "AUTH_ACCESS_TOKEN_TTL",
        "AUTH_REFRESH_TOKEN_TTL",
        "USER_URL",
        "SHUTDOWN_GRACE",
        "RUST_LOG",
        "LOG_FORMAT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "TOKIO_WORKER_THREADS",
    ] {
        assert!(help.contains(variable), "--help misses {variable}");
    }
    assert!(
        !help.contains("super-secret-value"),
        "--help printed a secret"
    );
}

/// The runtime's worker count is a setting like the others: a value that
/// is not a whole number above 0 stops the process with exit code 2 naming
/// the variable, where the runtime reading it on its own would panic.
#[tokio::test]
async fn a_bad_worker_thread_count_exits_2_naming_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    for value in ["0", "two", "-1"] {
        let stderr = refused(
            "parley-gateway",
            dir.path(),
            &[
                ("TOKIO_WORKER_THREADS", value),
                ("GATEWAY_HTTP_ADDR", "127.0.0.1:0"),
                ("GATEWAY_ADMIN_ADDR", "127.0.0.1:0"),
            ],
        )
        .await;
        assert!(stderr.contains("TOKIO_WORKER_THREADS"), "{value}: {stderr}");
        assert!(!stderr.contains("panicked"), "{value}: {stderr}");
    }
}

#[tokio::test]
async fn chat_refuses_a_write_linger_over_100ms() {
    let dir = tempfile::tempdir().unwrap();
    let stderr = refused(
        "parley-chat",
        dir.path(),
        &[
            ("CHAT_WRITE_LINGER", "1s"),
            ("CHAT_GRPC_ADDR", "127.0.0.1:0"),
            ("CHAT_ADMIN_ADDR", "127.0.0.1:0"),
        ],
    )
    .await;
    assert!(
        stderr.contains("CHAT_WRITE_LINGER") && stderr.contains("at most 100ms"),
        "{stderr}"
    );
}

#[tokio::test]
async fn parley_refuses_a_send_queue_no_longer_than_the_replay() {
    let dir = tempfile::tempdir().unwrap();
    let stderr = refused(
        "parley",
        dir.path(),
        &[("GATEWAY_SEND_QUEUE", "100"), ("CHAT_MAX_REPLAY", "100")],
    )
    .await;
    assert!(
        stderr.contains("GATEWAY_SEND_QUEUE") && stderr.contains("CHAT_MAX_REPLAY"),
        "{stderr}"
    );
}

#[tokio::test]
async fn gateway_help_lists_every_variable() {
    let output = tokio::process::Command::new(binary("parley-gateway"))
        .arg("--help")
        .output()
        .await
        .unwrap();
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for variable in [
        "GATEWAY_HTTP_ADDR",
        "GATEWAY_ADMIN_ADDR",
        "GATEWAY_MAX_FRAME_BYTES",
        "GATEWAY_SEND_QUEUE",
        "GATEWAY_MAX_ROOMS_PER_CONNECTION",
        "GATEWAY_MAX_CONNECTIONS_PER_USER",
        "GATEWAY_STREAMS_PER_REPLICA",
        "AUTH_URL",
        "USER_URL",
        "CHAT_URL",
        "SHUTDOWN_GRACE",
        "RUST_LOG",
        "LOG_FORMAT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "TOKIO_WORKER_THREADS",
    ] {
        assert!(help.contains(variable), "--help misses {variable}");
    }
}

/// The first admin is made by whoever runs `parley-user grant-admin` where
/// the service runs, not by whoever registers a name first: the role is
/// in the user's next token; an unknown name fails with exit code 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grant_admin_promotes_an_existing_user() {
    use parley_proto::user::v1::GetUserRequest;
    let mut stack = parley_tests::TestStack::start(parley_tests::DatabaseBackend::Postgres).await;
    let grace = stack.register("grace").await;
    assert!(!grace.roles.iter().any(|role| role == "admin"));
    let url = stack.database_url("user");
    let run = |command: &'static str, username: &'static str| {
        let url = url.expose().to_owned();
        async move {
            tokio::process::Command::new(binary("parley-user"))
                .args([command, username])
                .env("USER_DATABASE_URL", url)
                .output()
                .await
                .unwrap()
        }
    };
    let granted = run("grant-admin", "Grace").await;
    assert!(
        granted.status.success(),
        "{}",
        String::from_utf8_lossy(&granted.stderr)
    );
    assert!(String::from_utf8_lossy(&granted.stdout).contains("admin"));
    let token = stack.login("grace").await.access_token;
    let user = stack
        .users
        .get_user(parley_tests::authed(
            GetUserRequest {
                id: grace.id.clone(),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(user.roles, ["admin", "user"]);

    let unknown = run("grant-admin", "nobody").await;
    assert_eq!(unknown.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("nobody"));

    assert!(run("revoke-admin", "grace").await.status.success());
    let token = stack.login("grace").await.access_token;
    let user = stack
        .users
        .get_user(parley_tests::authed(
            GetUserRequest { id: grace.id },
            &token,
        ))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(user.roles, ["user"]);
    stack.stop().await;
}
