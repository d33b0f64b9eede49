//! TLS for gRPC servers, the gateway's HTTPS and service-to-service calls
//! (README, "TLS").
//!
//! Certificates come from PEM files named by `<SVC>_TLS_*` variables. On
//! Kubernetes, cert-manager rotates them in place, so both sides re-read the
//! files when they change: a server checks them (at most once a second) when
//! a connection arrives and hands new connections the new certificate; a
//! client rebuilds its configuration when its files change, and its balanced
//! channels reconnect with it. Connections already open keep their session.
//! A missing or unreadable file at start-up is a [`BadValue`] naming the
//! variable (exit 2); a bad file found on a later check is logged and the
//! last good certificate stays in use, as a half-written rotation must not
//! take a service down.

use std::{
    io,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use rustls::{
    RootCertStore, ServerConfig,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
    server::WebPkiClientVerifier,
};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use crate::config::BadValue;

/// How often, at most, the files are looked at again.
const RECHECK_EVERY: Duration = Duration::from_secs(1);

/// How long a client may take to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes in progress at once on one listener; more connections wait
/// in the kernel's backlog.
const MAX_HANDSHAKES: usize = 256;

/// One file setting: the path and the variable it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFile {
    /// The variable, such as `AUTH_TLS_CERT_FILE`, for error messages.
    pub variable: &'static str,
    /// Where the PEM file is.
    pub path: PathBuf,
}

impl TlsFile {
    /// `path` when set, named by `variable`.
    pub fn new(variable: &'static str, path: Option<&PathBuf>) -> Option<Self> {
        path.map(|path| Self {
            variable,
            path: path.clone(),
        })
    }

    fn read(&self) -> Result<Vec<u8>, BadValue> {
        std::fs::read(&self.path).map_err(|err| BadValue {
            variable: self.variable,
            message: format!("cannot read {}: {err}", self.path.display()),
        })
    }

    fn bad(&self, message: impl std::fmt::Display) -> BadValue {
        BadValue {
            variable: self.variable,
            message: format!("{}: {message}", self.path.display()),
        }
    }

