//! docker-compose.yml against the binaries it runs: real `docker compose
//! config` accepts it, and every variable, URL, port and scrape target it
//! wires matches what the binaries read and listen on.

use std::collections::{BTreeMap, HashSet};

use parley_tests::binary;
use serde_json::Value;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// The compose CLI: the v2 plugin `make tools` installs, or `COMPOSE`.
fn compose() -> String {
    std::env::var("COMPOSE")
        .unwrap_or_else(|_| "/usr/local/lib/docker/cli-plugins/docker-compose".into())
}

/// `docker compose config` of docker-compose.yml with the `overrides`
/// (paths from the repository's root) on top.
async fn resolved_compose_file(overrides: &[&str]) -> Value {
    let mut args = vec!["-f".to_owned(), format!("{ROOT}/docker-compose.yml")];
    for file in overrides {
        args.extend(["-f".to_owned(), format!("{ROOT}/{file}")]);
    }
    let output = tokio::process::Command::new(compose())
        .args(&args)
        .args(["config", "--format", "json"])
        .output()
        .await
        .expect("docker compose runs (`make tools` installs it)");
    assert!(
        output.status.success(),
        "docker compose config refused the file:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("compose config prints JSON")
}

async fn help_of(program: &str) -> String {
    let output = tokio::process::Command::new(binary(program))
        .arg("--help")
        .output()
        .await
        .expect("the binary runs");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The port of an `addr:port` or `http://host:port` value.
fn port_of(value: &str) -> u16 {
    value
        .rsplit(':')
        .next()
        .and_then(|port| port.trim_end_matches('/').parse().ok())
        .unwrap_or_else(|| panic!("no port in {value}"))
}

fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, rest)| rest);
    rest.split([':', '/']).next().unwrap_or_default()
}

