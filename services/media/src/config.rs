//! The media service's settings.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Args;
use parley_runtime::config::{
    BadValue, CorsOrigins, DatabaseUrl, MediaTls, ServiceUrl, parse_duration,
};
use secrecy::{ExposeSecret as _, SecretString};

/// Settings read from `MEDIA_*` variables.
#[derive(Debug, Clone, Args)]
pub struct MediaArgs {
    /// gRPC API listen address.
    #[arg(
        id = "MEDIA_GRPC_ADDR",
        long = "media-grpc-addr",
        env = "MEDIA_GRPC_ADDR",
        default_value = "0.0.0.0:50054"
    )]
    pub grpc_addr: SocketAddr,

    /// Admin listen address: /metrics, /healthz, /readyz.
    #[arg(
        id = "MEDIA_ADMIN_ADDR",
        long = "media-admin-addr",
        env = "MEDIA_ADMIN_ADDR",
        default_value = "0.0.0.0:9095"
    )]
    pub admin_addr: SocketAddr,

    /// `postgres://...` (tables in schema `media`) or `sqlite://path`.
    #[arg(
        id = "MEDIA_DATABASE_URL",
        long = "media-database-url",
        env = "MEDIA_DATABASE_URL",
        default_value = "sqlite://data/media.db",
        hide_env_values = true
    )]
    pub database_url: DatabaseUrl,

    /// Where the bytes live: `file://<dir>` or `s3://<bucket>[/<prefix>]`.
    #[arg(
        id = "MEDIA_STORE_URL",
        long = "media-store-url",
        env = "MEDIA_STORE_URL",
        default_value = "file://data/media"
    )]
    pub store_url: StoreUrl,

    /// The S3 endpoint, for stores other than AWS (`http://` is allowed).
    #[arg(
        id = "MEDIA_S3_ENDPOINT",
        long = "media-s3-endpoint",
        env = "MEDIA_S3_ENDPOINT"
    )]
    pub s3_endpoint: Option<String>,

    /// The S3 region.
    #[arg(
        id = "MEDIA_S3_REGION",
        long = "media-s3-region",
        env = "MEDIA_S3_REGION",
        default_value = "us-east-1"
    )]
    pub s3_region: String,

    /// The S3 access key id.
    #[arg(
        id = "MEDIA_S3_ACCESS_KEY_ID",
        long = "media-s3-access-key-id",
        env = "MEDIA_S3_ACCESS_KEY_ID",
        hide_env_values = true
    )]
    pub s3_access_key_id: Option<SecretString>,

    /// File holding the S3 access key id.
    #[arg(
        id = "MEDIA_S3_ACCESS_KEY_ID_FILE",
        long = "media-s3-access-key-id-file",
        env = "MEDIA_S3_ACCESS_KEY_ID_FILE"
    )]
    pub s3_access_key_id_file: Option<PathBuf>,

    /// The S3 secret access key.
    #[arg(
        id = "MEDIA_S3_SECRET_ACCESS_KEY",
        long = "media-s3-secret-access-key",
        env = "MEDIA_S3_SECRET_ACCESS_KEY",
        hide_env_values = true
    )]
    pub s3_secret_access_key: Option<SecretString>,

    /// File holding the S3 secret access key.
    #[arg(
        id = "MEDIA_S3_SECRET_ACCESS_KEY_FILE",
        long = "media-s3-secret-access-key-file",
        env = "MEDIA_S3_SECRET_ACCESS_KEY_FILE"
    )]
    pub s3_secret_access_key_file: Option<PathBuf>,

    /// The largest attachment, in bytes.
    #[arg(
        id = "MEDIA_MAX_BYTES",
        long = "media-max-bytes",
        env = "MEDIA_MAX_BYTES",
        default_value_t = 26_214_400,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub max_bytes: u64,

    /// Bytes one user may keep stored; 0 means no quota.
    #[arg(
        id = "MEDIA_USER_QUOTA_BYTES",
        long = "media-user-quota-bytes",
        env = "MEDIA_USER_QUOTA_BYTES",
        default_value_t = 1_073_741_824
    )]
    pub user_quota_bytes: u64,

    /// How long an unfinished resumable upload is kept after its last
    /// chunk.
    #[arg(id = "MEDIA_UPLOAD_TTL", long = "media-upload-ttl", env = "MEDIA_UPLOAD_TTL", default_value = "1h", value_parser = parse_duration)]
    pub upload_ttl: Duration,

    /// Browser origins that may call with gRPC-Web: comma-separated, or
    /// `*`; empty sends no CORS headers.
    #[arg(
        id = "MEDIA_CORS_ORIGINS",
        long = "media-cors-origins",
        env = "MEDIA_CORS_ORIGINS",
        default_value = ""
    )]
    pub cors_origins: CorsOrigins,

    /// TLS on the gRPC port and for calls to `https://` services.
    #[command(flatten)]
    pub tls: MediaTls,
}