    fn certificates(&self) -> Result<Vec<CertificateDer<'static>>, BadValue> {
        let pem = self.read()?;
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| self.bad(format!("not PEM certificates: {err}")))?;
        if certs.is_empty() {
            return Err(self.bad("holds no PEM certificate"));
        }
        Ok(certs)
    }

    fn private_key(&self) -> Result<PrivateKeyDer<'static>, BadValue> {
        let pem = self.read()?;
        PrivateKeyDer::from_pem_slice(&pem)
            .map_err(|err| self.bad(format!("holds no PEM private key: {err}")))
    }

    /// What changes when the file is replaced: a rotation by rename (as
    /// Kubernetes updates a mounted Secret) or by rewriting.
    fn stamp(&self) -> Option<Stamp> {
        let meta = std::fs::metadata(&self.path).ok()?;
        Some(Stamp {
            modified: meta.modified().ok(),
            len: meta.len(),
            #[cfg(unix)]
            inode: std::os::unix::fs::MetadataExt::ino(&meta),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    #[cfg(unix)]
    inode: u64,
}

/// The TLS files of one service, as its `<SVC>_TLS_*` variables name them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// `<SVC>_TLS_CERT_FILE`: the certificate chain it serves and, under
    /// mTLS, presents when it calls other services.
    pub cert: Option<TlsFile>,
    /// `<SVC>_TLS_KEY_FILE`: the certificate's private key.
    pub key: Option<TlsFile>,
    /// `<SVC>_TLS_CLIENT_CA_FILE`: when set, callers must present a
    /// certificate signed by it (mTLS).
    pub client_ca: Option<TlsFile>,
    /// `<SVC>_TLS_CA_FILE`: trusted, besides the system roots, when it calls
    /// `https://` services.
    pub ca: Option<TlsFile>,
}

impl TlsFiles {
    /// The certificate and key, when both are set.
    ///
    /// # Errors
    /// One without the other.
    fn pair(&self) -> Result<Option<(&TlsFile, &TlsFile)>, BadValue> {
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => Ok(Some((cert, key))),
            (None, None) => Ok(None),
            (Some(cert), None) => Err(BadValue {
                variable: cert.variable,
                message: "is set without the matching _TLS_KEY_FILE".into(),
            }),
            (None, Some(key)) => Err(BadValue {
                variable: key.variable,
                message: "is set without the matching _TLS_CERT_FILE".into(),
            }),
        }
    }

    fn all(&self) -> impl Iterator<Item = &TlsFile> {
        [&self.cert, &self.key, &self.client_ca, &self.ca]
            .into_iter()
            .flatten()
    }

    fn stamps(&self) -> Vec<Option<Stamp>> {
        self.all().map(TlsFile::stamp).collect()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Files looked at again at most once per [`RECHECK_EVERY`], rebuilding
/// `T` from them when any changed.
#[derive(Debug)]
struct Reloading<T> {
    files: TlsFiles,
    build: fn(&TlsFiles) -> Result<T, BadValue>,
    state: Mutex<Loaded<T>>,
}

#[derive(Debug)]
struct Loaded<T> {
    value: T,
    stamps: Vec<Option<Stamp>>,
    checked: Instant,
    generation: u64,
}

impl<T: Clone> Reloading<T> {
    fn load(
        files: TlsFiles,
        build: fn(&TlsFiles) -> Result<T, BadValue>,
    ) -> Result<Self, BadValue> {
        let stamps = files.stamps();
        let value = build(&files)?;
        Ok(Self {
            files,
            build,
            state: Mutex::new(Loaded {
                value,
                stamps,
                checked: Instant::now(),
                generation: 0,
            }),
        })
    }

    /// The current value and its generation, reloaded first when the files
    /// changed since the last look.
    fn current(&self) -> (T, u64) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.checked.elapsed() >= RECHECK_EVERY {
            state.checked = Instant::now();
            let stamps = self.files.stamps();
            if stamps != state.stamps {
                match (self.build)(&self.files) {
                    Ok(value) => {
                        state.value = value;
                        state.stamps = stamps;
                        state.generation += 1;
                        tracing::info!("TLS files changed; new connections use them");
                    }
                    // Keep the old stamps: the next look tries again.
                    Err(err) => {
                        tracing::warn!(error = %err, "cannot use the changed TLS files; keeping the previous ones")
                    }
                }
            }
        }
        (state.value.clone(), state.generation)
    }
}

/// A server's TLS configuration, re-read when its files change.
#[derive(Debug)]
pub struct ServerTls {
    reloading: Reloading<Arc<ServerConfig>>,
}

impl ServerTls {
    /// Loads the certificate and key of `files` (and the client CA, for
    /// mTLS), offering the ALPN protocols gRPC and gRPC-Web use (`h2`,
    /// `http/1.1`); `None` when no certificate is configured.
    ///
    /// # Errors
    /// A file that is missing, unreadable or not what it should be, or a
    /// certificate without its key.
    pub fn load(files: &TlsFiles) -> Result<Option<Arc<Self>>, BadValue> {
        if files.pair()?.is_none() {
            return Ok(None);
        }
        let reloading = Reloading::load(files.clone(), server_config)?;
        Ok(Some(Arc::new(Self { reloading })))
    }

    /// The configuration for the next connection.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.reloading.current().0
    }

    /// Accepts on `listener` and completes TLS handshakes concurrently (a
    /// slow client holds only its own), yielding finished connections with
    /// their peer address. Stops when the receiver is dropped.
    pub fn accept(
        self: Arc<Self>,
        listener: TcpListener,
    ) -> tokio::sync::mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)> {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(accept_loop(listener, self, tx));
        rx
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: Arc<ServerTls>,
    tx: tokio::sync::mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    loop {
        let permit = tokio::select! {
            permit = handshakes.clone().acquire_owned() => permit,
            () = tx.closed() => return,
        };
        let Ok(permit) = permit else { return };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = tx.closed() => return,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of file descriptors and the like: wait a moment
                // rather than spin.
                tracing::warn!(error = %err, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(error = %err, "cannot set TCP_NODELAY");
        }
        let acceptor = TlsAcceptor::from(tls.config());
        let tx = tx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    let _ = tx.send((stream, peer)).await;
                }
                Ok(Err(err)) => {
                    crate::metrics::tls_handshake_failed();
                    tracing::debug!(%peer, error = %err, "TLS handshake failed");
                }
                Err(_) => {
                    crate::metrics::tls_handshake_failed();
                    tracing::debug!(%peer, "TLS handshake timed out");
                }
            }
        });
    }
}

fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, BadValue> {
    let Some((cert, key)) = files.pair()? else {
        return Err(BadValue {
            variable: "TLS_CERT_FILE",
            message: "no certificate".into(),
        });
    };
    let chain = cert.certificates()?;
    let private_key = key.private_key()?;
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|err| cert.bad(err))?;
    let builder = match &files.client_ca {
        Some(ca) => {
            let roots = roots(ca)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|err| ca.bad(err))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, private_key)
        .map_err(|err| key.bad(format!("does not fit the certificate: {err}")))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn roots(ca: &TlsFile) -> Result<RootCertStore, BadValue> {
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(ca.certificates()?);
    if added == 0 {
        return Err(ca.bad("holds no usable CA certificate"));
    }
    Ok(roots)
}

/// What a service trusts and presents when it calls `https://` services,
/// re-read when its files change.
#[derive(Debug, Clone)]
pub struct ClientTls {
    reloading: Arc<Reloading<ClientFiles>>,
}

#[derive(Debug, Clone)]
struct ClientFiles {
    ca: Option<Certificate>,
    identity: Option<Identity>,
}

impl Default for ClientTls {
    /// The system roots only, and no certificate of its own.
    fn default() -> Self {
        Self {
            reloading: Arc::new(Reloading {
                files: TlsFiles::default(),
                build: client_files,
                state: Mutex::new(Loaded {
                    value: ClientFiles {
                        ca: None,
                        identity: None,
                    },
                    stamps: Vec::new(),
                    checked: Instant::now(),
                    generation: 0,
                }),
            }),
        }
    }
}

impl ClientTls {
    /// Reads the CA (`<SVC>_TLS_CA_FILE`) and the service's own certificate
    /// and key (presented for mTLS) from `files`.
    ///
    /// # Errors
    /// A file that is missing, unreadable or not PEM.
    pub fn load(files: &TlsFiles) -> Result<Self, BadValue> {
        let files = TlsFiles {
            client_ca: None,
            ..files.clone()
        };
        Ok(Self {
            reloading: Arc::new(Reloading::load(files, client_files)?),
        })
    }

    /// The configuration for connections to `domain` made now, and the
    /// generation of the files it came from (it grows when they change).
    pub fn config(&self, domain: &str) -> (ClientTlsConfig, u64) {
        let (files, generation) = self.reloading.current();
        let mut config = ClientTlsConfig::new()
            .with_native_roots()
            .domain_name(domain)
            .assume_http2(true);
        if let Some(ca) = files.ca {
            config = config.ca_certificate(ca);
        }
        if let Some(identity) = files.identity {
            config = config.identity(identity);
        }
        (config, generation)
    }

    /// The generation of the files now (see [`Self::config`]).
    pub fn generation(&self) -> u64 {
        self.reloading.current().1
    }
}

fn client_files(files: &TlsFiles) -> Result<ClientFiles, BadValue> {
    let ca = match &files.ca {
        Some(ca) => {
            // Parsed here so a bad file is found at start-up, not on the
            // first call.
            roots(ca)?;
            Some(Certificate::from_pem(ca.read()?))
        }
        None => None,
    };
    let identity = match files.pair()? {
        Some((cert, key)) => {
            cert.certificates()?;
            key.private_key()?;
            Some(Identity::from_pem(cert.read()?, key.read()?))
        }
        None => None,
    };
    Ok(ClientFiles { ca, identity })
}

/// Both sides of a service's TLS, loaded from its `<SVC>_TLS_*` files.
#[derive(Debug, Clone, Default)]
pub struct ServiceTls {
    /// What its own port serves; `None` for plaintext.
    pub server: Option<Arc<ServerTls>>,
    /// What its calls to `https://` services trust and present.
    pub client: ClientTls,
}

