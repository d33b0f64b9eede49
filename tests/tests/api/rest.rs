//! The REST API of the README ("REST API"): every route, its answer and its errors, with
//! the HTTP status of each gRPC code.

use parley_tests::{
    chat::room_id,
    gateway::{Deployment, Settings, Topology, http, http_json, username},
    on_both_topologies,
};
use serde_json::{Value, json};

on_both_topologies!(
    sign_up_and_sign_in_routes,
    room_and_history_routes,
    malformed_requests_get_400_with_the_error_body,
);

fn assert_error(response: &parley_tests::gateway::HttpResponse, status: u16, code: &str) {
    assert_eq!(response.status, status, "{}", response.body);
    let body = response.json();
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
}

async fn sign_up_and_sign_in_routes(topology: Topology) {
    let deployment = Deployment::start(topology, &Settings::default()).await;
    let gateway = deployment.gateway(0);
    let name = username("rest");
    let post = |path: &'static str, body: Value| async move {
        http_json(gateway, "POST", path, None, &body).await
    };

    let created = post(
        "/api/v1/auth/register",
        json!({"username": name, "password": parley_tests::PASSWORD, "email": format!("{name}@example.com")}),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let user = created.json();
    assert_eq!(user["username"], Value::from(name.clone()));
    assert_eq!(user["display_name"], Value::from(name.clone()));
    assert_eq!(user["status"], "ACTIVE");
    assert_eq!(user["roles"], json!(["user"]));
    assert_eq!(user["metadata"], json!({}));
    assert!(user["created_at"].as_str().unwrap().ends_with('Z'));

    let again = post(
        "/api/v1/auth/register",
        json!({"username": name, "password": parley_tests::PASSWORD}),
    )
    .await;
    assert_error(&again, 409, "ALREADY_EXISTS");
    let short = post(
        "/api/v1/auth/register",
        json!({"username": username("short"), "password": "x"}),
    )
    .await;
    assert_error(&short, 400, "INVALID_ARGUMENT");

    let wrong = post(
        "/api/v1/auth/login",
        json!({"username": name, "password": "not the password"}),
    )
    .await;
    assert_error(&wrong, 401, "UNAUTHENTICATED");
    let tokens = post(
        "/api/v1/auth/login",
        json!({"username": name, "password": parley_tests::PASSWORD}),
    )
    .await;
    assert_eq!(tokens.status, 200);
    let tokens = tokens.json();
    assert_eq!(tokens["token_type"], "Bearer");
    assert!(tokens["expires_in"].as_i64().unwrap() > 0);
    let access = tokens["access_token"].as_str().unwrap();
    let refresh = tokens["refresh_token"].as_str().unwrap();

    let me = http(
        gateway,
        "GET",
        "/api/v1/me",
        &[("Authorization", &format!("Bearer {access}"))],
        None,
    )
    .await;
    assert_eq!(me.status, 200);
    assert_eq!(me.json()["id"], user["id"]);
    assert_error(
        &http(gateway, "GET", "/api/v1/me", &[], None).await,
        401,
        "UNAUTHENTICATED",
    );
    assert_error(
        &http(
            gateway,
            "GET",
            "/api/v1/me",
            &[("Authorization", "Bearer nope")],
            None,
        )
        .await,
        401,
        "UNAUTHENTICATED",
    );

    let rotated = post("/api/v1/auth/refresh", json!({"refresh_token": refresh})).await;
    assert_eq!(rotated.status, 200);
    let rotated = rotated.json();
    assert_ne!(rotated["refresh_token"].as_str(), Some(refresh));
    let spent = post("/api/v1/auth/refresh", json!({"refresh_token": refresh})).await;
    assert_error(&spent, 401, "UNAUTHENTICATED");

    for token in [rotated["refresh_token"].as_str().unwrap(), "unknown-token"] {
        let out = post("/api/v1/auth/logout", json!({"refresh_token": token})).await;
        assert_eq!(out.status, 204, "{}", out.body);
    }
    deployment.stop().await;
}

