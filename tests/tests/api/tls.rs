//! TLS everywhere (README, "TLS"), with certificates this test makes: the
//! all-in-one's services serve mTLS and call each other at `https://`
//! URLs, the gateway serves HTTPS and WSS, plaintext is refused, grpcurl
//! works with `-cacert`/`-cert`, and a rotated certificate reaches new
//! connections without a restart while old ones keep working.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use parley_runtime::{test_util::TestCa, tls::replace_file};
use parley_tests::{
    chat::room_id,
    gateway::{Deployment, Settings, Ws, username},
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
use serde_json::{Value, json};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// The files of one deployment: the CA, the certificate every service
/// serves and presents, and an operator's client certificate.
struct Files {
    dir: tempfile::TempDir,
    ca: TestCa,
}

impl Files {
    fn new() -> Self {
        let files = Self {
            dir: tempfile::tempdir().expect("a temporary folder"),
            ca: TestCa::new(),
        };
        std::fs::write(files.path("ca.pem"), files.ca.pem()).unwrap();
        files.issue("service", "parley");
        files.issue("operator", "operator");
        files
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap()
    }

    /// Writes `<file>.pem` and `<file>.key` for a certificate named `name`,
    /// the certificate first, as a rotation may leave them for a moment;
    /// returns the certificate's DER.
    fn issue(&self, file: &str, name: &str) -> Vec<u8> {
        let (cert, key) = self.ca.issue(name);
        replace_file(&self.path(&format!("{file}.pem")), cert.as_bytes()).unwrap();
        replace_file(&self.path(&format!("{file}.key")), key.as_bytes()).unwrap();
        CertificateDer::from_pem_slice(cert.as_bytes())
            .unwrap()
            .to_vec()
    }

    /// Every service's `_TLS_*` variables: mTLS on each gRPC port, HTTPS
    /// on the gateway, the CA trusted by every caller.
    fn env(&self) -> Vec<(String, String)> {
        let file = |name: &str| self.path(name).display().to_string();
        let mut env = Vec::new();
        for service in ["AUTH", "USER", "CHAT", "MEDIA", "GATEWAY"] {
            env.push((format!("{service}_TLS_CERT_FILE"), file("service.pem")));
            env.push((format!("{service}_TLS_KEY_FILE"), file("service.key")));
            env.push((format!("{service}_TLS_CA_FILE"), file("ca.pem")));
            if service != "GATEWAY" {
                env.push((format!("{service}_TLS_CLIENT_CA_FILE"), file("ca.pem")));
            }
        }
        env
    }

    /// A TLS configuration trusting the CA, presenting the operator's
    /// certificate when `identity`.
    fn tonic_tls(&self, identity: bool) -> ClientTlsConfig {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(self.read("ca.pem")))
            .domain_name("localhost");
        if identity {
            tls.identity(Identity::from_pem(
                self.read("operator.pem"),
                self.read("operator.key"),
            ))
        } else {
            tls
        }
    }

    /// The certificate `addr` serves to a new connection now (DER).
    async fn served(&self, addr: SocketAddr) -> Vec<u8> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.read("ca.pem").as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(self.read("operator.pem").as_bytes())
                .collect::<Result<_, _>>()
                .unwrap();
        let key = PrivateKeyDer::from_pem_slice(self.read("operator.key").as_bytes()).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect("localhost".try_into().unwrap(), tcp)
            .await
            .expect("a TLS handshake");
        tls.get_ref().1.peer_certificates().expect("a certificate")[0].to_vec()
    }
}

/// A health check over TLS, `Err` with what went wrong when it fails.
async fn health(channel: Channel) -> Result<i32, String> {
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map(|response| response.into_inner().status)
        .map_err(|status| format!("{status}"))
}

async fn tls_channel(addr: SocketAddr, tls: ClientTlsConfig) -> Result<Channel, String> {
    Channel::from_shared(format!("https://localhost:{}", addr.port()))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .map_err(|err| format!("{err:?}"))
}

