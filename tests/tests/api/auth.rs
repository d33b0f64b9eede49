use parley_proto::{
    auth::v1::{
        DeleteCredentialsRequest, GetPublicKeysRequest, LoginRequest, LogoutRequest,
        RefreshRequest, RegisterRequest, ValidateTokenRequest,
    },
    prost_types::FieldMask,
    user::v1::{
        DeleteUserRequest, GetUserRequest, ListUsersRequest, UpdateUserRequest, User, UserStatus,
    },
};
use parley_runtime::grpc::status::invalid_field;
use parley_tests::{ADMIN, DatabaseBackend, PASSWORD, TestStack, authed, on_both_backends};
use tonic::Code;

on_both_backends!(
    register_creates_a_profile_and_a_credential,
    register_refuses_bad_input_naming_the_field,
    a_failed_registration_leaves_no_orphan_profile,
    login_issues_tokens_and_hides_whether_the_user_exists,
    refresh_rotates_and_reuse_revokes_the_family,
    logout_revokes_the_family_and_always_succeeds,
    validate_token_reports_bad_tokens_in_band,
    public_keys_verify_issued_tokens,
    suspended_users_cannot_log_in_or_refresh,
    deleting_a_user_deletes_the_credentials_and_frees_the_username,
);

async fn deleting_a_user_deletes_the_credentials_and_frees_the_username(backend: DatabaseBackend) {
    let mut stack = TestStack::start(backend).await;
    let (ada, token) = stack.signed_up("ada").await;
    let pair = stack.login("ada").await;
    let (eve, eve_token) = stack.signed_up("eve").await;
    // Nobody else deletes ada's credentials.
    let mut refused = DeleteCredentialsRequest {
        user_id: ada.id.clone(),
    };
    let denied = stack
        .auth
        .delete_credentials(authed(refused.clone(), &eve_token))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    refused.user_id = eve.id.clone();
    let unauthenticated = stack.auth.delete_credentials(refused).await.unwrap_err();
    assert_eq!(unauthenticated.code(), Code::Unauthenticated);

    stack
        .users
        .delete_user(authed(DeleteUserRequest { id: ada.id.clone() }, &token))
        .await
        .unwrap();
    let login = stack
        .auth
        .login(LoginRequest {
            username: "ada".into(),
            password: PASSWORD.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        login.code(),
        Code::Unauthenticated,
        "the credential is gone"
    );
    let refresh = stack
        .auth
        .refresh(RefreshRequest {
            refresh_token: pair.refresh_token,
        })
        .await
        .unwrap_err();
    assert_eq!(
        refresh.code(),
        Code::Unauthenticated,
        "so are the refresh tokens"
    );
    // The username is free again: a new ada is a new user.
    let again = stack.register("ada").await;
    assert_ne!(again.id, ada.id);
    stack.login("ada").await;
    stack.stop().await;
}

async fn register_creates_a_profile_and_a_credential(backend: DatabaseBackend) {
    let mut stack = TestStack::start(backend).await;
    let ada = stack.register("ada").await;
    assert_eq!(ada.username, "ada");
    assert_eq!(ada.display_name, "ada");
    assert_eq!(ada.roles, vec!["user"]);
    assert_eq!(ada.status, UserStatus::Active as i32);

    let token = stack.login("ada").await.access_token;
    let fetched = stack
        .users
        .get_user(authed(GetUserRequest { id: ada.id.clone() }, &token))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(fetched.email, "ada@example.com");

    let again = stack
        .auth
        .register(RegisterRequest {
            username: "ADA".into(),
            password: PASSWORD.into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::AlreadyExists, "{again:?}");

    // Ada's email, given by someone else: the registration answers as any
    // other does (no email in either answer), and the address stays ada's.
    let mallory = stack
        .auth
        .register(RegisterRequest {
            username: "mallory".into(),
            password: PASSWORD.into(),
            email: "ADA@example.com".into(),
            ..Default::default()
        })
        .await
        .expect("a known email is not refused")
        .into_inner()
        .user
        .unwrap();
    assert_eq!((mallory.email.as_str(), ada.email.as_str()), ("", ""));
    let token = stack.login("mallory").await.access_token;
    let kept = stack
        .users
        .get_user(authed(
            GetUserRequest {
                id: mallory.id.clone(),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(kept.email, "", "the email stays with its first account");
    stack.stop().await;
}

async fn register_refuses_bad_input_naming_the_field(backend: DatabaseBackend) {
    let mut stack = TestStack::start(backend).await;
    let cases = [
        ("x", PASSWORD, "", "username"),
        ("bob", "short", "", "password"),
        ("bob", PASSWORD, "not-an-email", "email"),
    ];
    for (username, password, email, field) in cases {
        let status = stack
            .auth
            .register(RegisterRequest {
                username: username.into(),
                password: password.into(),
                email: email.into(),
                display_name: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert_eq!(invalid_field(&status).as_deref(), Some(field), "{status:?}");
    }
    stack.stop().await;
}

async fn a_failed_registration_leaves_no_orphan_profile(backend: DatabaseBackend) {
    let mut stack = TestStack::start(backend).await;
    // A service deletes carol's profile (services keep auth's side
    // themselves, as auth's own undo does), so her credential stays behind:
    // a new registration as carol creates a profile and then fails to
    // store the credential, and the profile must be removed again.
    let (carol, _) = stack.signed_up("carol").await;
    stack
        .users
        .delete_user(authed(
            DeleteUserRequest { id: carol.id },
            &stack.service_token(),
        ))
        .await
        .unwrap();
    let status = stack
        .auth
        .register(RegisterRequest {
            username: "carol".into(),
            password: PASSWORD.into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");

    let mut pages = stack
        .users
        .list_users(authed(
            ListUsersRequest {
                filter: "carol".into(),
                ..Default::default()
            },
            &stack.admin_token,
        ))
        .await
        .unwrap()
        .into_inner();
    let page = pages.message().await.unwrap().unwrap();
    assert_eq!(
        page.total, 0,
        "orphan profile left behind: {:?}",
        page.users
    );
    stack.stop().await;
}

async fn login_issues_tokens_and_hides_whether_the_user_exists(backend: DatabaseBackend) {
    let mut stack = TestStack::start(backend).await;
    stack.register("dave").await;
    let tokens = stack.login("DAVE").await;
    assert_eq!(tokens.token_type, "Bearer");
    assert_eq!(tokens.expires_in, 900);
    assert!(!tokens.refresh_token.is_empty());

    let wrong_password = stack
        .auth
        .login(LoginRequest {
            username: "dave".into(),
            password: "not the password".into(),
        })
        .await
        .unwrap_err();
    let unknown_user = stack
        .auth
        .login(LoginRequest {
            username: "nobody".into(),
            password: "not the password".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(wrong_password.code(), Code::Unauthenticated);
    assert_eq!(unknown_user.code(), Code::Unauthenticated);
    assert_eq!(wrong_password.message(), unknown_user.message());

    let empty = stack.auth.login(LoginRequest::default()).await.unwrap_err();
    assert_eq!(empty.code(), Code::InvalidArgument);
    stack.stop().await;
}

async fn refresh_rotates_and_reuse_revokes_the_family(backend: DatabaseBackend) {
    let mut stack = TestStack::start(backend).await;
    stack.register("erin").await;
    let first = stack.login("erin").await;
    let second = stack
        .auth
        .refresh(RefreshRequest {
            refresh_token: first.refresh_token.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .tokens
        .unwrap();
    assert_ne!(second.refresh_token, first.refresh_token);
    assert_ne!(second.access_token, first.access_token);

    // The spent token comes back: it fails, and so does its successor.
    let reuse = stack
        .auth
        .refresh(RefreshRequest {
            refresh_token: first.refresh_token,
        })
        .await
        .unwrap_err();
    assert_eq!(reuse.code(), Code::Unauthenticated);
    let successor = stack
        .auth
        .refresh(RefreshRequest {
            refresh_token: second.refresh_token,
        })
        .await
        .unwrap_err();
    assert_eq!(successor.code(), Code::Unauthenticated);

    // Another login's family is untouched.
    let other = stack.login("erin").await;
    stack
        .auth
        .refresh(RefreshRequest {
            refresh_token: other.refresh_token,
        })
        .await
        .unwrap();

    for bad in ["", "garbage"] {
        let status = stack
            .auth
            .refresh(RefreshRequest {
                refresh_token: bad.into(),
            })
            .await
            .unwrap_err();
        assert!(
            matches!(status.code(), Code::Unauthenticated | Code::InvalidArgument),
            "{status:?}"
        );
    }
    stack.stop().await;
}

async fn logout_revokes_the_family_and_always_succeeds(backend: DatabaseBackend) {
    let mut stack = TestStack::start(backend).await;
    stack.register("fay").await;
    let tokens = stack.login("fay").await;
    stack
        .auth
        .logout(LogoutRequest {
            refresh_token: tokens.refresh_token.clone(),
        })
        .await
        .unwrap();
    let refresh = stack
        .auth
        .refresh(RefreshRequest {
            refresh_token: tokens.refresh_token.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(refresh.code(), Code::Unauthenticated);
    for token in [tokens.refresh_token, "unknown".into(), String::new()] {
        stack
            .auth
            .logout(LogoutRequest {
                refresh_token: token,
            })
            .await
            .unwrap();
    }
    stack.stop().await;
}

async fn validate_token_reports_bad_tokens_in_band(backend: DatabaseBackend) {
    let mut stack = TestStack::start(backend).await;
    let (gus, token) = stack.signed_up("gus").await;
    let valid = stack
        .auth
        .validate_token(ValidateTokenRequest {
            access_token: token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(valid.valid);
    let claims = valid.claims.unwrap();
    assert_eq!(claims.user_id, gus.id);
    assert_eq!(claims.name, "gus");
    assert_eq!(claims.roles, vec!["user"]);
    assert!(!claims.token_id.is_empty());

    // Change one signature character well inside the last segment, where
    // every bit counts (the final character carries padding bits).
    let mut tampered = token.clone().into_bytes();
    let at = tampered.len() - 10;
    tampered[at] = if tampered[at] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    for (bad, reason) in [
        ("not.a.jwt", "malformed"),
        (tampered.as_str(), "bad_signature"),
    ] {
        let answer = stack
            .auth
            .validate_token(ValidateTokenRequest {
                access_token: bad.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(!answer.valid);
        assert!(answer.claims.is_none());
        assert_eq!(answer.reason, reason);
    }
    stack.stop().await;
}

async fn public_keys_verify_issued_tokens(backend: DatabaseBackend) {
    let mut stack = TestStack::start(backend).await;
    let keys = stack
        .auth
        .get_public_keys(GetPublicKeysRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(keys.keys.len(), 1);
    let key = &keys.keys[0];
    assert_eq!(
        (key.algorithm.as_str(), key.curve.as_str()),
        ("EdDSA", "Ed25519")
    );
    assert!(key.public_key_pem.starts_with("-----BEGIN PUBLIC KEY-----"));

    let verifier = parley_runtime::token::TokenVerifier::new();
    verifier.set_public_keys(&keys.keys);
    let token = stack.login(ADMIN).await.access_token;
    let claims = verifier.verify(&token).unwrap();
    assert_eq!(claims.name, ADMIN);
    assert!(claims.roles.contains(&"admin".to_owned()));
    stack.stop().await;
}

async fn suspended_users_cannot_log_in_or_refresh(backend: DatabaseBackend) {
    let mut stack = TestStack::start(backend).await;
    let hal = stack.register("hal").await;
    let tokens = stack.login("hal").await;
    stack
        .users
        .update_user(authed(
            UpdateUserRequest {
                user: Some(User {
                    id: hal.id,
                    status: UserStatus::Suspended as i32,
                    ..Default::default()
                }),
                update_mask: Some(FieldMask {
                    paths: vec!["status".into()],
                }),
            },
            &stack.admin_token,
        ))
        .await
        .unwrap();
    let login = stack
        .auth
        .login(LoginRequest {
            username: "hal".into(),
            password: PASSWORD.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(login.code(), Code::PermissionDenied);
    let refresh = stack
        .auth
        .refresh(RefreshRequest {
            refresh_token: tokens.refresh_token,
        })
        .await
        .unwrap_err();
    assert_eq!(refresh.code(), Code::PermissionDenied);
    stack.stop().await;
}

/// SQLite files hold password and token hashes: only their owner may read
/// them, whatever the umask.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_files_are_readable_by_their_owner_only() {
    use std::os::unix::fs::PermissionsExt as _;

    let stack = TestStack::start(DatabaseBackend::Sqlite).await;
    for service in ["auth", "user"] {
        let url = stack.database_url(service);
        let path = url.sqlite_path().expect("a SQLite file");
        let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{service}'s {path} is {mode:o}");
    }
    stack.stop().await;
}

/// Access tokens name their issuer and audience and are not valid before
/// their `nbf`; only tokens for the service audience make a service, so a
/// user token carrying the `service` role is still a user's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_checked_for_issuer_audience_and_nbf() {
    use parley_proto::user::v1::CreateUserRequest;
    use parley_runtime::token::{
        AccessClaims, ISSUER, SERVICE_AUDIENCE, SERVICE_ROLE, USER_AUDIENCE,
    };

    let stack = TestStack::start(DatabaseBackend::Sqlite).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let claims = |aud: &str, iss: &str, nbf: i64| AccessClaims {
        sub: "00000000-0000-0000-0000-0000000000aa".into(),
        name: "mallory".into(),
        roles: vec![SERVICE_ROLE.into()],
        iat: now,
        nbf,
        exp: now + 300,
        jti: format!("t-{aud}-{iss}-{nbf}"),
        iss: iss.into(),
        aud: aud.into(),
        scope: None,
        fam: None,
        key: None,
    };
    let create = |token: String| {
        let mut users = stack.users.clone();
        async move {
            users
                .create_user(authed(
                    CreateUserRequest {
                        username: "made_by_token".into(),
                        ..Default::default()
                    },
                    &token,
                ))
                .await
        }
    };
    // The `service` role in a user token makes no service.
    let user_token = stack.sign(&claims(USER_AUDIENCE, ISSUER, now));
    assert_eq!(
        create(user_token).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    // Another issuer, another audience, or a token not valid yet: refused.
    for token in [
        stack.sign(&claims(SERVICE_AUDIENCE, "someone-else", now)),
        stack.sign(&claims("elsewhere", ISSUER, now)),
        stack.sign(&claims(SERVICE_AUDIENCE, ISSUER, now + 600)),
    ] {
        assert_eq!(
            create(token).await.unwrap_err().code(),
            Code::Unauthenticated
        );
    }
    // The real thing works.
    let service = stack.sign(&claims(SERVICE_AUDIENCE, ISSUER, now));
    assert!(create(service).await.is_ok());
    stack.stop().await;
}
