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

async fn resolved_compose_file() -> Value {
    let output = tokio::process::Command::new(compose())
        .args([
            "-f",
            &format!("{ROOT}/docker-compose.yml"),
            "config",
            "--format",
            "json",
        ])
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
    let file = resolved_compose_file().await;
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
            "parley-chat" => &["CHAT_DATABASE_URL", "CHAT_REDIS_URL", "AUTH_URL"],
            "parley-media" => &["MEDIA_DATABASE_URL", "MEDIA_STORE_URL", "AUTH_URL"],
            _ => &["AUTH_URL", "USER_URL", "CHAT_URL"],
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
