//! The README's chat grpcurl examples, run as written (with the chat
//! service's real address) through server reflection.

use parley_tests::{
    DatabaseBackend, TestStack,
    chat::{ChatReplica, test_args},
};

/// The commands between the `chat-grpcurl` markers of the README.
fn readme_chat_script() -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("the README is readable");
    let begin = readme
        .find("<!-- chat-grpcurl:begin -->")
        .expect("the README marks its chat examples");
    let end = readme[begin..]
        .find("<!-- chat-grpcurl:end -->")
        .expect("the chat examples end")
        + begin;
    readme[begin..end]
        .split_once("```sh\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .map(|(code, _)| code.to_owned())
        .expect("a sh code block")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_chat_grpcurl_examples_work() {
    let mut stack = TestStack::start(DatabaseBackend::Sqlite).await;
    let replica = ChatReplica::start(&stack, test_args(&stack, None)).await;
    let (_, token) = stack.signed_up("ada").await;
    let script = readme_chat_script().replace("localhost:50053", &replica.addr.to_string());
    assert!(script.contains("grpcurl"), "{script}");

    let output = tokio::process::Command::new("bash")
        .arg("-c")
        .arg(format!("set -euo pipefail\n{script}"))
        .env("TOKEN", &token)
        .output()
        .await
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the examples fail (grpcurl and jq come from `make tools`):\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("join code "), "{stdout}");
    assert!(
        stdout.contains(r#""content": "hello from grpcurl""#),
        "history shows the message:\n{stdout}"
    );
    assert!(
        stdout.contains(r#""seq": "1""#),
        "the room's first message: {stdout}"
    );
    replica.stop().await;
    stack.stop().await;
}
