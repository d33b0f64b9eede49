//! The media service beside a [`TestStack`], on a folder or on a real
//! S3-compatible server (`moto_server`, from PyPI's `moto[server]`, which
//! `make tools` installs), with helpers to call it.

use std::{net::SocketAddr, path::PathBuf, process::Stdio, time::Duration};

use parley_media::config::StoreUrl;
use parley_proto::media::v1::media_service_client::MediaServiceClient;
use parley_runtime::CancellationToken;
use tokio::process::{Child, Command};
use tonic::transport::Channel;

use crate::{
    TestStack, channel,
    gateway::{free_ports, try_http},
    listeners, wait_until_serving,
};

/// Where a test's media bytes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    /// A temporary folder.
    Folder,
    /// A bucket on a fresh S3-compatible server.
    S3,
}

/// A running S3-compatible server on loopback.
#[derive(Debug)]
pub struct S3Server {
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    addr: SocketAddr,
    _child: Child,
}

impl S3Server {
    /// Starts `moto_server` on a free port and waits until it answers.
    ///
    /// # Panics
    /// When it cannot start (is `moto[server]` installed? `make tools`).
    pub async fn start() -> Self {
        let port = free_ports(1).await[0];
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("starting moto_server (pip install 'moto[server]', or make tools)");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let server = Self {
            endpoint: format!("http://{addr}"),
            addr,
            _child: child,
        };
        tokio::time::timeout(Duration::from_secs(30), async {
            while server.request("GET", "/").await.is_none() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("moto_server answers within 30 s");
        server
    }

    /// Creates a bucket.
    ///
    /// # Panics
    /// When the server refuses.
    pub async fn create_bucket(&self, bucket: &str) {
        let status = self.request("PUT", &format!("/{bucket}")).await;
        assert_eq!(status, Some(200), "creating bucket {bucket}");
    }

    /// How many objects the bucket holds under `prefix`.
    ///
    /// # Panics
    /// When the server cannot be asked.
    pub async fn count(&self, bucket: &str, prefix: &str) -> usize {
        let (status, body) = self
            .exchange("GET", &format!("/{bucket}?list-type=2&prefix={prefix}"))
            .await
            .expect("listing the bucket");
        assert_eq!(status, 200, "{body}");
        body.matches("<Key>").count()
    }

    /// A bodiless request's status, or `None` when the server is not up.
    async fn request(&self, method: &str, path: &str) -> Option<u16> {
        self.exchange(method, path).await.map(|(status, _)| status)
    }

    async fn exchange(&self, method: &str, path: &str) -> Option<(u16, String)> {
        let answer = try_http(self.addr, method, path, &[], None).await.ok()?;
        Some((answer.status, answer.body))
    }
}

/// A running media service.
#[derive(Debug)]
pub struct MediaServer {
    /// gRPC address.
    pub addr: SocketAddr,
    /// Admin address.
    pub admin: SocketAddr,
    /// A client.
    pub client: MediaServiceClient<Channel>,
    /// The folder of a folder store.
    pub folder: Option<PathBuf>,
    /// The server of an S3 store, and the bucket.
    pub s3: Option<(S3Server, String)>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), String>>,
    _dir: tempfile::TempDir,
}

impl MediaServer {
    /// Starts media next to `stack` on `store`, with `settings` adjusted by
    /// `adjust` first (limits, TTL), and waits until it serves.
    ///
    /// # Panics
    /// When it cannot start.
    pub async fn start(
        stack: &TestStack,
        store: Store,
        adjust: impl FnOnce(&mut parley_media::MediaArgs),
    ) -> Self {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let listeners = listeners().await;
        let addr = listeners.grpc_addr().expect("media address");
        let admin = listeners.admin_addr().expect("media admin address");
        let (store_url, folder, s3) = match store {
            Store::Folder => {
                let folder = dir.path().join("media");
                (StoreUrl::File(folder.clone()), Some(folder), None)
            }
            Store::S3 => {
                let server = S3Server::start().await;
                let bucket = "parley-media".to_owned();
                server.create_bucket(&bucket).await;
                (
                    StoreUrl::S3 {
                        bucket: bucket.clone(),
                        prefix: String::new(),
                    },
                    None,
                    Some((server, bucket)),
                )
            }
        };
        let mut args = parley_media::MediaArgs {
            grpc_addr: addr,
            admin_addr: admin,
            database_url: stack.database_url("media"),
            store_url,
            s3_endpoint: s3.as_ref().map(|(server, _)| server.endpoint.clone()),
            s3_region: "us-east-1".into(),
            s3_access_key_id: s3.as_ref().map(|_| "test".into()),
            s3_access_key_id_file: None,
            s3_secret_access_key: s3.as_ref().map(|_| "test".into()),
            s3_secret_access_key_file: None,
            max_bytes: 25 * 1024 * 1024,
            user_quota_bytes: 1024 * 1024 * 1024,
            upload_ttl: Duration::from_secs(3600),
            cors_origins: parley_runtime::config::CorsOrigins::None,
            tls: Default::default(),
        };
        adjust(&mut args);
        let config = parley_media::Config {
            media: args,
            auth_url: stack.auth_url(),
            shutdown_grace: Duration::from_secs(5),
        };
        let shutdown = CancellationToken::new();
        let app = parley_media::with_listeners(config, listeners, shutdown.clone())
            .await
            .expect("media builds");
        let task = tokio::spawn(async move { app.run().await.map_err(|e| format!("{e:#}")) });
        let channel = channel(addr).await;
        wait_until_serving(channel.clone(), "parley.media.v1.MediaService").await;
        Self {
            addr,
            admin,
            client: MediaServiceClient::new(channel),
            folder,
            s3,
            shutdown,
            task,
            _dir: dir,
        }
    }

    /// How many objects the store holds under `prefix` (`files`,
    /// `thumbnails`, `uploads`).
    pub async fn objects(&self, prefix: &str) -> usize {
        if let Some((server, bucket)) = &self.s3 {
            return server.count(bucket, prefix).await;
        }
        let Some(folder) = &self.folder else {
            return 0;
        };
        fn walk(path: &std::path::Path) -> usize {
            match std::fs::read_dir(path) {
                Ok(entries) => entries
                    .filter_map(Result::ok)
                    .map(|entry| {
                        let path = entry.path();
                        if path.is_dir() { walk(&path) } else { 1 }
                    })
                    .sum(),
                Err(_) => 0,
            }
        }
        walk(&folder.join(prefix))
    }

    /// Stops the service and checks it drained cleanly.
    ///
    /// # Panics
    /// When it does not stop in time or failed.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let result = tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("media stops within the grace period")
            .expect("the media task does not panic");
        assert_eq!(result, Ok(()));
    }
}

/// Bytes that compress badly and differ per seed (xorshift), for files no
/// layer can shrink.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// A real image of `width` × `height` in `format` (a gradient).
///
/// # Panics
/// When the image crate cannot encode it.
pub fn picture(width: u32, height: u32, format: image::ImageFormat) -> Vec<u8> {
    let image = image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, 90])
    }));
    let mut bytes = std::io::Cursor::new(Vec::new());
    image
        .write_to(&mut bytes, format)
        .expect("an image the crate can encode");
    bytes.into_inner()
}

/// The highest resident memory of `pid` until `done` is cancelled, sampled
/// every 20 ms (memory has no event to await).
pub fn watch_memory(pid: u32, done: CancellationToken) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut peak = 0;
        while !done.is_cancelled() {
            peak = peak.max(crate::rss_kib(pid));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        peak.max(crate::rss_kib(pid))
    })
}
