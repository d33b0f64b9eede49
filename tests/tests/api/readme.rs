//! The README's examples, run as written (with the services' real
//! addresses): the chat grpcurl session through server reflection, and the
//! REST session with curl.

use parley_tests::{
    DatabaseBackend, TestStack,
    chat::{ChatReplica, test_args},
    gateway::{Deployment, Settings, Topology},
};

/// The commands between the `<name>:begin` and `<name>:end` markers of the
/// README.
fn readme_script(name: &str) -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("the README is readable");
    let begin = readme
        .find(&format!("<!-- {name}:begin -->"))
        .unwrap_or_else(|| panic!("the README marks its {name} examples"));
    let end = readme[begin..]
        .find(&format!("<!-- {name}:end -->"))
        .expect("the examples end")
        + begin;
    readme[begin..end]
        .split_once("```sh\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .map(|(code, _)| code.to_owned())
        .expect("a sh code block")
}

/// Runs `script` under `bash` with `set -euo pipefail` and `env`, checks it
/// succeeded (`tools` names what it needs), and returns its stdout and
/// stderr.
async fn run(script: &str, env: &[(&str, &str)], tools: &str) -> (String, String) {
    // Files the examples write land in a folder of their own.
    let dir = tempfile::tempdir().expect("a temporary folder");
    let output = tokio::process::Command::new("bash")
        .current_dir(dir.path())
        .arg("-c")
        .arg(format!("set -euo pipefail\n{script}"))
        .envs(env.iter().copied())
        .output()
        .await
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        output.status.success(),
        "the examples fail ({tools}):\n{stdout}\n{stderr}"
    );
    (stdout, stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_chat_grpcurl_examples_work() {
    let mut stack = TestStack::start(DatabaseBackend::Sqlite).await;
    let replica = ChatReplica::start(&stack, test_args(&stack, None)).await;
    let (_, token) = stack.signed_up("ada").await;
    let script =
        readme_script("chat-grpcurl").replace("localhost:50053", &replica.addr.to_string());
    assert!(script.contains("grpcurl"), "{script}");

    let (stdout, _) = run(
        &script,
        &[("TOKEN", &token)],
        "grpcurl and jq come from `make tools`",
    )
    .await;
    assert!(stdout.contains("join code "), "{stdout}");
    assert!(
        stdout.contains(r#""content": "hello from grpcurl""#),
        "history shows the message:\n{stdout}"
    );
    assert!(
        stdout.contains(r#""seq": "1""#),
        "the room's first message: {stdout}"
    );
    for expected in [
        r#""action": "MEMBER_ACTION_BAN""#,
        r#""action": "MEMBER_ACTION_UNBAN""#,
        r#""name": "General""#,
        r#""direct": true"#,
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected} in:\n{stdout}"
        );
    }
    replica.stop().await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_rest_examples_work() {
    let deployment = Deployment::start(Topology::AllInOne, &Settings::default()).await;
    // The attachment, bot and key examples go on with the REST examples'
    // $API and $TOKEN.
    let script = format!(
        "{}\n{}\n{}",
        readme_script("rest-curl"),
        readme_script("attachments-curl"),
        readme_script("bots-curl")
    )
    .replace("localhost:8080", &deployment.gateway(0).to_string());
    // Every call must succeed, and the last answers are shown.
    let script = format!(
        "{}\necho \"$ROOM\"; echo \"$PAIR\"; echo \"$FILE\"",
        script.replace("curl -s ", "curl -sS --fail-with-body ")
    );
    let (stdout, _) = run(&script, &[], "curl and jq are needed").await;
    for expected in [
        r#""username":"alan""#,
        r#"{"has_more":false,"messages":[]}"#,
        r#""private":true"#,
        r#""token_type":"Bearer""#,
        r#""name":"Launch day""#,
        r#""direct":true"#,
        r#""filename":"notes.txt""#,
        r#""content_type":"text/plain""#,
        "meeting notes: ship it\n",
        "\nmeeting\n",
        "\n204\n",
        r#""kind":"bot""#,
        r#""name":"Bot corner""#,
        "\n403\n",
        r#""scopes":["chat:read","chat:write"]"#,
        "\n401\n",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected} in:\n{stdout}"
        );
    }
    assert!(
        !stdout.contains("}{"),
        "each answer prints on its own line:\n{stdout}"
    );
    deployment.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_auth_and_user_grpcurl_examples_work() {
    let stack = TestStack::start(DatabaseBackend::Sqlite).await;
    // The admin block runs as the stack's admin, who deletes ada.
    let script = format!(
        "{}\n{}\nTOKEN=\"$ADMIN_TOKEN\"\n{}",
        readme_script("auth-grpcurl"),
        readme_script("user-grpcurl"),
        readme_script("user-admin-grpcurl"),
    )
    .replace("localhost:50051", &stack.auth_addr.to_string())
    .replace("localhost:50052", &stack.user_addr.to_string());
    let (stdout, stderr) = run(
        &script,
        &[("ADMIN_TOKEN", &stack.admin_token)],
        "grpcurl and jq come from `make tools`",
    )
    .await;
    for expected in [
        "parley.auth.v1.AuthService",
        r#""valid": true"#,
        r#""displayName": "Ada""#,
        r#""username": "grace""#,
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected} in:\n{stdout}"
        );
    }
    // The error's detail is decoded through reflection, not base64.
    assert!(
        stderr.contains(r#""@type":"type.googleapis.com/google.rpc.BadRequest""#)
            && stderr.contains(r#""field":"password""#),
        "{stderr}"
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_media_grpcurl_examples_work() {
    let mut stack = TestStack::start(DatabaseBackend::Sqlite).await;
    let media =
        parley_tests::media::MediaServer::start(&stack, parley_tests::media::Store::Folder, |_| {})
            .await;
    let (_, token) = stack.signed_up("ada").await;
    let script = readme_script("media-grpcurl").replace("localhost:50054", &media.addr.to_string());
    assert!(script.contains("grpcurl"), "{script}");
    let (stdout, _) = run(
        &script,
        &[("TOKEN", &token)],
        "grpcurl and jq come from `make tools`",
    )
    .await;
    use sha2::Digest as _;
    let sha256 = format!(r#""sha256": "{:x}""#, sha2::Sha256::digest(b"hello, media"));
    for expected in [
        r#""filename": "notes.txt""#,
        r#""contentType": "text/plain""#,
        sha256.as_str(),
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected} in:\n{stdout}"
        );
    }
    assert!(
        stdout.trim_end().ends_with("media"),
        "the range from offset 7 reads \"media\":\n{stdout}"
    );
    media.stop().await;
    stack.stop().await;
}