/// `MEDIA_STORE_URL`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// A folder on this machine (or a volume).
    File(PathBuf),
    /// An S3 bucket, and a key prefix ("" for none).
    S3 {
        /// The bucket.
        bucket: String,
        /// Keys start with this, without slashes at either end.
        prefix: String,
    },
}

impl std::str::FromStr for StoreUrl {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        if let Some(path) = value.strip_prefix("file://") {
            if path.is_empty() {
                return Err("file:// needs a folder, as in file://data/media".into());
            }
            return Ok(Self::File(PathBuf::from(path)));
        }
        if let Some(rest) = value.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err("s3:// needs a bucket, as in s3://parley-media".into());
            }
            return Ok(Self::S3 {
                bucket: bucket.to_owned(),
                prefix: prefix.trim_matches('/').to_owned(),
            });
        }
        Err("expected file://<dir> or s3://<bucket>[/<prefix>]".into())
    }
}

impl std::fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(path) => write!(f, "file://{}", path.display()),
            Self::S3 { bucket, prefix } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            Self::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

/// S3 credentials, read from the variable or its `_FILE` twin.
#[derive(Debug, Clone)]
pub struct S3Credentials {
    /// The access key id.
    pub access_key_id: SecretString,
    /// The secret access key.
    pub secret_access_key: SecretString,
}

impl MediaArgs {
    /// The S3 credentials, when set; `None` leaves them to the store's own
    /// lookup (the `AWS_*` variables, an instance role).
    ///
    /// # Errors
    /// A `_FILE` that cannot be read, or only one of the two set, names
    /// the variable (exit 2).
    pub fn s3_credentials(&self) -> Result<Option<S3Credentials>, BadValue> {
        let id = secret(
            self.s3_access_key_id.as_ref(),
            self.s3_access_key_id_file.as_ref(),
            "MEDIA_S3_ACCESS_KEY_ID_FILE",
        )?;
        let key = secret(
            self.s3_secret_access_key.as_ref(),
            self.s3_secret_access_key_file.as_ref(),
            "MEDIA_S3_SECRET_ACCESS_KEY_FILE",
        )?;
        match (id, key) {
            (Some(access_key_id), Some(secret_access_key)) => Ok(Some(S3Credentials {
                access_key_id,
                secret_access_key,
            })),
            (None, None) => Ok(None),
            (Some(_), None) => Err(BadValue {
                variable: "MEDIA_S3_SECRET_ACCESS_KEY",
                message: "is needed with MEDIA_S3_ACCESS_KEY_ID".into(),
            }),
            (None, Some(_)) => Err(BadValue {
                variable: "MEDIA_S3_ACCESS_KEY_ID",
                message: "is needed with MEDIA_S3_SECRET_ACCESS_KEY".into(),
            }),
        }
    }
}

/// A secret from its variable, else from its file (trimmed), else none.
fn secret(
    value: Option<&SecretString>,
    file: Option<&PathBuf>,
    file_variable: &'static str,
) -> Result<Option<SecretString>, BadValue> {
    if let Some(value) = value {
        return Ok(Some(value.expose_secret().trim().into()));
    }
    let Some(path) = file else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path).map_err(|err| BadValue {
        variable: file_variable,
        message: format!("cannot read {}: {err}", path.display()),
    })?;
    Ok(Some(text.trim().into()))
}

/// Everything the media service needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Its own settings.
    pub media: MediaArgs,
    /// Where auth is, for public keys.
    pub auth_url: ServiceUrl,
    /// Drain time on shutdown.
    pub shutdown_grace: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls_parse() {
        assert_eq!(
            "file://data/media".parse(),
            Ok(StoreUrl::File(PathBuf::from("data/media")))
        );
        assert_eq!(
            "s3://bucket".parse(),
            Ok(StoreUrl::S3 {
                bucket: "bucket".into(),
                prefix: String::new()
            })
        );
        assert_eq!(
            "s3://bucket/a/b/".parse(),
            Ok(StoreUrl::S3 {
                bucket: "bucket".into(),
                prefix: "a/b".into()
            })
        );
        for bad in ["file://", "s3://", "s3:///x", "http://x", "data/media"] {
            assert!(bad.parse::<StoreUrl>().is_err(), "{bad}");
        }
    }
}
