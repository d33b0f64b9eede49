use std::collections::HashMap;

use parley_proto::{
    prost_types::FieldMask,
    user::v1::{
        CreateUserRequest, DeleteUserRequest, GetUserRequest, ListUsersRequest, StreamUsersRequest,
        UpdateUserRequest, User, UserStatus, batch_create_user_result::Outcome,
        stream_users_response,
    },
};
use parley_runtime::grpc::status::invalid_field;
use parley_tests::{DatabaseBackend, TestStack, authed, on_both_backends};
use tonic::{Code, Request};

on_both_backends!(
    create_user_is_for_admins_and_validates,
    get_user_needs_a_token_and_hides_others_emails,
    update_user_follows_the_field_mask_and_the_rules,
    delete_user_only_for_oneself_or_admins,
    list_users_streams_pages_with_a_filter,
    batch_create_users_reports_each_item,
    stream_users_answers_in_order_and_in_band,
);

fn mask(paths: &[&str]) -> Option<FieldMask> {
    Some(FieldMask {
        paths: paths.iter().map(|p| (*p).to_owned()).collect(),
    })
}

async fn create_user_is_for_admins_and_validates(backend: DatabaseBackend) {
    let mut stack = TestStack::start(backend).await;
    let (_, token) = stack.signed_up("ivy").await;
    let request = CreateUserRequest {
        username: "jack".into(),
        email: "jack@example.com".into(),
        metadata: HashMap::from([("team".to_owned(), "blue".to_owned())]),
        ..Default::default()
    };
    let denied = stack
        .users
        .create_user(authed(request.clone(), &token))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);

    let jack = stack
        .users
        .create_user(authed(request.clone(), &stack.admin_token))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(jack.metadata["team"], "blue");
    assert!(jack.created_at.is_some());

    let taken_email = CreateUserRequest {
        username: "jack2".into(),
        ..request
    };
    let status = stack
        .users
        .create_user(authed(taken_email, &stack.admin_token))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
    assert!(status.message().contains("email"), "{status:?}");

    let bad = CreateUserRequest {
        username: "kim".into(),
        roles: vec!["Not A Role".into()],
        ..Default::default()
    };
    let status = stack
        .users
        .create_user(authed(bad, &stack.admin_token))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(invalid_field(&status).as_deref(), Some("roles"));
    stack.stop().await;
}