impl ServiceTls {
    /// Loads both from `files`, before anything else starts, so a bad file
    /// stops the process at once.
    ///
    /// # Errors
    /// A file that is missing, unreadable or not what it should be.
    pub fn load(files: &TlsFiles) -> Result<Self, BadValue> {
        Ok(Self {
            server: ServerTls::load(files)?,
            client: ClientTls::load(files)?,
        })
    }
}

/// Writes `contents` to `path` by renaming a file written beside it, as a
/// rotation does; for tests and tools.
///
/// # Errors
/// The file cannot be written.
pub fn replace_file(path: &Path, contents: &[u8]) -> io::Result<()> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".new");
    std::fs::write(&temporary, contents)?;
    std::fs::rename(&temporary, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::TestCa;

    fn files(dir: &Path, ca: &TestCa, name: &str, mtls: bool) -> TlsFiles {
        let (cert, key) = ca.issue(name);
        std::fs::write(dir.join("cert.pem"), cert).unwrap();
        std::fs::write(dir.join("key.pem"), key).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        let file =
            |variable, name: &str| Some(TlsFile::new(variable, Some(&dir.join(name))).unwrap());
        TlsFiles {
            cert: file("X_TLS_CERT_FILE", "cert.pem"),
            key: file("X_TLS_KEY_FILE", "key.pem"),
            client_ca: if mtls {
                file("X_TLS_CLIENT_CA_FILE", "ca.pem")
            } else {
                None
            },
            ca: file("X_TLS_CA_FILE", "ca.pem"),
        }
    }

    #[test]
    fn missing_and_mismatched_files_name_their_variable() {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new();
        let mut set = files(dir.path(), &ca, "localhost", true);
        assert!(ServerTls::load(&set).unwrap().is_some());

        set.cert.as_mut().unwrap().path = dir.path().join("nowhere.pem");
        let err = ServerTls::load(&set).unwrap_err();
        assert_eq!(err.variable, "X_TLS_CERT_FILE");
        assert!(err.message.contains("nowhere.pem"), "{err}");

        let set = TlsFiles {
            key: None,
            ..files(dir.path(), &ca, "localhost", false)
        };
        assert_eq!(
            ServerTls::load(&set).unwrap_err().variable,
            "X_TLS_CERT_FILE"
        );

        // A key of another certificate.
        let set = files(dir.path(), &ca, "localhost", false);
        let (_, other_key) = ca.issue("other");
        std::fs::write(dir.path().join("key.pem"), other_key).unwrap();
        assert_eq!(
            ServerTls::load(&set).unwrap_err().variable,
            "X_TLS_KEY_FILE"
        );

        std::fs::write(dir.path().join("ca.pem"), "not pem").unwrap();
        assert_eq!(ClientTls::load(&set).unwrap_err().variable, "X_TLS_CA_FILE");
        assert!(ServerTls::load(&TlsFiles::default()).unwrap().is_none());
    }

    #[test]
    fn changed_files_are_used_and_broken_ones_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new();
        let set = files(dir.path(), &ca, "first", false);
        let tls = ServerTls::load(&set).unwrap().unwrap();
        let client = ClientTls::load(&set).unwrap();
        let first = tls.config();
        assert!(
            Arc::ptr_eq(&first, &tls.config()),
            "unchanged files are not read again"
        );

        // A half-written rotation: the certificate changed, the key not yet.
        let (cert, key) = ca.issue("second");
        replace_file(&dir.path().join("cert.pem"), cert.as_bytes()).unwrap();
        force_recheck(&tls.reloading);
        assert!(
            Arc::ptr_eq(&first, &tls.config()),
            "a mismatched pair is not used"
        );

        replace_file(&dir.path().join("key.pem"), key.as_bytes()).unwrap();
        force_recheck(&tls.reloading);
        assert!(
            !Arc::ptr_eq(&first, &tls.config()),
            "the rotated pair is used"
        );

        force_recheck(&client.reloading);
        assert_eq!(client.generation(), 1);
    }

    fn force_recheck<T>(reloading: &Reloading<T>) {
        let mut state = reloading.state.lock().unwrap();
        state.checked = Instant::now().checked_sub(RECHECK_EVERY).unwrap();
    }
}
