//! Attachments (README: "Attachments"): files streamed up and down through
//! the gateway, never held whole in memory.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use crate::{
    error::{Error, Result},
    rest::{Client, answer, transport},
};

/// How much of a file goes up per chunk.
const CHUNK: usize = 64 * 1024;

/// An attachment's metadata, as the server keeps it.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct Attachment {
    /// The id messages carry; whoever has it (and a token) can read it.
    pub id: String,
    /// The name it was uploaded with.
    pub filename: String,
    /// Sniffed from the bytes where they are recognisable.
    pub content_type: String,
    /// Bytes.
    pub size: u64,
    /// Hex SHA-256 of the bytes.
    #[serde(default)]
    pub sha256: String,
    /// Pixels, for images; 0 otherwise.
    #[serde(default)]
    pub width: u32,
    /// Pixels, for images; 0 otherwise.
    #[serde(default)]
    pub height: u32,
}

impl Client {
    /// Uploads the file at `path` as an attachment, calling `progress`
    /// with the bytes sent so far and the total as they leave.
    ///
    /// # Errors
    /// RESOURCE_EXHAUSTED over the size limit or the quota; the file's
    /// own read errors as [`Error::Transport`].
    pub async fn upload_file(
        &self,
        path: &Path,
        content_type: Option<&str>,
        progress: impl FnMut(u64, u64) + Send + 'static,
    ) -> Result<Attachment> {
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|err| Error::Transport(format!("{}: {err}", path.display())))?;
        let size = file
            .metadata()
            .await
            .map_err(|err| Error::Transport(format!("{}: {err}", path.display())))?
            .len();
        let filename = path.file_name().map_or_else(
            || "file".to_owned(),
            |name| name.to_string_lossy().into_owned(),
        );
        self.upload(file, size, &filename, content_type, progress)
            .await
    }

    /// Uploads `size` bytes read from `reader` as an attachment named
    /// `filename`, calling `progress` as they leave.
    ///
    /// # Errors
    /// As [`Client::upload_file`].
    pub async fn upload(
        &self,
        reader: impl AsyncRead + Unpin + Send + 'static,
        size: u64,
        filename: &str,
        content_type: Option<&str>,
        mut progress: impl FnMut(u64, u64) + Send + 'static,
    ) -> Result<Attachment> {
        let chunks = futures_util::stream::unfold((reader, 0u64), move |(mut reader, sent)| {
            let mut buffer = vec![0; CHUNK];
            async move {
                match reader.read(&mut buffer).await {
                    Ok(0) => None,
                    Ok(read) => {
                        buffer.truncate(read);
                        let sent = sent + read as u64;
                        Some((Ok::<_, std::io::Error>((buffer, sent)), (reader, sent)))
                    }
                    Err(err) => Some((Err(err), (reader, sent))),
                }
            }
        });
        let body = futures_util::StreamExt::map(chunks, move |chunk| {
            chunk.map(|(bytes, sent)| {
                progress(sent, size);
                bytes
            })
        });
        let response = self
            .http
            .post(format!("{}/api/v1/attachments", self.base))
            .query(&[("filename", filename)])
            .bearer_auth(self.bearer().await?)
            .header(
                reqwest::header::CONTENT_TYPE,
                content_type.unwrap_or("application/octet-stream"),
            )
            .header(reqwest::header::CONTENT_LENGTH, size)
            .body(reqwest::Body::wrap_stream(body))
            .send()
            .await
            .map_err(transport)?;
        answer(response, false).await
    }

    /// Writes attachment `id` (or its thumbnail) to `out` as it arrives,
    /// calling `progress` with the bytes so far and the total; returns
    /// the bytes written.
    ///
    /// # Errors
    /// NOT_FOUND for an unknown or deleted attachment (or no thumbnail);
    /// `out`'s write errors as [`Error::Transport`].
    pub async fn download(
        &self,
        id: &str,
        thumbnail: bool,
        out: &mut (impl AsyncWrite + Unpin),
        mut progress: impl FnMut(u64, u64),
    ) -> Result<u64> {
        let suffix = if thumbnail { "/thumbnail" } else { "" };
        let mut response = self
            .http
            .get(format!("{}/api/v1/attachments/{id}{suffix}", self.base))
            .bearer_auth(self.bearer().await?)
            .send()
            .await
            .map_err(transport)?;
        if !response.status().is_success() {
            return Err(answer::<serde_json::Value>(response, false)
                .await
                .err()
                .unwrap_or(Error::Transport("unexpected answer".into())));
        }
        let total = response.content_length().unwrap_or_default();
        let mut written = 0u64;
        while let Some(chunk) = response.chunk().await.map_err(transport)? {
            out.write_all(&chunk)
                .await
                .map_err(|err| Error::Transport(err.to_string()))?;
            written += chunk.len() as u64;
            progress(written, total);
        }
        out.flush()
            .await
            .map_err(|err| Error::Transport(err.to_string()))?;
        Ok(written)
    }
}
