//! The web client at `/`, driven in headless Chromium: two pages, two
//! users, one room.

use std::time::Duration;

use parley_tests::gateway::{Deployment, Settings, http};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_browser_pages_chat_through_the_web_client() {
    // A server limit below the web client's own (4096 bytes), so a message
    // can pass the client's check and be refused by the server.
    let deployment =
        Deployment::all_in_one(&Settings::default(), &[("CHAT_MAX_CONTENT_BYTES", "600")]).await;
    let gateway = deployment.gateway(0);

    let page = http(gateway, "GET", "/", &[], None).await;
    assert_eq!(page.status, 200);
    assert!(
        page.header("content-type")
            .unwrap()
            .starts_with("text/html")
    );
    // The page runs only its own script, cannot be framed, and sends no
    // referrer (image URLs carry tokens).
    let csp = page.header("content-security-policy").unwrap_or_default();
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "{directive} in {csp}");
    }
    assert_eq!(page.header("x-frame-options"), Some("DENY"));
    assert_eq!(page.header("referrer-policy"), Some("no-referrer"));
    for asset in ["/app.js", "/app.css"] {
        assert!(page.body.contains(asset), "the page loads {asset}");
        assert_eq!(
            http(gateway, "GET", asset, &[], None).await.status,
            200,
            "{asset}"
        );
    }

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/browser/two-pages.mjs");
    let run = tokio::process::Command::new("node")
        .arg(script)
        .arg(format!("http://{gateway}"))
        .env("MAX_CONTENT_BYTES", "600")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the browser test finishes within two minutes")
        .expect("node runs (`make tools` installs Chromium and playwright-core)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the browser test failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("ok: two pages chatted"), "{stdout}");
    deployment.stop().await;
}