#[tokio::test]
async fn compose_wires_the_services_the_way_the_binaries_read_them() {
    let file = resolved_compose_file(&[]).await;
    let services = file["services"].as_object().expect("services");
    let names: HashSet<&str> = services.keys().map(String::as_str).collect();
    let init_sql = std::fs::read_dir(format!("{ROOT}/deploy/postgres"))
        .expect("deploy/postgres")
        .map(|entry| std::fs::read_to_string(entry.unwrap().path()).unwrap())
        .collect::<String>();

    // Which binary each Parley service runs, and its API and admin ports.
    let mut api_port: BTreeMap<&str, u16> = BTreeMap::new();
    let mut admin_port: BTreeMap<&str, u16> = BTreeMap::new();
    let mut parley = Vec::new();
    for (name, service) in services {
        let Some(program) = service["build"]["args"]["SERVICE"].as_str() else {
            continue;
        };
        let env = service["environment"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        let help = help_of(program).await;
        for key in env.keys() {
            assert!(
                help.contains(key.as_str()),
                "{name} sets {key}, which {program} does not read"
            );
        }
        let (api_var, admin_var) = match program {
            "parley-auth" => ("AUTH_GRPC_ADDR", "AUTH_ADMIN_ADDR"),
            "parley-user" => ("USER_GRPC_ADDR", "USER_ADMIN_ADDR"),
            "parley-chat" => ("CHAT_GRPC_ADDR", "CHAT_ADMIN_ADDR"),
            "parley-media" => ("MEDIA_GRPC_ADDR", "MEDIA_ADMIN_ADDR"),
            "parley-gateway" => ("GATEWAY_HTTP_ADDR", "GATEWAY_ADMIN_ADDR"),
            other => panic!("{name} runs {other}, which compose should not need"),
        };
        for (var, ports) in [(api_var, &mut api_port), (admin_var, &mut admin_port)] {
            let value = env[var]
                .as_str()
                .unwrap_or_else(|| panic!("{name} sets {var}"));
            ports.insert(name.as_str(), port_of(value));
        }
        parley.push((name.as_str(), program, env));
    }
    assert_eq!(parley.len(), 5, "auth, user, chat, media and gateway");

    for (name, program, env) in &parley {
        for (key, value) in env {
            let value = value.as_str().unwrap_or_default();
            if key.ends_with("_URL") && value.starts_with("http://") {
                for target in value.split(',') {
                    let host = host_of(target);
                    assert!(
                        api_port.contains_key(host),
                        "{name}: {key} names {host}, not a Parley service"
                    );
                    assert_eq!(
                        port_of(target),
                        api_port[host],
                        "{name}: {key} port of {host}"
                    );
                }
            }
            if key.ends_with("_DATABASE_URL") {
                let host = host_of(value);
                assert!(
                    names.contains(host),
                    "{name}: {key} host {host} is a compose service"
                );
                let database = value
                    .rsplit('/')
                    .next()
                    .unwrap_or_default()
                    .split('?')
                    .next()
                    .unwrap_or_default();
                assert!(
                    init_sql.contains(&format!("CREATE DATABASE {database}")),
                    "{database} is created at init"
                );
            }
            if key == "CHAT_REDIS_URL" || key == "OTEL_EXPORTER_OTLP_ENDPOINT" {
                let host = host_of(value);
                assert!(
                    names.contains(host),
                    "{name}: {key} host {host} is a compose service"
                );
            }
        }
        let wanted: &[&str] = match *program {
            "parley-auth" => &["AUTH_DATABASE_URL", "USER_URL"],
            "parley-user" => &["USER_DATABASE_URL", "AUTH_URL"],
            "parley-chat" => &[
                "CHAT_DATABASE_URL",
                "CHAT_REDIS_URL",
                "AUTH_URL",
                "MEDIA_URL",
            ],
            "parley-media" => &["MEDIA_DATABASE_URL", "MEDIA_STORE_URL", "AUTH_URL"],
            _ => &["AUTH_URL", "USER_URL", "CHAT_URL", "MEDIA_URL"],
        };
        for key in wanted {
            assert!(env.contains_key(*key), "{name} sets {key}");
        }
        assert!(
            !services[*name]["healthcheck"].is_null(),
            "{name} has a health check"
        );
    }
    assert_eq!(
        services["chat"]["deploy"]["replicas"], 2,
        "two chat replicas"
    );
    let published: Vec<u64> = services["gateway"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|port| port["published"].as_str()?.parse().ok())
        .collect();
    assert!(
        published.contains(&8080),
        "the web client at http://localhost:8080"
    );
    // Only the gateway's public port listens on every interface; gRPC,
    // admin ports, Prometheus, Grafana and Jaeger stay on this machine.
    for (name, service) in services {
        for port in service["ports"].as_array().into_iter().flatten() {
            let published = port["published"].as_str().unwrap_or_default();
            let public = name == "gateway" && published == "8080";
            assert_eq!(
                port["host_ip"].as_str(),
                if public { None } else { Some("127.0.0.1") },
                "{name} publishes {published} on {}",
                port["host_ip"]
            );
        }
    }
    assert!(
        names.contains("prometheus") && names.contains("grafana"),
        "Prometheus and Grafana"
    );

    // Prometheus scrapes every admin port of every Parley service.
    let scrape =
        std::fs::read_to_string(format!("{ROOT}/deploy/prometheus/prometheus.yml")).unwrap();
    for (name, port) in &admin_port {
        let static_target = format!("\"{name}:{port}\"");
        let dns_target = format!("names: [\"{name}\"], type: A, port: {port}");
        assert!(
            scrape.contains(&static_target) || scrape.contains(&dns_target),
            "Prometheus scrapes {name} on {port}"
        );
    }
}

#[tokio::test]
async fn the_s3_override_puts_media_on_minio_with_its_bucket_made_first() {
    let file = resolved_compose_file(&["deploy/compose.s3.yml"]).await;
    let services = file["services"].as_object().expect("services");
    let media = &services["media"];
    let env = media["environment"].as_object().expect("media's variables");
    let help = help_of("parley-media").await;
    for key in env.keys() {
        assert!(
            help.contains(key.as_str()),
            "media sets {key}, which parley-media does not read"
        );
    }
    let store = env["MEDIA_STORE_URL"].as_str().unwrap_or_default();
    let bucket = store
        .strip_prefix("s3://")
        .unwrap_or_else(|| panic!("media on S3, not {store}"));
    let endpoint = env["MEDIA_S3_ENDPOINT"].as_str().unwrap_or_default();
    assert!(
        services.contains_key(host_of(endpoint)),
        "MEDIA_S3_ENDPOINT {endpoint} is a compose service"
    );
    assert!(
        env.contains_key("MEDIA_S3_ACCESS_KEY_ID")
            && env.contains_key("MEDIA_S3_SECRET_ACCESS_KEY"),
        "media has the store's keys"
    );
    assert_eq!(
        media["depends_on"]["minio-setup"]["condition"], "service_completed_successfully",
        "media starts once the bucket exists"
    );
    let setup = services["minio-setup"]["command"].to_string();
    assert!(
        setup.contains(&format!("mc mb --ignore-existing local/{bucket}")),
        "the setup makes {bucket}: {setup}"
    );
    assert_eq!(
        services["minio-setup"]["depends_on"]["minio"]["condition"],
        "service_healthy"
    );
    // The volume of the main file stays declared; the override adds its own.
    assert!(file["volumes"]["minio-data"].is_object());
}

#[tokio::test]
async fn the_tls_override_wires_every_service_to_the_files_make_certs_writes() {
    let file = resolved_compose_file(&["deploy/compose.tls.yml"]).await;
    let services = file["services"].as_object().expect("services");
    for (service, prefix) in [
        ("auth", "AUTH"),
        ("user", "USER"),
        ("chat", "CHAT"),
        ("media", "MEDIA"),
        ("gateway", "GATEWAY"),
    ] {
        let env = services[service]["environment"]
            .as_object()
            .expect("variables");
        let help = help_of(&format!("parley-{service}")).await;
        for (key, value) in env {
            assert!(help.contains(key.as_str()), "{service} sets {key}, unread");
            let url = value.as_str().unwrap_or_default();
            let parley = ["auth", "user", "chat", "media"].contains(&host_of(url));
            if key.ends_with("_URL") && parley {
                assert!(url.starts_with("https://"), "{service} {key}={url}");
            }
        }
        for name in ["CERT", "KEY", "CA"] {
            let path = env[&format!("{prefix}_TLS_{name}_FILE")]
                .as_str()
                .expect("a path");
            let mounted = services[service]["volumes"]
                .as_array()
                .expect("volumes")
                .iter()
                .find(|volume| volume["target"] == path)
                .unwrap_or_else(|| panic!("{service} does not mount {path}"));
            let source = mounted["source"].as_str().unwrap_or_default();
            let written = path.rsplit('/').next().unwrap_or_default();
            assert!(
                source.ends_with(&format!("/deploy/tls/{written}")),
                "{service}: {path} comes from {source}"
            );
        }
        assert_eq!(
            env.contains_key(&format!("{prefix}_TLS_CLIENT_CA_FILE")),
            service != "gateway",
            "mTLS on the gRPC ports, not on the gateway's public one"
        );
    }

    // The script's certificate serves and calls under every service name,
    // and a second run renews it under the same CA.
    let dir = tempfile::tempdir().unwrap();
    let make = || async {
        let output = tokio::process::Command::new(format!("{ROOT}/deploy/make-certs.sh"))
            .arg(dir.path())
            .output()
            .await
            .expect("the script runs (openssl comes from `make tools`)");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        (
            std::fs::read(dir.path().join("ca.crt")).unwrap(),
            std::fs::read(dir.path().join("tls.crt")).unwrap(),
        )
    };
    let (ca, first) = make().await;
    accepted_everywhere(dir.path());
    let (same_ca, renewed) = make().await;
    assert_eq!(ca, same_ca, "the CA is kept");
    assert_ne!(first, renewed, "the certificate is renewed");
    accepted_everywhere(dir.path());
}

/// The files in `dir` load as a service's TLS, and the certificate is
/// valid for every compose service name, as a server and as a client.
fn accepted_everywhere(dir: &std::path::Path) {
    use parley_runtime::tls::{ServiceTls, TlsFile, TlsFiles};
    use rustls::{
        client::{WebPkiServerVerifier, danger::ServerCertVerifier as _},
        pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject as _},
        server::WebPkiClientVerifier,
    };
    let file = |variable: &'static str, name: &str| TlsFile::new(variable, Some(&dir.join(name)));
    let files = TlsFiles {
        cert: file("X_TLS_CERT_FILE", "tls.crt"),
        key: file("X_TLS_KEY_FILE", "tls.key"),
        client_ca: file("X_TLS_CLIENT_CA_FILE", "ca.crt"),
        ca: file("X_TLS_CA_FILE", "ca.crt"),
    };
    let tls = ServiceTls::load(&files).expect("the files load");
    assert!(tls.server.is_some());

    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(dir.join("ca.crt")).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let roots = std::sync::Arc::new(roots);
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let servers = WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .unwrap();
    let clients = WebPkiClientVerifier::builder_with_provider(roots, provider)
        .build()
        .unwrap();
    let leaf = CertificateDer::from_pem_file(dir.join("tls.crt")).unwrap();
    for name in ["auth", "user", "chat", "media", "gateway", "localhost"] {
        let name = ServerName::try_from(name).unwrap();
        servers
            .verify_server_cert(&leaf, &[], &name, &[], UnixTime::now())
            .unwrap_or_else(|err| panic!("not a server certificate for {name:?}: {err}"));
    }
    clients
        .verify_client_cert(&leaf, &[], UnixTime::now())
        .expect("a client certificate");
}