async fn room_and_history_routes(topology: Topology) {
    let deployment = Deployment::start(topology, &Settings::default()).await;
    let gateway = deployment.gateway(0);
    let alice = deployment.sign_up(&username("alice")).await;
    let bob = deployment.sign_up(&username("bob")).await;

    let public = http_json(
        gateway,
        "POST",
        "/api/v1/rooms",
        Some(&alice.access_token),
        &json!({"name": "Lobby"}),
    )
    .await;
    assert_eq!(public.status, 201, "{}", public.body);
    let public = public.json();
    assert_eq!(public["name"], "Lobby");
    assert_eq!(public["private"], false);
    assert_eq!(public["short_code"].as_str().unwrap().len(), 6);
    assert!(public["created_at"].as_str().unwrap().ends_with('Z'));
    assert_error(
        &http_json(
            gateway,
            "POST",
            "/api/v1/rooms",
            None,
            &json!({"name": "x"}),
        )
        .await,
        401,
        "UNAUTHENTICATED",
    );
    assert_error(
        &http_json(
            gateway,
            "POST",
            "/api/v1/rooms",
            Some(&alice.access_token),
            &json!({"name": ""}),
        )
        .await,
        400,
        "INVALID_ARGUMENT",
    );

    // A public room's history, paged newest last.
    let room = room_id("rest");
    let mut ws = deployment.ws(0, &alice).await;
    ws.join(&room, 0).await;
    for i in 1..=5 {
        ws.say(&room, &format!("m{i}"), "").await;
        ws.next_kind("ack").await;
    }
    let read = |path: String, token: String| async move {
        http(
            gateway,
            "GET",
            &path,
            &[("Authorization", &format!("Bearer {token}"))],
            None,
        )
        .await
    };
    let page = read(
        format!("/api/v1/rooms/{room}/messages?limit=2&before_seq=5"),
        bob.access_token.clone(),
    )
    .await;
    assert_eq!(page.status, 200, "{}", page.body);
    let page = page.json();
    let seqs: Vec<i64> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, vec![3, 4]);
    assert_eq!(page["has_more"], true);
    assert_eq!(
        page["messages"][0]["sender_name"],
        Value::from(alice.username.clone())
    );
    let all = read(
        format!("/api/v1/rooms/{room}/messages"),
        bob.access_token.clone(),
    )
    .await
    .json();
    assert_eq!(all["messages"].as_array().unwrap().len(), 5);
    assert_eq!(all["has_more"], false);

    // A private room's history is for members only.
    let private = http_json(
        gateway,
        "POST",
        "/api/v1/rooms",
        Some(&alice.access_token),
        &json!({"name": "Den", "password": "s3cret-pass"}),
    )
    .await
    .json();
    assert_eq!(private["private"], true);
    let id = private["id"].as_str().unwrap();
    assert_eq!(
        read(
            format!("/api/v1/rooms/{id}/messages"),
            alice.access_token.clone()
        )
        .await
        .status,
        200
    );
    assert_error(
        &read(
            format!("/api/v1/rooms/{id}/messages"),
            bob.access_token.clone(),
        )
        .await,
        403,
        "PERMISSION_DENIED",
    );
    assert_error(
        &read(
            format!("/api/v1/rooms/{id}/messages?limit=-1"),
            alice.access_token.clone(),
        )
        .await,
        400,
        "INVALID_ARGUMENT",
    );
    assert_error(
        &read(
            format!("/api/v1/rooms/{id}/messages?limit=ten"),
            alice.access_token.clone(),
        )
        .await,
        400,
        "INVALID_ARGUMENT",
    );
    assert_error(
        &read(
            "/api/v1/rooms/no%20such/messages".into(),
            alice.access_token.clone(),
        )
        .await,
        400,
        "INVALID_ARGUMENT",
    );
    ws.close().await;
    deployment.stop().await;
}

async fn malformed_requests_get_400_with_the_error_body(topology: Topology) {
    let deployment = Deployment::start(topology, &Settings::default()).await;
    let gateway = deployment.gateway(0);
    let json_type = [("Content-Type", "application/json")];
    for (headers, body) in [
        (&json_type[..], "{not json"),
        (&json_type[..], r#"{"username": 5, "password": "x"}"#),
        (&json_type[..], r#"{"password": "only"}"#),
        (
            &[("Content-Type", "text/plain")][..],
            r#"{"username":"a","password":"b"}"#,
        ),
        (&[][..], r#"{"username":"a","password":"b"}"#),
    ] {
        let response = http(gateway, "POST", "/api/v1/auth/login", headers, Some(body)).await;
        assert_error(&response, 400, "INVALID_ARGUMENT");
    }
    // A JSON array (or any non-object) is no body: serde would read a
    // struct from an array's items in order, so it must be refused first.
    let alice = deployment.sign_up(&username("alice")).await;
    let name = username("arrayed");
    for (path, token, body) in [
        (
            "/api/v1/auth/register",
            None,
            format!(r#"["{name}", "{}"]"#, parley_tests::PASSWORD),
        ),
        (
            "/api/v1/auth/login",
            None,
            format!(r#"["{}", "{}"]"#, alice.username, parley_tests::PASSWORD),
        ),
        (
            "/api/v1/rooms",
            Some(alice.access_token.as_str()),
            r#"["Plans"]"#.to_owned(),
        ),
        ("/api/v1/auth/refresh", None, r#""a string""#.to_owned()),
        ("/api/v1/auth/login", None, "42".to_owned()),
    ] {
        let authorization = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("Content-Type", "application/json")];
        if let Some(value) = &authorization {
            headers.push(("Authorization", value.as_str()));
        }
        let response = http(gateway, "POST", path, &headers, Some(&body)).await;
        assert_error(&response, 400, "INVALID_ARGUMENT");
        assert!(
            response.body.contains("JSON object"),
            "{path}: {}",
            response.body
        );
    }
    let nobody = deployment.log_in_status(&name).await;
    assert_eq!(nobody, 401, "the array registered no one");
    assert_error(
        &http(gateway, "GET", "/api/v1/nothing-here", &[], None).await,
        404,
        "NOT_FOUND",
    );
    deployment.stop().await;
}