/// Runs a command, returning its exit status and output.
async fn command(program: &str, args: &[&str]) -> (bool, String) {
    let output = tokio::process::Command::new(program)
        .args(args)
        .output()
        .await
        .unwrap_or_else(|err| panic!("{program} runs (`make tools` installs it): {err}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_port_serves_tls_and_mtls_and_picks_up_a_rotated_certificate() {
    let files = Files::new();
    let env = files.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let settings = Settings {
        https: true,
        ..Settings::default()
    };
    // Ready means the services reached each other: chat, media, user and
    // the gateway fetched auth's keys over mTLS.
    let deployment = Deployment::all_in_one(&settings, &env).await;
    let auth = deployment.auth_grpc;
    let gateway = deployment.gateway(0);
    let ca = files.path("ca.pem").display().to_string();

    // gRPC: mTLS with a certificate of the CA; none, or plaintext, refused.
    let kept = tls_channel(auth, files.tonic_tls(true)).await.unwrap();
    assert_eq!(health(kept.clone()).await, Ok(1), "SERVING over mTLS");
    let anonymous = match tls_channel(auth, files.tonic_tls(false)).await {
        Ok(channel) => health(channel).await,
        Err(err) => Err(err),
    };
    assert!(anonymous.is_err(), "no client certificate: {anonymous:?}");
    let plaintext = match Channel::from_shared(format!("http://{auth}"))
        .unwrap()
        .connect()
        .await
    {
        Ok(channel) => health(channel).await,
        Err(err) => Err(format!("{err:?}")),
    };
    assert!(plaintext.is_err(), "plaintext on a TLS port: {plaintext:?}");

    // grpcurl, as an operator runs it.
    let target = format!("localhost:{}", auth.port());
    let cert = files.path("operator.pem").display().to_string();
    let key = files.path("operator.key").display().to_string();
    let (ok, out) = command(
        "grpcurl",
        &[
            "-cacert", &ca, "-cert", &cert, "-key", &key, &target, "list",
        ],
    )
    .await;
    assert!(ok && out.contains("parley.auth.v1.AuthService"), "{out}");
    let (ok, out) = command("grpcurl", &["-cacert", &ca, &target, "list"]).await;
    assert!(!ok, "grpcurl without a client certificate: {out}");
    let (ok, out) = command("grpcurl", &["-plaintext", &target, "list"]).await;
    assert!(!ok, "grpcurl in plaintext: {out}");

    // HTTPS: a registration goes gateway → auth → user, each over mTLS.
    let https = format!("https://localhost:{}", gateway.port());
    let name = username("secure");
    let body = json!({"username": name, "password": parley_tests::PASSWORD}).to_string();
    let post = |path: &'static str| {
        let (ca, body, url) = (ca.clone(), body.clone(), format!("{https}{path}"));
        async move {
            let args = [
                "-sS",
                "--fail-with-body",
                "--cacert",
                &ca,
                "-H",
                "content-type: application/json",
                "-d",
                &body,
                &url,
            ];
            let (ok, out) = command("curl", &args).await;
            assert!(ok, "{path}: {out}");
            serde_json::from_str::<Value>(&out).expect("a JSON answer")
        }
    };
    assert_eq!(post("/api/v1/auth/register").await["username"], name);
    let tokens = post("/api/v1/auth/login").await;
    let token = tokens["access_token"].as_str().expect("an access token");
    let (ok, out) = command("curl", &["-sS", &format!("http://{gateway}/healthz")]).await;
    assert!(!ok, "plain HTTP on the HTTPS port: {out}");

    // WSS: a message goes gateway → chat over mTLS and comes back.
    let room = room_id("secure");
    let mut ws = Ws::connect_tls(gateway, token, files.ca.pem()).await;
    ws.join(&room, 0).await;
    ws.say(&room, "over TLS", "c1").await;
    assert_eq!(ws.next_message().await["content"], "over TLS");

    // Rotation: the certificate is replaced in place; new connections to
    // every port get it within seconds, old ones keep working.
    let before = files.served(auth).await;
    let rotated = files.issue("service", "parley-rotated");
    assert_ne!(before, rotated);
    let deadline = Instant::now() + Duration::from_secs(30);
    for addr in [auth, deployment.chat_grpcs[0], gateway] {
        // No event says the files were read again: ask until they were.
        while files.served(addr).await != rotated {
            assert!(
                Instant::now() < deadline,
                "{addr} still serves the old certificate"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    assert_eq!(health(kept).await, Ok(1), "an open connection outlives it");
    ws.say(&room, "still here", "c2").await;
    assert_eq!(ws.next_message().await["content"], "still here");
    let mut fresh = Ws::connect_tls(gateway, token, files.ca.pem()).await;
    fresh.join(&room, 0).await;
    ws.close().await;
    fresh.close().await;
    deployment.stop().await;
}

/// The path of a file that does not exist, for the start-up checks.
fn nowhere(dir: &Path) -> String {
    dir.join("missing.pem").display().to_string()
}

/// A missing certificate file stops a service at start-up with exit code
/// 2, naming the variable; so does a key without its certificate.
#[tokio::test]
async fn a_missing_tls_file_exits_2_naming_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let missing = nowhere(dir.path());
    for (program, env) in [
        (
            "parley-auth",
            vec![
                ("AUTH_TLS_CERT_FILE", missing.as_str()),
                ("AUTH_TLS_KEY_FILE", missing.as_str()),
                ("AUTH_GRPC_ADDR", "127.0.0.1:0"),
                ("AUTH_ADMIN_ADDR", "127.0.0.1:0"),
            ],
        ),
        (
            "parley-gateway",
            vec![
                ("GATEWAY_TLS_KEY_FILE", missing.as_str()),
                ("GATEWAY_HTTP_ADDR", "127.0.0.1:0"),
                ("GATEWAY_ADMIN_ADDR", "127.0.0.1:0"),
            ],
        ),
    ] {
        let output = tokio::process::Command::new(parley_tests::binary(program))
            .current_dir(dir.path())
            .envs(env.iter().copied())
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{program}: {stderr}");
        let variable = env[0].0;
        assert!(stderr.contains(variable), "{program}: {stderr}");
    }
}
