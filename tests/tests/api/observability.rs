//! The deploy artifacts against a running Parley: Prometheus (Debian's,
//! started here) scrapes the distributed topology, media included, with
//! the repository's scrape config, promtool checks the alert rules, and
//! every query of every Grafana dashboard panel returns data after some
//! traffic (messages and attachments).

use std::{net::SocketAddr, path::Path, time::Duration};

use parley_tests::{
    chat::room_id,
    gateway::{Deployment, Settings, Topology, free_ports, http, http_json, try_http},
};
use serde_json::{Value, json};

const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy");

/// The repository's scrape config with its targets pointed at this
/// deployment's admin ports, scraping every second.
fn scrape_config(targets: &[(&str, Vec<SocketAddr>)]) -> String {
    let config = std::fs::read_to_string(format!("{DEPLOY}/prometheus/prometheus.yml"))
        .expect("deploy/prometheus/prometheus.yml");
    let mut out = String::new();
    let mut job: Option<String> = None;
    let mut rewritten = 0;
    for line in config.lines() {
        let trimmed = line.trim_start();
        if let Some(name) = trimmed.strip_prefix("- job_name:") {
            job = Some(
                name.trim()
                    .trim_matches(|c| c == '"' || c == '\'')
                    .to_owned(),
            );
        }
        if line.starts_with("  scrape_interval:") || line.starts_with("  evaluation_interval:") {
            let key = trimmed.split(':').next().unwrap_or_default();
            out.push_str(&format!("  {key}: 1s\n"));
            continue;
        }
        if line.starts_with("    static_configs:") || line.starts_with("    dns_sd_configs:") {
            let job = job.as_deref().expect("targets inside a job");
            let (_, addresses) = targets
                .iter()
                .find(|(name, _)| *name == job)
                .unwrap_or_else(|| panic!("a scrape job named {job} the test does not know"));
            let list: Vec<String> = addresses.iter().map(|a| format!("\"{a}\"")).collect();
            out.push_str(&format!(
                "    static_configs: [{{targets: [{}]}}]\n",
                list.join(", ")
            ));
            rewritten += 1;
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    assert_eq!(rewritten, targets.len(), "one targets line per job:\n{out}");
    out
}

async fn run(program: &str, args: &[&str]) -> String {
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
    assert!(
        output.status.success(),
        "{program} {args:?} failed:\n{text}"
    );
    text
}

/// Percent-encodes a query parameter.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn query(prometheus: SocketAddr, promql: &str) -> Value {
    let response = http(
        prometheus,
        "GET",
        &format!("/api/v1/query?query={}", encode(promql)),
        &[],
        None,
    )
    .await;
    response.json()
}

/// Polls a query until it returns at least `count` series: Prometheus
/// scrapes on its own clock, so there is no event to await.
async fn until_series(prometheus: SocketAddr, promql: &str, count: usize) {
    let found = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            // Refused until Prometheus listens, 503 until its storage is
            // ready.
            let path = format!("/api/v1/query?query={}", encode(promql));
            if let Ok(response) = try_http(prometheus, "GET", &path, &[], None).await
                && response.status == 200
                && response.json()["data"]["result"]
                    .as_array()
                    .is_some_and(|r| r.len() >= count)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("`{promql}` never returned {count} series"));
}

