//! Bots and API keys (README, "Bots and API keys") over REST, WebSocket and
//! gRPC: scopes hold everywhere, a revoked key (or a logged-out login) is
//! refused at once and its WebSockets close with 4001, bots cannot sign in
//! with a password, and nobody makes a key stronger than themselves.

use std::time::{Duration, Instant};

use parley_proto::{
    auth::v1::{ExchangeApiKeyRequest, auth_service_client::AuthServiceClient},
    chat::v1::{
        GetChatHistoryRequest, JoinRoomRequest, SendMessageRequest,
        chat_service_client::ChatServiceClient,
    },
    user::v1::{UpdateUserRequest, User, UserStatus, user_service_client::UserServiceClient},
};
use parley_tests::{
    authed, channel,
    chat::room_id,
    gateway::{Deployment, Settings, Topology, Ws, http_json, username},
    on_both_topologies,
};
use serde_json::{Value, json};
use tonic::Code;

on_both_topologies!(
    keys_act_within_their_scopes_everywhere,
    revocations_take_hold_at_once
);

/// Makes a key over REST and returns its secret.
async fn make_key(deployment: &Deployment, token: &str, body: Value) -> (String, Value) {
    let made = http_json(
        deployment.gateway(0),
        "POST",
        "/api/v1/api-keys",
        Some(token),
        &body,
    )
    .await;
    assert_eq!(made.status, 201, "{}", made.body);
    let made = made.json();
    let secret = made["secret"].as_str().expect("the secret").to_owned();
    assert!(secret.starts_with("pk_"), "{secret}");
    (secret, made["key"].clone())
}

