//! Circuit breakers on service-to-service calls (README, "Circuit
//! breakers"): the user service killed under the gateway's calls, the
//! gateway failing fast with 503 while the circuit is open (its calls no
//! longer reach the network), the metrics saying so, and the circuit
//! closing once the service is back.

use std::{net::SocketAddr, time::Duration};

use parley_runtime::{config::ServiceUrl, test_util::RunningBinary};
use parley_tests::{
    DatabaseBackend, TestStack, binary,
    chat::{ChatReplica, test_args},
    gateway::{GatewayProcess, free_ports, http, metric, try_http, wait_until_ready},
};

/// The user service as a process on `port`, so it can be killed and come
/// back at the same address.
async fn user_service(stack: &TestStack, port: u16) -> RunningBinary {
    let addr = format!("127.0.0.1:{port}");
    let database = stack.database_url("user").expose().to_owned();
    let auth = stack.auth_url().to_string();
    let running = RunningBinary::start(
        &binary("parley-user"),
        &[
            ("USER_GRPC_ADDR", addr.as_str()),
            ("USER_ADMIN_ADDR", "127.0.0.1:0"),
            ("USER_DATABASE_URL", database.as_str()),
            ("AUTH_URL", auth.as_str()),
        ],
        1,
    )
    .await;
    wait_until_ready(running.admin_addrs[0]).await;
    running
}

/// The sum of every `grpc_client_started_total` series of `service` on the
/// admin port: calls this process put on the wire to it.
async fn calls_started_to(admin: SocketAddr, service: &str) -> f64 {
    let metrics = try_http(admin, "GET", "/metrics", &[], None)
        .await
        .expect("the admin port answers")
        .body;
    metrics
        .lines()
        .filter(|line| {
            line.starts_with("grpc_client_started_total{")
                && line.contains(&format!("grpc_service=\"{service}\""))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_fails_fast_while_user_is_down_and_recovers_when_it_returns() {
    let mut stack = TestStack::start(DatabaseBackend::Postgres).await;
    let replica = ChatReplica::start(&stack, test_args(&stack, None)).await;
    let port = free_ports(1).await[0];
    let user = user_service(&stack, port).await;
    let user_url = format!("http://127.0.0.1:{port}");
    let gateway = GatewayProcess::start(
        &stack,
        &ServiceUrl::from_addr(replica.addr),
        &[("USER_URL", user_url.as_str())],
    )
    .await;
    let account = stack.account("alice").await;
    let bearer = format!("Bearer {}", account.access_token);
    let headers = [("Authorization", bearer.as_str())];
    let me = || http(gateway.http, "GET", "/api/v1/me", &headers, None);
    assert_eq!(me().await.status, 200);
    let state = r#"parley_client_circuit_state{target="user"}"#;
    assert_eq!(metric(gateway.admin, state).await, Some(0.0));

    // The user service dies; the gateway's calls fail until five in a row
    // open the circuit.
    drop(user);
    for _ in 0..5 {
        let answer = me().await;
        assert_eq!(answer.status, 503, "{}", answer.body);
    }
    assert_eq!(metric(gateway.admin, state).await, Some(2.0));

    // Open: every call is refused at once, without reaching the network.
    let started = calls_started_to(gateway.admin, "parley.user.v1.UserService").await;
    for _ in 0..10 {
        assert_eq!(me().await.status, 503);
    }
    assert_eq!(
        calls_started_to(gateway.admin, "parley.user.v1.UserService").await,
        started,
        "no call went out while the circuit was open"
    );

    // Back at the same address: after the cool-down a trial call closes it.
    let user = user_service(&stack, port).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if me().await.status == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the circuit did not close after the user service came back"
        );
        // No event tells the test the cool-down has passed.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(metric(gateway.admin, state).await, Some(0.0));
    let metrics = try_http(gateway.admin, "GET", "/metrics", &[], None)
        .await
        .unwrap()
        .body;
    for entered in ["open", "half_open", "closed"] {
        assert!(
            metrics.lines().any(|line| line
                .starts_with("parley_client_circuit_transitions_total{")
                && line.contains(r#"target="user""#)
                && line.contains(&format!(r#"state="{entered}""#))),
            "a transition to {entered} is counted:\n{metrics}"
        );
    }

    drop(user);
    drop(gateway);
    replica.stop().await;
    stack.stop().await;
}