/// Every PromQL expression of a dashboard, with the panel it belongs to.
fn panel_queries(dashboard: &Value) -> Vec<(String, String)> {
    fn walk(panels: &Value, out: &mut Vec<(String, String)>) {
        for panel in panels.as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap_or("?").to_owned();
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = target["expr"].as_str() {
                    out.push((title.clone(), expr.to_owned()));
                }
            }
            walk(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

fn substitute(expr: &str) -> String {
    expr.replace("${__rate_interval}", "1m")
        .replace("$__rate_interval", "1m")
        .replace("${__interval}", "5s")
        .replace("$__interval", "5s")
        .replace("${__range}", "5m")
        .replace("$__range", "5m")
        .replace("${job}", ".+")
        .replace("$job", ".+")
        .replace("${instance}", ".+")
        .replace("$instance", ".+")
}

async fn traffic(deployment: &Deployment) {
    let gateway = deployment.gateway(0);
    let (alice, bob) = (
        deployment
            .sign_up(&parley_tests::gateway::username("alice"))
            .await,
        deployment
            .sign_up(&parley_tests::gateway::username("bob"))
            .await,
    );
    let refused = http_json(
        gateway,
        "POST",
        "/api/v1/auth/login",
        None,
        &json!({"username": alice.username, "password": "wrong password"}),
    )
    .await;
    assert_eq!(refused.status, 401);
    let refreshed = http_json(
        gateway,
        "POST",
        "/api/v1/auth/refresh",
        None,
        &json!({"refresh_token": alice.refresh_token}),
    )
    .await;
    assert_eq!(refreshed.status, 200);
    let room = room_id("observed");
    let mut on_a = deployment.ws(0, &alice).await;
    let mut on_b = deployment.ws(1, &bob).await;
    on_a.join(&room, 0).await;
    on_b.join(&room, 0).await;
    for i in 0..20 {
        on_a.say(&room, &format!("a{i}"), &format!("a{i}")).await;
        on_b.say(&room, &format!("b{i}"), &format!("b{i}")).await;
    }
    for ws in [&mut on_a, &mut on_b] {
        let mut messages = 0;
        while messages < 40 {
            if ws.next().await.get("message").is_some() {
                messages += 1;
            }
        }
    }
    on_b.send(json!({"typing": {"room_id": room}})).await;
    on_a.next_kind("typing").await;
    let history = http(
        gateway,
        "GET",
        &format!("/api/v1/rooms/{room}/messages"),
        &[("Authorization", &format!("Bearer {}", alice.access_token))],
        None,
    )
    .await;
    assert_eq!(history.status, 200);
    attachments(gateway, &alice).await;
    on_b.close().await;
    on_a.close().await;
}

/// An image uploaded through the gateway, downloaded and thumbnailed: every
/// media metric and the attachment routes get samples.
async fn attachments(gateway: SocketAddr, account: &parley_tests::gateway::Account) {
    let mut png = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(400, 300, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, 7])
    }))
    .write_to(&mut png, image::ImageFormat::Png)
    .unwrap();
    let client = reqwest::Client::new();
    let base = format!("http://{gateway}/api/v1/attachments");
    let stored: Value = client
        .post(format!("{base}?filename=o.png"))
        .bearer_auth(&account.access_token)
        .body(png.into_inner())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = stored["id"].as_str().expect("an attachment id");
    for path in [format!("{base}/{id}"), format!("{base}/{id}/thumbnail")] {
        let response = client
            .get(path)
            .bearer_auth(&account.access_token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        assert!(!response.bytes().await.unwrap().is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_parley_and_every_dashboard_panel_has_data() {
    run(
        "promtool",
        &["check", "rules", &format!("{DEPLOY}/prometheus/alerts.yml")],
    )
    .await;
    run(
        "promtool",
        &[
            "test",
            "rules",
            &format!("{DEPLOY}/prometheus/alerts_test.yml"),
        ],
    )
    .await;

    let deployment = Deployment::start(Topology::Distributed, &Settings::default()).await;
    let targets = vec![
        ("auth", vec![deployment.auth_admin]),
        ("user", vec![deployment.user_admin]),
        ("chat", deployment.chat_admins.clone()),
        ("media", vec![deployment.media_admin]),
        ("gateway", deployment.gateway_admins.clone()),
    ];
    let dir = tempfile_dir();
    let config_path = dir.join("prometheus.yml");
    std::fs::write(&config_path, scrape_config(&targets)).unwrap();
    std::fs::copy(
        format!("{DEPLOY}/prometheus/alerts.yml"),
        dir.join("alerts.yml"),
    )
    .unwrap();
    let config = config_path.display().to_string();
    run("promtool", &["check", "config", &config]).await;

    let port = free_ports(1).await[0];
    let prometheus: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut server = tokio::process::Command::new("prometheus")
        .arg(format!("--config.file={config}"))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={prometheus}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("prometheus starts (`make tools` installs it)");

    until_series(prometheus, "up == 1", 7).await;
    traffic(&deployment).await;
    // The stored-messages counter exists from the start, so this holds
    // once a scrape has seen the traffic.
    until_series(
        prometheus,
        "increase(parley_chat_messages_stored_total[1m]) > 0",
        1,
    )
    .await;

    let mut dashboards: Vec<_> = std::fs::read_dir(format!("{DEPLOY}/grafana/dashboards"))
        .expect("deploy/grafana/dashboards")
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "json"))
        .collect();
    dashboards.sort();
    assert!(dashboards.len() >= 7, "seven dashboards: {dashboards:?}");
    let mut queries = Vec::new();
    for path in &dashboards {
        let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap())
            .unwrap_or_else(|err| panic!("{}: {err}", path.display()));
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            dashboard.to_string().contains("${datasource}"),
            "{name}: the datasource is chosen by variable"
        );
        let panels = panel_queries(&dashboard);
        assert!(!panels.is_empty(), "{name} has panels with queries");
        queries.extend(
            panels
                .into_iter()
                .map(|(panel, expr)| (format!("{name} / {panel}"), substitute(&expr))),
        );
    }
    // Series born during the traffic need a second scrape before a rate
    // over them exists: check until every query answers, or give up.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut failures = Vec::new();
        for (panel, promql) in &queries {
            let answer = query(prometheus, promql).await;
            if answer["status"] != "success" {
                failures.push(format!("{panel}: {} ({promql})", answer["error"]));
            } else if answer["data"]["result"]
                .as_array()
                .is_none_or(Vec::is_empty)
            {
                failures.push(format!("{panel}: no data ({promql})"));
            }
        }
        if failures.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {} panel queries failed:\n{}",
            failures.len(),
            queries.len(),
            failures.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let _ = server.kill().await;
    deployment.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "parley-prometheus-{}-{}",
        std::process::id(),
        free_suffix()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    assert!(Path::new(&dir).is_dir());
    dir
}

fn free_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}