/// Waits until `check` holds: for what a revocation changes elsewhere,
/// which no event of this test's own announces.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(15);
    while !check().await {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn keys_act_within_their_scopes_everywhere(topology: Topology) {
    let deployment = Deployment::start(topology, &Settings::default()).await;
    let gateway = deployment.gateway(0);
    let alice = deployment.sign_up(&username("alice")).await;
    let token = alice.access_token.as_str();

    // A bot: kind bot, owned by alice, and no way to sign in.
    let bot_name = username("helper");
    let bot = http_json(
        gateway,
        "POST",
        "/api/v1/bots",
        Some(token),
        &json!({"username": bot_name}),
    )
    .await;
    assert_eq!(bot.status, 201, "{}", bot.body);
    let bot = bot.json();
    assert_eq!(bot["kind"], "bot");
    assert_eq!(bot["owner_id"], alice.user_id.as_str());
    let bot_id = bot["id"].as_str().unwrap().to_owned();
    let login = json!({"username": bot_name, "password": parley_tests::PASSWORD});
    let refused = http_json(gateway, "POST", "/api/v1/auth/login", None, &login).await;
    assert_eq!(
        refused.status, 401,
        "a bot signs in with a password: {}",
        refused.body
    );
    let mine = http_json(gateway, "GET", "/api/v1/bots", Some(token), &Value::Null)
        .await
        .json();
    assert_eq!(mine["bots"][0]["id"], bot_id.as_str());

    // Keys: a read-only one for the bot, a read-write one for alice.
    let (reader, _) = make_key(
        &deployment,
        token,
        json!({"name": "reader", "scopes": ["chat:read"], "user_id": bot_id}),
    )
    .await;
    let (writer, _) = make_key(
        &deployment,
        token,
        json!({"name": "writer", "scopes": ["chat:read", "chat:write", "users:read"]}),
    )
    .await;
    let listed = http_json(
        gateway,
        "GET",
        &format!("/api/v1/api-keys?user_id={bot_id}"),
        Some(token),
        &Value::Null,
    )
    .await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    let listed = listed.json();
    assert_eq!(listed["keys"].as_array().unwrap().len(), 1);
    assert_eq!(listed["keys"][0]["scopes"], json!(["chat:read"]));
    assert!(
        !listed.to_string().contains(&reader),
        "a listing shows no secret"
    );

    // Nobody makes a key stronger than themselves, and keys cannot make keys.
    let admin = http_json(
        gateway,
        "POST",
        "/api/v1/api-keys",
        Some(token),
        &json!({"name": "root", "scopes": ["admin"]}),
    )
    .await;
    assert_eq!(admin.status, 403, "{}", admin.body);
    let by_key = http_json(
        gateway,
        "POST",
        "/api/v1/api-keys",
        Some(&writer),
        &json!({"name": "child", "scopes": ["chat:read"]}),
    )
    .await;
    assert_eq!(by_key.status, 403, "{}", by_key.body);
    let bad = http_json(
        gateway,
        "POST",
        "/api/v1/api-keys",
        Some(token),
        &json!({"name": "odd", "scopes": ["chat:everything"]}),
    )
    .await;
    assert_eq!(bad.status, 400, "{}", bad.body);

    // REST with keys: reading rooms is chat:read, making one chat:write,
    // reading a profile users:read.
    let rooms = http_json(gateway, "GET", "/api/v1/rooms", Some(&reader), &Value::Null).await;
    assert_eq!(rooms.status, 200, "{}", rooms.body);
    let create = json!({"name": "by-key", "password": "long enough"});
    let made = http_json(gateway, "POST", "/api/v1/rooms", Some(&reader), &create).await;
    assert_eq!(made.status, 403, "{}", made.body);
    assert!(made.body.contains("chat:write"), "{}", made.body);
    let me = http_json(gateway, "GET", "/api/v1/me", Some(&reader), &Value::Null).await;
    assert_eq!(me.status, 403, "{}", me.body);
    let me = http_json(gateway, "GET", "/api/v1/me", Some(&writer), &Value::Null).await;
    assert_eq!(me.status, 200, "{}", me.body);
    assert_eq!(me.json()["id"], alice.user_id.as_str());
    let wrong = http_json(
        gateway,
        "GET",
        "/api/v1/me",
        Some("pk_0123456789abcdef0123456789abcdef_nope"),
        &Value::Null,
    )
    .await;
    assert_eq!(wrong.status, 401, "{}", wrong.body);

    // WebSocket with keys, on either gateway: the reader joins and reads
    // but cannot send; the writer sends.
    let room = room_id("keys");
    let mut by_writer = Ws::connect(deployment.gateway(1), &writer).await;
    by_writer.join(&room, 0).await;
    let mut by_reader = Ws::connect(gateway, &reader).await;
    by_reader.join(&room, 0).await;
    by_reader.say(&room, "from the reader", "r1").await;
    let error = by_reader.next_kind("error").await;
    assert_eq!(error["code"], "PERMISSION_DENIED", "{error}");
    assert_eq!(error["client_id"], "r1");
    by_writer.say(&room, "from the writer", "w1").await;
    assert_eq!(by_reader.next_message().await["content"], "from the writer");
    assert_eq!(by_writer.next_message().await["content"], "from the writer");

    // gRPC: the exchanged token carries the scopes to every service.
    let mut auth = AuthServiceClient::new(channel(deployment.auth_grpc).await);
    let exchanged = auth
        .exchange_api_key(ExchangeApiKeyRequest {
            api_key: reader.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(exchanged.scopes, ["chat:read"]);
    assert!(exchanged.expires_in > 0 && exchanged.expires_in <= 300);
    let mut chat = ChatServiceClient::new(channel(deployment.chat_grpcs[0]).await);
    let bot_token = exchanged.access_token.as_str();
    chat.join_room(authed(
        JoinRoomRequest {
            room_id: room.clone(),
            ..Default::default()
        },
        bot_token,
    ))
    .await
    .unwrap();
    let send = chat
        .send_message(authed(
            SendMessageRequest {
                room_id: room.clone(),
                content: "nope".into(),
                ..Default::default()
            },
            bot_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(send.code(), Code::PermissionDenied, "{send:?}");
    let mut history = chat
        .get_chat_history(authed(
            GetChatHistoryRequest {
                room_id: room.clone(),
                ..Default::default()
            },
            bot_token,
        ))
        .await
        .unwrap()
        .into_inner();
    let page = history.message().await.unwrap().expect("a page");
    assert_eq!(page.messages[0].content, "from the writer");
    let unknown = auth
        .exchange_api_key(ExchangeApiKeyRequest {
            api_key: format!("{reader}x"),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::Unauthenticated);

    by_reader.close().await;
    by_writer.close().await;
    deployment.stop().await;
}

async fn revocations_take_hold_at_once(topology: Topology) {
    let deployment = Deployment::start(topology, &Settings::default()).await;
    let gateway = deployment.gateway(0);
    let alice = deployment.sign_up(&username("alice")).await;
    let (key, made) = make_key(
        &deployment,
        &alice.access_token,
        json!({"name": "soon gone", "scopes": ["chat:read", "chat:write"]}),
    )
    .await;
    let key_id = made["id"].as_str().unwrap().to_owned();
    let room = room_id("revoked");

    // A connection on each gateway with the key, and a token from it.
    let mut on_a = Ws::connect(gateway, &key).await;
    on_a.join(&room, 0).await;
    let mut on_b = Ws::connect(deployment.gateway(1), &key).await;
    on_b.join(&room, 0).await;
    let mut auth = AuthServiceClient::new(channel(deployment.auth_grpc).await);
    let token = auth
        .exchange_api_key(ExchangeApiKeyRequest {
            api_key: key.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .access_token;

    let revoked = http_json(
        gateway,
        "DELETE",
        &format!("/api/v1/api-keys/{key_id}"),
        Some(&alice.access_token),
        &Value::Null,
    )
    .await;
    assert_eq!(revoked.status, 204, "{}", revoked.body);
    // Its WebSockets close with 4001, on both gateways.
    assert_eq!(on_a.closed().await, Some(4001));
    assert_eq!(on_b.closed().await, Some(4001));
    // The key itself is refused at once, by auth and by the gateway.
    let exchange = auth
        .exchange_api_key(ExchangeApiKeyRequest {
            api_key: key.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(exchange.code(), Code::Unauthenticated);
    let rest = http_json(gateway, "GET", "/api/v1/rooms", Some(&key), &Value::Null).await;
    assert_eq!(rest.status, 401, "{}", rest.body);
    // A token already made from it is refused by chat, which hears of the
    // revocation from auth.
    let chat = ChatServiceClient::new(channel(deployment.chat_grpcs[0]).await);
    eventually("chat still takes the revoked key's token", || {
        let mut chat = chat.clone();
        let token = token.clone();
        let room = room.clone();
        async move {
            let listed = chat
                .join_room(authed(
                    JoinRoomRequest {
                        room_id: room,
                        ..Default::default()
                    },
                    &token,
                ))
                .await;
            matches!(listed, Err(status) if status.code() == Code::Unauthenticated)
        }
    })
    .await;
    let listed = http_json(
        gateway,
        "GET",
        "/api/v1/api-keys",
        Some(&alice.access_token),
        &Value::Null,
    )
    .await;
    assert_eq!(
        listed.json()["keys"],
        json!([]),
        "revoked keys are not listed"
    );

    // Logging out ends the login's tokens too, and its WebSockets.
    let mut signed_in = Ws::connect(deployment.gateway(1), &alice.access_token).await;
    signed_in.join(&room, 0).await;
    let out = http_json(
        gateway,
        "POST",
        "/api/v1/auth/logout",
        None,
        &json!({"refresh_token": alice.refresh_token}),
    )
    .await;
    assert_eq!(out.status, 204, "{}", out.body);
    assert_eq!(signed_in.closed().await, Some(4001));
    let me = http_json(
        gateway,
        "GET",
        "/api/v1/me",
        Some(&alice.access_token),
        &Value::Null,
    )
    .await;
    assert_eq!(me.status, 401, "{}", me.body);

    // Suspending a user ends every token of theirs, keys' included.
    let bob = deployment.sign_up(&username("bob")).await;
    let (bobs_key, _) = make_key(
        &deployment,
        &bob.access_token,
        json!({"name": "bob's", "scopes": ["chat:read"]}),
    )
    .await;
    let mut bob_signed_in = Ws::connect(gateway, &bob.access_token).await;
    bob_signed_in.join(&room, 0).await;
    let mut bob_by_key = Ws::connect(deployment.gateway(1), &bobs_key).await;
    bob_by_key.join(&room, 0).await;
    let admin = deployment.admin().await;
    let admin_token = admin.access_token.as_str();
    let mut users = UserServiceClient::new(channel(deployment.user_grpc).await);
    users
        .update_user(authed(
            UpdateUserRequest {
                user: Some(User {
                    id: bob.user_id.clone(),
                    status: UserStatus::Suspended.into(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["status".into()],
                }),
            },
            admin_token,
        ))
        .await
        .unwrap();
    assert_eq!(bob_signed_in.closed().await, Some(4001));
    assert_eq!(bob_by_key.closed().await, Some(4001));
    let me = http_json(
        gateway,
        "GET",
        "/api/v1/me",
        Some(&bob.access_token),
        &Value::Null,
    )
    .await;
    assert_eq!(me.status, 401, "{}", me.body);
    deployment.stop().await;
}

/// A WebSocket opened with a key outlives its token: the gateway renews it
/// (the client sees `refreshed`) and the connection keeps working, with one
/// renewal per token lifetime rather than a renewal on every sweep.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_opened_with_a_key_outlives_its_tokens() {
    let deployment =
        Deployment::all_in_one(&Settings::default(), &[("AUTH_API_KEY_TOKEN_TTL", "3s")]).await;
    let alice = deployment.sign_up(&username("alice")).await;
    let (key, _) = make_key(
        &deployment,
        &alice.access_token,
        json!({"name": "long-lived", "scopes": ["chat:read", "chat:write"]}),
    )
    .await;
    let room = room_id("renewed");
    let mut ws = Ws::connect(deployment.gateway(0), &key).await;
    ws.join(&room, 0).await;
    // Three renewals carry the connection past three token lifetimes.
    let started = Instant::now();
    let mut expiries = Vec::new();
    while expiries.len() < 3 {
        let refreshed = ws.next_kind("refreshed").await;
        expiries.push(refreshed["expires_at"].as_str().unwrap().to_owned());
    }
    // Each renewal brought a new token, a later one each time: the gateway
    // did not forward the token it already had.
    let mut sorted = expiries.clone();
    sorted.dedup();
    assert_eq!(sorted, expiries, "one renewal per token: {expiries:?}");
    assert!(started.elapsed() >= Duration::from_secs(2), "{expiries:?}");
    ws.say(&room, "still here", "s1").await;
    assert_eq!(ws.next_message().await["content"], "still here");
    ws.close().await;
    deployment.stop().await;
}
