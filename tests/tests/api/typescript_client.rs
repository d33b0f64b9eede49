//! `@parley/client` (clients/typescript) against a real Parley, with Node's
//! own test runner, on both topologies; and its committed build, which the
//! gateway serves to the web client, checked against its source (README:
//! "Client libraries").

use std::{path::Path, time::Duration};

use parley_tests::{
    gateway::{Deployment, Settings, Topology},
    on_both_topologies,
};

const PACKAGE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../clients/typescript");
/// The token lifetime the renewal test outlives three times.
const TOKEN_TTL: Duration = Duration::from_secs(3);

on_both_topologies!(the_typescript_client_passes_its_tests_against_parley);

async fn the_typescript_client_passes_its_tests_against_parley(topology: Topology) {
    let settings = Settings {
        access_token_ttl: TOKEN_TTL,
        ..Settings::default()
    };
    let deployment = Deployment::start(topology, &settings).await;
    let gateways = format!(
        "http://{},http://{}",
        deployment.gateway(0),
        deployment.gateway(1)
    );
    let output = tokio::process::Command::new("node")
        .args([
            "--experimental-websocket",
            "--test",
            "--test-reporter=spec",
            // A failed test may leave a connection open; the run still ends.
            "--test-force-exit",
            "--test-timeout=120000",
            "test/client.test.mjs",
        ])
        .current_dir(PACKAGE)
        .env("PARLEY_GATEWAYS", gateways)
        .env("PARLEY_TOKEN_TTL_SECONDS", TOKEN_TTL.as_secs().to_string())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(300), output)
        .await
        .expect("the package's tests end")
        .expect("node runs");
    let report = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "the package's tests failed:\n{report}"
    );
    assert!(report.contains("fail 0"), "{report}");
    assert!(report.contains("pass 5"), "every test ran:\n{report}");
    deployment.stop().await;
}

/// The module the gateway embeds is what `tsc` makes of the source now:
/// nobody changed one without the other.
#[tokio::test]
async fn the_committed_build_matches_the_source() {
    let out = tempfile::tempdir().unwrap();
    let output = tokio::process::Command::new("node")
        .arg("node_modules/typescript/bin/tsc")
        .args(["-p", ".", "--outDir"])
        .arg(out.path())
        .current_dir(PACKAGE)
        .output()
        .await
        .expect("node runs (`make tools` installs typescript in clients/typescript)");
    assert!(
        output.status.success(),
        "tsc failed:\n{}",
        String::from_utf8_lossy(&output.stdout)
    );
    for file in ["parley-client.js", "parley-client.d.ts"] {
        let built = std::fs::read_to_string(out.path().join(file)).unwrap();
        let committed =
            std::fs::read_to_string(Path::new(PACKAGE).join("dist").join(file)).unwrap_or_default();
        assert!(
            built == committed,
            "clients/typescript/dist/{file} is not the build of src/: run `make client-build`"
        );
    }
}
