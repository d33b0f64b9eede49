//! Attachments under load (scenario (f) of `make bench`): clients upload a
//! file through one gateway, download it back through another and delete
//! it, over and over, as the web client does (README, "Attachments").
//! Every upload's SHA-256 and every download's bytes are checked. The run
//! reports files and MiB per second each way, the latency of uploads and
//! downloads, CPU per MiB moved by role, and the peak memory of the
//! processes the bytes pass through.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::fanout::Probe;

/// What a run does.
#[derive(Debug, Clone)]
pub(crate) struct FilesArgs {
    /// Where files go and come from: HTTP addresses serving
    /// `/api/v1/attachments`. A client uploads through one and downloads
    /// through the next.
    pub(crate) gateways: Vec<SocketAddr>,
    /// A bearer token, for Parley; none for the ceiling.
    pub(crate) token: Option<String>,
    /// Clients, each with one file in flight.
    pub(crate) clients: usize,
    /// Bytes per file.
    pub(crate) size: usize,
    /// Untimed start.
    pub(crate) warmup: Duration,
    /// The measured window.
    pub(crate) duration: Duration,
    /// Processes whose resident memory is watched: (pid, role).
    pub(crate) watch: Vec<(u32, &'static str)>,
}

/// What a run measured.
#[derive(Debug)]
pub(crate) struct Report {
    seconds: f64,
    size: usize,
    files: u64,
    errors: u64,
    upload: Histogram<u64>,
    download: Histogram<u64>,
    /// CPU seconds by role over the measured window.
    probed: Vec<(&'static str, f64)>,
    /// Peak RSS in KiB by role (summed over a role's processes), and at
    /// the start.
    rss: Vec<(&'static str, u64, u64)>,
}

impl Report {
    /// The one-line JSON summary.
    pub(crate) fn json(&self) -> String {
        let mib = (self.files as f64 * self.size as f64) / (1024.0 * 1024.0);
        let per_s = |n: f64| ((n / self.seconds) * 10.0).round() / 10.0;
        let mut value = json!({
            "scenario": "f",
            "file_bytes": self.size,
            "files": self.files,
            "errors": self.errors,
            "files_per_s": per_s(self.files as f64),
            "mib_per_s_each_way": per_s(mib),
            "upload": latency(&self.upload),
            "download": latency(&self.download),
        });
        // Both directions move the bytes once: CPU per MiB counts each MiB
        // up and down together.
        if mib > 0.0 {
            for (role, cpu) in &self.probed {
                let us = cpu * 1e6 / mib;
                value["us_per_mib_by_role"][*role] = ((us * 10.0).round() / 10.0).into();
            }
        }
        for (role, start, peak) in &self.rss {
            value["rss_start_kib"][*role] = (*start).into();
            value["rss_peak_kib"][*role] = (*peak).into();
        }
        value.to_string()
    }
}

fn latency(histogram: &Histogram<u64>) -> Value {
    json!({
        "p50_us": histogram.value_at_quantile(0.5),
        "p99_us": histogram.value_at_quantile(0.99),
        "max_us": histogram.max(),
    })
}

/// Bytes that do not compress (xorshift), so no layer gets them cheaply.
fn content(size: usize) -> Bytes {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..size)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

#[derive(Default)]
struct Tally {
    files: u64,
    errors: u64,
    upload: Option<Histogram<u64>>,
    download: Option<Histogram<u64>>,
}

/// Runs the clients for the warm-up and the window.
///
/// # Errors
/// When nothing could be moved at all, or the first file fails (a setup
/// problem rather than load).
pub(crate) async fn run(args: &FilesArgs, probe: Option<Probe>) -> anyhow::Result<Report> {
    anyhow::ensure!(!args.gateways.is_empty(), "no gateway to send files to");
    let body = content(args.size);
    let sha256 = format!("{:x}", Sha256::digest(&body));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(args.clients)
        .build()?;
    // One file first: a setup problem fails here, loudly.
    one_file(&http, args, 0, &body, &sha256)
        .await
        .context("the first file")?;

    let start = Instant::now();
    let measured_from = start + args.warmup;
    let end = measured_from + args.duration;
    let tally = Arc::new(Mutex::new(Tally {
        upload: Some(Histogram::new(3)?),
        download: Some(Histogram::new(3)?),
        ..Tally::default()
    }));
    let rss_start: Vec<(u32, &'static str, u64)> = args
        .watch
        .iter()
        .map(|(pid, role)| (*pid, *role, parley_tests::rss_kib(*pid)))
        .collect();
    let peaks = Arc::new(Mutex::new(vec![0_u64; args.watch.len()]));
    let watcher = {
        let (watch, peaks) = (args.watch.clone(), peaks.clone());
        tokio::spawn(async move {
            loop {
                {
                    let mut peaks = peaks.lock().unwrap_or_else(|e| e.into_inner());
                    for (peak, (pid, _)) in peaks.iter_mut().zip(&watch) {
                        *peak = (*peak).max(parley_tests::rss_kib(*pid));
                    }
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        })
    };
    let probe_at_window = {
        let probe = probe.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(measured_from.into()).await;
            probe.map(|p| p())
        })
    };
    let mut workers = Vec::new();
    for client in 0..args.clients {
        let (http, args, body, sha256, tally) = (
            http.clone(),
            args.clone(),
            body.clone(),
            sha256.clone(),
            tally.clone(),
        );
        workers.push(tokio::spawn(async move {
            while Instant::now() < end {
                let began = Instant::now();
                let outcome = one_file(&http, &args, client, &body, &sha256).await;
                if began < measured_from {
                    continue;
                }
                let mut tally = tally.lock().unwrap_or_else(|e| e.into_inner());
                match outcome {
                    Ok((up, down)) if Instant::now() <= end => {
                        tally.files += 1;
                        if let Some(h) = tally.upload.as_mut() {
                            let _ = h.record(up.as_micros() as u64);
                        }
                        if let Some(h) = tally.download.as_mut() {
                            let _ = h.record(down.as_micros() as u64);
                        }
                    }
                    Ok(_) => {}
                    Err(err) => {
                        tally.errors += 1;
                        if tally.errors <= 3 {
                            eprintln!("   file error: {err:#}");
                        }
                    }
                }
            }
        }));
    }
    let before = probe_at_window.await?;
    for worker in workers {
        worker.await?;
    }
    let after = probe.map(|p| p());
    watcher.abort();
    let seconds = args.duration.as_secs_f64();
    let probed = match (before, after) {
        (Some(before), Some(after)) => after
            .into_iter()
            .zip(before)
            .map(|((role, a), (_, b))| (role, a - b))
            .collect(),
        _ => Vec::new(),
    };
    let peaks = peaks.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut rss: Vec<(&'static str, u64, u64)> = Vec::new();
    for ((_, role, start), peak) in rss_start.into_iter().zip(peaks) {
        match rss.iter_mut().find(|(r, _, _)| *r == role) {
            Some((_, s, p)) => {
                *s += start;
                *p += peak;
            }
            None => rss.push((role, start, peak)),
        }
    }
    let mut tally = tally.lock().unwrap_or_else(|e| e.into_inner());
    Ok(Report {
        seconds,
        size: args.size,
        files: tally.files,
        errors: tally.errors,
        upload: tally.upload.take().context("the upload histogram")?,
        download: tally.download.take().context("the download histogram")?,
        probed,
        rss,
    })
}

/// Uploads through gateway `client`, downloads through the next, checks
/// both and deletes the file; answers the two latencies.
async fn one_file(
    http: &reqwest::Client,
    args: &FilesArgs,
    client: usize,
    body: &Bytes,
    sha256: &str,
) -> anyhow::Result<(Duration, Duration)> {
    let gateways = &args.gateways;
    let up_at = gateways[client % gateways.len()];
    let down_at = gateways[(client + 1) % gateways.len()];
    let authed = |request: reqwest::RequestBuilder| match &args.token {
        Some(token) => request.bearer_auth(token),
        None => request,
    };

    let began = Instant::now();
    let response = authed(http.post(format!(
        "http://{up_at}/api/v1/attachments?filename=bench.bin"
    )))
    .header("Content-Type", "application/octet-stream")
    .body(body.clone())
    .send()
    .await?;
    if response.status().as_u16() != 201 {
        bail!(
            "upload: {} {}",
            response.status(),
            response.text().await.unwrap_or_default()
        );
    }
    let stored: Value = response.json().await?;
    let upload = began.elapsed();
    if stored["sha256"] != sha256 || stored["size"] != body.len() {
        bail!("upload stored something else: {stored}");
    }
    let id = stored["id"].as_str().context("an attachment id")?;

    let began = Instant::now();
    let mut response = authed(http.get(format!("http://{down_at}/api/v1/attachments/{id}")))
        .send()
        .await?;
    if response.status().as_u16() != 200 {
        bail!("download: {}", response.status());
    }
    let mut at = 0;
    while let Some(chunk) = response.chunk().await? {
        let expected = body.get(at..at + chunk.len());
        if expected != Some(chunk.as_ref()) {
            bail!("download: the bytes at {at} differ");
        }
        at += chunk.len();
    }
    let download = began.elapsed();
    if at != body.len() {
        bail!("download: {at} bytes of {}", body.len());
    }
    let deleted = authed(http.delete(format!("http://{down_at}/api/v1/attachments/{id}")))
        .send()
        .await?;
    if deleted.status().as_u16() != 204 {
        bail!("delete: {}", deleted.status());
    }
    Ok((upload, download))
}