async fn get_user_needs_a_token_and_hides_others_emails(backend: DatabaseBackend) {
    let mut stack = TestStack::start(backend).await;
    let (lea, lea_token) = stack.signed_up("lea").await;
    let (_, max_token) = stack.signed_up("max").await;

    let no_token = stack
        .users
        .get_user(Request::new(GetUserRequest { id: lea.id.clone() }))
        .await
        .unwrap_err();
    assert_eq!(no_token.code(), Code::Unauthenticated);
    let bad_token = stack
        .users
        .get_user(authed(GetUserRequest { id: lea.id.clone() }, "not-a-token"))
        .await
        .unwrap_err();
    assert_eq!(bad_token.code(), Code::Unauthenticated);

    let get = |token: &str| authed(GetUserRequest { id: lea.id.clone() }, token);
    let own = stack
        .users
        .get_user(get(&lea_token))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(own.email, "lea@example.com");
    let seen_by_max = stack
        .users
        .get_user(get(&max_token))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(seen_by_max.username, "lea");
    assert_eq!(seen_by_max.email, "");

    let missing = stack
        .users
        .get_user(authed(
            GetUserRequest {
                id: "no-such-id".into(),
            },
            &lea_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let empty = stack
        .users
        .get_user(authed(GetUserRequest { id: String::new() }, &lea_token))
        .await
        .unwrap_err();
    assert_eq!(empty.code(), Code::InvalidArgument);
    stack.stop().await;
}

async fn update_user_follows_the_field_mask_and_the_rules(backend: DatabaseBackend) {
    let mut stack = TestStack::start(backend).await;
    let (nia, token) = stack.signed_up("nia").await;
    let (oz, _) = stack.signed_up("ozzy").await;
    let update = |user: User, paths: &[&str], token: &str| {
        authed(
            UpdateUserRequest {
                user: Some(user),
                update_mask: mask(paths),
            },
            token,
        )
    };
    let changes = User {
        id: nia.id.clone(),
        display_name: "Nia N.".into(),
        email: "nia@example.org".into(),
        metadata: HashMap::from([("lang".to_owned(), "en".to_owned())]),
        status: UserStatus::Suspended as i32,
        ..Default::default()
    };
    let updated = stack
        .users
        .update_user(update(
            changes.clone(),
            &["display_name", "email", "metadata"],
            &token,
        ))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(updated.display_name, "Nia N.");
    assert_eq!(updated.email, "nia@example.org");
    assert_eq!(updated.metadata["lang"], "en");
    assert_eq!(
        updated.status,
        UserStatus::Active as i32,
        "status was not in the mask"
    );

    let own_status = stack
        .users
        .update_user(update(changes.clone(), &["status"], &token))
        .await
        .unwrap_err();
    assert_eq!(own_status.code(), Code::PermissionDenied);
    let someone_else = User {
        id: oz.id.clone(),
        ..changes.clone()
    };
    let other = stack
        .users
        .update_user(update(someone_else, &["display_name"], &token))
        .await
        .unwrap_err();
    assert_eq!(other.code(), Code::PermissionDenied);
    let unknown = stack
        .users
        .update_user(update(changes.clone(), &["username"], &token))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::InvalidArgument);
    assert_eq!(invalid_field(&unknown).as_deref(), Some("update_mask"));
    let empty = stack
        .users
        .update_user(update(changes.clone(), &[], &token))
        .await
        .unwrap_err();
    assert_eq!(empty.code(), Code::InvalidArgument);

    let roles = User {
        id: oz.id,
        roles: vec!["moderator".into(), "user".into()],
        ..Default::default()
    };
    let promoted = stack
        .users
        .update_user(update(roles, &["roles"], &stack.admin_token))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(promoted.roles, vec!["moderator", "user"]);
    stack.stop().await;
}

async fn delete_user_only_for_oneself_or_admins(backend: DatabaseBackend) {
    let mut stack = TestStack::start(backend).await;
    let (pia, pia_token) = stack.signed_up("pia").await;
    let (quinn, _) = stack.signed_up("quinn").await;
    let denied = stack
        .users
        .delete_user(authed(
            DeleteUserRequest {
                id: quinn.id.clone(),
            },
            &pia_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);

    stack
        .users
        .delete_user(authed(DeleteUserRequest { id: pia.id.clone() }, &pia_token))
        .await
        .unwrap();
    stack
        .users
        .delete_user(authed(
            DeleteUserRequest {
                id: quinn.id.clone(),
            },
            &stack.admin_token,
        ))
        .await
        .unwrap();
    for id in [pia.id, quinn.id] {
        let gone = stack
            .users
            .get_user(authed(
                GetUserRequest { id: id.clone() },
                &stack.admin_token,
            ))
            .await
            .unwrap_err();
        assert_eq!(gone.code(), Code::NotFound);
        let again = stack
            .users
            .delete_user(authed(DeleteUserRequest { id }, &stack.admin_token))
            .await
            .unwrap_err();
        assert_eq!(again.code(), Code::NotFound);
    }
    stack.stop().await;
}

async fn list_users_streams_pages_with_a_filter(backend: DatabaseBackend) {
    let mut stack = TestStack::start(backend).await;
    for name in ["zed_a", "zed_b", "zed_c", "zed_d", "zed_e"] {
        stack.register(name).await;
    }
    let list = |request: ListUsersRequest, token: &str| authed(request, token);
    let mut pages = stack
        .users
        .list_users(list(
            ListUsersRequest {
                page: 1,
                limit: 2,
                filter: "ZED_".into(),
                ..Default::default()
            },
            &stack.admin_token,
        ))
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    let mut numbers = Vec::new();
    while let Some(page) = pages.message().await.unwrap() {
        assert_eq!(page.total, 5);
        numbers.push((page.page, page.has_more));
        seen.extend(page.users.into_iter().map(|u| u.username));
    }
    assert_eq!(numbers, vec![(1, true), (2, true), (3, false)]);
    assert_eq!(seen, vec!["zed_a", "zed_b", "zed_c", "zed_d", "zed_e"]);

    let mut from_page_2 = stack
        .users
        .list_users(list(
            ListUsersRequest {
                page: 2,
                limit: 4,
                filter: "zed".into(),
                ..Default::default()
            },
            &stack.admin_token,
        ))
        .await
        .unwrap()
        .into_inner();
    let page = from_page_2.message().await.unwrap().unwrap();
    assert_eq!(page.users.len(), 1);
    assert!(!page.has_more);
    assert!(from_page_2.message().await.unwrap().is_none());

    // Keyset: after a username (any case), whatever came before it.
    let mut after = stack
        .users
        .list_users(list(
            ListUsersRequest {
                limit: 2,
                filter: "zed".into(),
                after: "ZED_B".into(),
                ..Default::default()
            },
            &stack.admin_token,
        ))
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    while let Some(page) = after.message().await.unwrap() {
        seen.extend(page.users.into_iter().map(|u| u.username));
    }
    assert_eq!(seen, vec!["zed_c", "zed_d", "zed_e"]);

    // Pages skip by counting rows only so far: deeper, `after` goes on.
    for (request, field) in [
        (
            ListUsersRequest {
                page: 10_000,
                limit: 500,
                ..Default::default()
            },
            "page",
        ),
        (
            ListUsersRequest {
                page: 2,
                after: "zed_a".into(),
                ..Default::default()
            },
            "page",
        ),
    ] {
        let refused = stack
            .users
            .list_users(list(request, &stack.admin_token))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument);
        assert_eq!(invalid_field(&refused).as_deref(), Some(field));
    }

    let negative = stack
        .users
        .list_users(list(
            ListUsersRequest {
                limit: -1,
                ..Default::default()
            },
            &stack.admin_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(negative.code(), Code::InvalidArgument);
    assert_eq!(invalid_field(&negative).as_deref(), Some("limit"));

    // Emails are searched only for those who may read them: anyone else
    // cannot probe a hidden email a substring at a time.
    let (_, peeker) = stack.signed_up("peeker").await;
    for (token, expected) in [(&peeker, 0), (&stack.admin_token, 1)] {
        let mut pages = stack
            .users
            .list_users(list(
                ListUsersRequest {
                    page: 1,
                    limit: 50,
                    filter: "zed_c@example".into(),
                    ..Default::default()
                },
                token,
            ))
            .await
            .unwrap()
            .into_inner();
        let page = pages.message().await.unwrap().unwrap();
        assert_eq!(page.total, expected);
    }
    stack.stop().await;
}

async fn batch_create_users_reports_each_item(backend: DatabaseBackend) {
    let mut stack = TestStack::start(backend).await;
    let (_, token) = stack.signed_up("rae").await;
    let items = vec![
        CreateUserRequest {
            username: "batch_one".into(),
            ..Default::default()
        },
        CreateUserRequest {
            username: "!".into(),
            ..Default::default()
        },
        CreateUserRequest {
            username: "batch_two".into(),
            ..Default::default()
        },
        CreateUserRequest {
            username: "BATCH_ONE".into(),
            ..Default::default()
        },
    ];
    let denied = stack
        .users
        .batch_create_users(authed(tokio_stream::iter(items.clone()), &token))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);

    let response = stack
        .users
        .batch_create_users(authed(tokio_stream::iter(items), &stack.admin_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((response.created_count, response.failed_count), (2, 2));
    let outcomes: Vec<_> = response
        .results
        .iter()
        .map(|result| match result.outcome.as_ref().unwrap() {
            Outcome::User(user) => (result.index, user.username.clone()),
            Outcome::Error(error) => (result.index, format!("{}:{}", error.code, error.field)),
        })
        .collect();
    assert_eq!(
        outcomes,
        vec![
            (0, "batch_one".to_owned()),
            (1, "INVALID_ARGUMENT:username".to_owned()),
            (2, "batch_two".to_owned()),
            (3, "ALREADY_EXISTS:".to_owned()),
        ]
    );

    // Past the cap the batch ends: one result says so, and what the client
    // goes on streaming is not read (nor answered, nor kept).
    const CAP: usize = 10_000;
    let flood = std::iter::repeat_with(|| CreateUserRequest {
        username: "!".into(),
        ..Default::default()
    })
    .take(CAP + 500);
    let response = stack
        .users
        .batch_create_users(authed(tokio_stream::iter(flood), &stack.admin_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.results.len(), CAP + 1);
    let last = response.results.last().unwrap();
    assert_eq!(last.index, CAP as i32);
    match last.outcome.as_ref().unwrap() {
        Outcome::Error(error) => assert_eq!(error.code, "RESOURCE_EXHAUSTED"),
        Outcome::User(user) => panic!("created {user:?} past the cap"),
    }
    stack.stop().await;
}

async fn stream_users_answers_in_order_and_in_band(backend: DatabaseBackend) {
    let mut stack = TestStack::start(backend).await;
    let (sam, token) = stack.signed_up("sam").await;
    let (tea, _) = stack.signed_up("tea").await;
    let (requests, receiver) = tokio::sync::mpsc::channel(8);
    let mut answers = stack
        .users
        .stream_users(authed(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    // One request at a time: each answer arrives before the next is sent,
    // so the stream is truly interactive.
    for id in [
        sam.id.clone(),
        "missing".to_owned(),
        tea.id.clone(),
        String::new(),
    ] {
        requests
            .send(StreamUsersRequest { id: id.clone() })
            .await
            .unwrap();
        let answer = answers.message().await.unwrap().unwrap();
        assert_eq!(answer.id, id);
        match answer.result.unwrap() {
            stream_users_response::Result::User(user) => {
                assert!(id == sam.id || id == tea.id, "{user:?}")
            }
            stream_users_response::Result::Error(error) if id == "missing" => {
                assert_eq!(error.code, "NOT_FOUND")
            }
            stream_users_response::Result::Error(error) => {
                assert!(id.is_empty());
                assert_eq!(
                    (error.code.as_str(), error.field.as_str()),
                    ("INVALID_ARGUMENT", "id")
                );
            }
        }
    }
    drop(requests);
    assert!(
        answers.message().await.unwrap().is_none(),
        "stream ends when the client does"
    );
    stack.stop().await;
}

/// On Postgres, `ListUsers`' substring filter reads trigram indexes (made
/// by the service after its migrations) instead of every row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_search_reads_trigram_indexes_on_postgres() {
    use parley_runtime::{health::Readiness, storage::Database};
    let mut stack = TestStack::start(DatabaseBackend::Postgres).await;
    stack.register("zed_indexed").await;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let database = Database::open(
        &stack.database_url("user"),
        "users",
        &parley_user::MIGRATOR,
        &Readiness::new(),
        shutdown.clone(),
    )
    .await
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let made: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pg_indexes WHERE schemaname = 'users' \
             AND indexname IN ('user_profile_username_trgm', 'user_profile_display_trgm', \
             'user_profile_email_trgm')",
        )
        .fetch_one(database.pool())
        .await
        .unwrap();
        if made == 3 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the service never made its search indexes"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // Only bitmap scans left to the planner: one exists only with an index
    // that answers LIKE '%...%'.
    let mut connection = database.pool().acquire().await.unwrap();
    for setting in ["SET enable_seqscan = off", "SET enable_indexscan = off"] {
        sqlx::query(setting)
            .execute(&mut *connection)
            .await
            .unwrap();
    }
    let plan: Vec<String> = sqlx::query_scalar(
        "EXPLAIN SELECT user_id FROM user_profile \
         WHERE username_key LIKE '%zed%' OR lower(display_name) LIKE '%zed%'",
    )
    .fetch_all(&mut *connection)
    .await
    .unwrap();
    let plan = plan.join("\n");
    for index in ["user_profile_username_trgm", "user_profile_display_trgm"] {
        assert!(plan.contains(index), "{index} unused:\n{plan}");
    }
    drop(connection);
    shutdown.cancel();
    stack.stop().await;
}
