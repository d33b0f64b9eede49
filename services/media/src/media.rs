//! What the media service does, apart from the wire: store a file from a
//! stream of chunks (one chunk, a client stream, or a finished resumable
//! upload's parts), run resumable uploads, read byte ranges, delete, and
//! expire abandoned uploads.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use futures_util::{Stream, StreamExt as _, TryStreamExt as _, stream::BoxStream};
use object_store::path::Path;
use parley_runtime::{CancellationToken, storage::now_millis, token::Caller};
use tokio::sync::Semaphore;

use crate::{
    blobs::{Blobs, file_key, part_key, thumbnail_key, upload_prefix},
    domain::{Attachment, CHUNK_BYTES, FileInfo, content_type, is_thumbnailable, new_id},
    error::Error,
    images,
    ingest::{Allowance, Ingest, Limit},
    store::{MediaStore, Part, Upload},
};

/// The limits `MEDIA_*` sets.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// `MEDIA_MAX_BYTES`.
    pub(crate) max_bytes: u64,
    /// `MEDIA_USER_QUOTA_BYTES`; 0 means none.
    pub(crate) quota_bytes: u64,
    /// `MEDIA_UPLOAD_TTL`.
    pub(crate) upload_ttl: Duration,
}

/// The media service's state. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Media {
    store: MediaStore,
    blobs: Blobs,
    limits: Limits,
    /// One image decodes at a time: a decode may take hundreds of MiB.
    thumbnailing: Arc<Semaphore>,
}

/// Where a resumable upload stands after a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Transfer {
    /// Open, with this many bytes stored.
    Open(Upload),
    /// Finished.
    Complete(Attachment),
}

/// A byte range of an attachment (or of its thumbnail), as it streams.
pub(crate) struct Download {
    /// The attachment.
    pub(crate) attachment: Attachment,
    /// The media type of the bytes served.
    pub(crate) content_type: String,
    /// The whole object's size.
    pub(crate) total: u64,
    /// The first byte served.
    pub(crate) offset: u64,
    /// Bytes served.
    pub(crate) length: u64,
    /// The bytes, in chunks of at most `CHUNK_BYTES`.
    pub(crate) chunks: BoxStream<'static, Result<Bytes, Error>>,
}

impl std::fmt::Debug for Download {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Download")
            .field("attachment", &self.attachment.id)
            .field("offset", &self.offset)
            .field("length", &self.length)
            .finish_non_exhaustive()
    }
}

impl Media {
    /// The service over its metadata and bytes.
    pub(crate) fn new(store: MediaStore, blobs: Blobs, limits: Limits) -> Self {
        Self {
            store,
            blobs,
            limits,
            thumbnailing: Arc::new(Semaphore::new(1)),
        }
    }

    /// How much `uploader` may still upload in one file.
    async fn allowance(&self, uploader: &str) -> Result<Allowance, Error> {
        let by_size = Allowance {
            bytes: self.limits.max_bytes,
            by: Limit::MaxBytes,
        };
        if self.limits.quota_bytes == 0 {
            return Ok(by_size);
        }
        let left = self
            .limits
            .quota_bytes
            .saturating_sub(self.store.used_bytes(uploader).await?);
        Ok(if left < by_size.bytes {
            Allowance {
                bytes: left,
                by: Limit::Quota,
            }
        } else {
            by_size
        })
    }

    /// Stores a file as `caller` from `chunks` (each at most `CHUNK_BYTES`,
    /// checked by the caller). Over the allowance the upload stops at once
    /// with RESOURCE_EXHAUSTED and nothing is kept.
    pub(crate) async fn upload(
        &self,
        caller: &Caller,
        file: FileInfo,
        chunks: impl Stream<Item = Result<Bytes, Error>>,
    ) -> Result<Attachment, Error> {
        let allowance = self.allowance(&caller.user_id).await?;
        self.store_file(&caller.user_id, file, chunks, allowance)
            .await
    }

    async fn store_file(
        &self,
        uploader_id: &str,
        file: FileInfo,
        chunks: impl Stream<Item = Result<Bytes, Error>>,
        allowance: Allowance,
    ) -> Result<Attachment, Error> {
        let id = new_id();
        let mut writer = self.blobs.writer(file_key(&id));
        let mut ingest = Ingest::new(allowance);
        let mut chunks = std::pin::pin!(chunks);
        let received: Result<(), Error> = async {
            while let Some(chunk) = chunks.next().await {
                let chunk = chunk?;
                ingest.take(&chunk)?;
                writer.write(chunk).await?;
            }
            Ok(())
        }
        .await;
        if let Err(err) = received {
            writer.abort().await;
            return Err(err);
        }
        writer.finish().await?;
        let ingested = ingest.finish();
        let content_type = content_type(ingested.sniffed, file.declared_type.as_deref());
        let (width, height, thumbnail_type) = match ingested.spool {
            Some(spool) if is_thumbnailable(&content_type) => self.thumbnail(&id, spool).await,
            _ => (0, 0, None),
        };
        let attachment = Attachment {
            id,
            filename: file.filename,
            content_type,
            size: ingested.size,
            sha256: ingested.sha256,
            uploader_id: uploader_id.to_owned(),
            created_at: now_millis(),
            width,
            height,
            thumbnail_type,
        };
        if let Err(err) = self.store.insert(&attachment).await {
            self.remove_bytes(&attachment).await;
            return Err(err);
        }
        metrics::counter!("parley_media_uploaded_bytes_total").increment(attachment.size);
        Ok(attachment)
    }

    /// Dimensions and a stored thumbnail for the image in `spool`, or
    /// zeros and none when it is not a decodable image within bounds (it
    /// is then a plain file).
    async fn thumbnail(&self, id: &str, mut spool: std::fs::File) -> (u32, u32, Option<String>) {
        let Ok(_permit) = self.thumbnailing.clone().acquire_owned().await else {
            return (0, 0, None);
        };
        let started = std::time::Instant::now();
        let inspected = tokio::task::spawn_blocking(move || images::inspect(&mut spool)).await;
        metrics::histogram!("parley_media_thumbnail_seconds")
            .record(started.elapsed().as_secs_f64());
        match inspected {
            Ok(Ok(image)) => {
                match self
                    .blobs
                    .put(&thumbnail_key(id), Bytes::from(image.thumbnail))
                    .await
                {
                    Ok(()) => (
                        image.width,
                        image.height,
                        Some(image.thumbnail_type.to_owned()),
                    ),
                    Err(err) => {
                        tracing::warn!(attachment = id, error = %err, "storing a thumbnail failed");
                        (image.width, image.height, None)
                    }
                }
            }
            Ok(Err(refused)) => {
                tracing::info!(attachment = id, reason = %refused, "image stored as a plain file");
                (0, 0, None)
            }
            Err(err) => {
                tracing::error!(attachment = id, error = %err, "thumbnailing failed");
                (0, 0, None)
            }
        }
    }

    /// Removes an attachment's bytes, logging what cannot be removed.
    async fn remove_bytes(&self, attachment: &Attachment) {
        let mut keys = vec![file_key(&attachment.id)];
        if attachment.thumbnail_type.is_some() {
            keys.push(thumbnail_key(&attachment.id));
        }
        for key in keys {
            if let Err(err) = self.blobs.delete(&key).await {
                tracing::warn!(%key, error = %err, "could not remove an attachment's bytes");
            }
        }
    }

    /// An attachment's metadata: any signed-in caller holding its id.
    pub(crate) async fn get(&self, id: &str) -> Result<Attachment, Error> {
        self.store
            .get(id)
            .await?
            .ok_or(Error::NotFound("attachment"))
    }

    /// `length` bytes (0: up to the end) of an attachment or its thumbnail
    /// from `offset`. A range reaching past the end is cut at the end; one
    /// starting past it is OUT_OF_RANGE.
    pub(crate) async fn download(
        &self,
        id: &str,
        offset: u64,
        length: u64,
        thumbnail: bool,
    ) -> Result<Download, Error> {
        let attachment = self.get(id).await?;
        let (key, content_type, total) = if thumbnail {
            let Some(kind) = attachment.thumbnail_type.clone() else {
                return Err(Error::NotFound("thumbnail"));
            };
            let key = thumbnail_key(id);
            let total = self.blobs.size(&key).await?;
            (key, kind, total)
        } else {
            (
                file_key(id),
                attachment.content_type.clone(),
                attachment.size,
            )
        };
        if offset > total {
            return Err(Error::OutOfRange(format!(
                "offset {offset} is past the end ({total} bytes)"
            )));
        }
        let end = if length == 0 {
            total
        } else {
            offset.saturating_add(length).min(total)
        };
        let chunks = if end > offset {
            rechunk(self.blobs.read(&key, offset..end).await?)
        } else {
            futures_util::stream::empty().boxed()
        };
        Ok(Download {
            attachment,
            content_type,
            total,
            offset,
            length: end - offset,
            chunks,
        })
    }

    /// Deletes an attachment and its bytes: its uploader or an admin.
    pub(crate) async fn delete(&self, caller: &Caller, id: &str) -> Result<(), Error> {
        let attachment = self.get(id).await?;
        if attachment.uploader_id != caller.user_id && !caller.is_admin() {
            return Err(Error::PermissionDenied(
                "only the uploader or an admin may delete an attachment",
            ));
        }
        // Bytes first: a failure leaves the metadata, and the deletion can
        // be retried; once the row is gone nothing names the bytes.
        self.blobs.delete(&file_key(id)).await?;
        self.blobs.delete(&thumbnail_key(id)).await?;
        self.store.delete(id).await?;
        Ok(())
    }

    /// Begins a resumable upload of `size` bytes. An empty file completes
    /// at once.
    pub(crate) async fn begin(
        &self,
        caller: &Caller,
        file: FileInfo,
        size: u64,
    ) -> Result<Transfer, Error> {
        let allowance = self.allowance(&caller.user_id).await?;
        if size > allowance.bytes {
            return Err(allowance.exceeded(size));
        }
        if size == 0 {
            let empty = futures_util::stream::empty();
            return Ok(Transfer::Complete(
                self.store_file(&caller.user_id, file, empty, allowance)
                    .await?,
            ));
        }
        let upload = Upload {
            id: new_id(),
            uploader_id: caller.user_id.clone(),
            file,
            size,
            received: 0,
            attachment_id: None,
        };
        let now = now_millis();
        self.store
            .create_upload(&upload, now, self.expiry(now))
            .await?;
        Ok(Transfer::Open(upload))
    }

    fn expiry(&self, now: i64) -> i64 {
        now.saturating_add(i64::try_from(self.limits.upload_ttl.as_millis()).unwrap_or(i64::MAX))
    }

    /// Where the caller's upload stands. Someone else's upload is
    /// NOT_FOUND, as an unknown one is.
    pub(crate) async fn resume(&self, caller: &Caller, upload_id: &str) -> Result<Transfer, Error> {
        let upload = self
            .store
            .upload(upload_id, now_millis())
            .await?
            .filter(|upload| upload.uploader_id == caller.user_id)
            .ok_or(Error::NotFound("upload"))?;
        match &upload.attachment_id {
            Some(id) => Ok(Transfer::Complete(self.get(id).await?)),
            // Every byte arrived but the attachment was never made (the
            // process stopped in between): make it now.
            None if upload.received == upload.size => self.complete(upload).await,
            None => Ok(Transfer::Open(upload)),
        }
    }

    /// Stores `data` at `offset` of an open upload, which must be exactly
    /// where it stands; the last part completes it.
    pub(crate) async fn append(
        &self,
        upload: Upload,
        offset: u64,
        data: Bytes,
    ) -> Result<Transfer, Error> {
        if offset != upload.received {
            return Err(Error::invalid(
                "offset",
                format!("the upload stands at {}", upload.received),
            ));
        }
        if data.is_empty() {
            return Err(Error::invalid("data", "is empty"));
        }
        let end = offset + data.len() as u64;
        if end > upload.size {
            return Err(Error::invalid(
                "data",
                format!("goes past the declared size of {} bytes", upload.size),
            ));
        }
        let key = part_key(&upload.id, offset);
        self.blobs.put(&key, data).await?;
        let part = Part {
            offset,
            size: end - offset,
            key: key.to_string(),
        };
        if !self
            .store
            .advance_upload(&upload.id, &part, self.expiry(now_millis()))
            .await?
        {
            // Another stream moved it, or it expired: the client resumes.
            if let Err(err) = self.blobs.delete(&key).await {
                tracing::debug!(%key, error = %err, "could not remove a refused part");
            }
            return Err(Error::invalid(
                "offset",
                "the upload moved on or expired; resume it to learn where it stands",
            ));
        }
        let upload = Upload {
            received: end,
            ..upload
        };
        if end == upload.size {
            self.complete(upload).await
        } else {
            Ok(Transfer::Open(upload))
        }
    }

    /// Makes the attachment of an upload whose bytes have all arrived, by
    /// streaming its parts in order through the same path as any upload.
    async fn complete(&self, upload: Upload) -> Result<Transfer, Error> {
        let parts = self.store.parts(&upload.id).await?;
        let mut expected = 0;
        for part in &parts {
            if part.offset != expected {
                return Err(Error::Internal(anyhow::anyhow!(
                    "upload {} has a part at {} where {} was expected",
                    upload.id,
                    part.offset,
                    expected
                )));
            }
            expected += part.size;
        }
        if expected != upload.size {
            return Err(Error::Internal(anyhow::anyhow!(
                "upload {} has {expected} of {} bytes in its parts",
                upload.id,
                upload.size
            )));
        }
        let blobs = self.blobs.clone();
        let bytes = futures_util::stream::iter(parts)
            .then(move |part| {
                let blobs = blobs.clone();
                async move {
                    let key = Path::from(part.key.as_str());
                    Ok::<_, Error>(blobs.read(&key, 0..part.size).await?.map_err(Error::from))
                }
            })
            .try_flatten()
            .boxed();
        // The upload's size was checked against the allowance when it
        // began, and reserved in the quota since.
        let allowance = Allowance {
            bytes: upload.size,
            by: Limit::MaxBytes,
        };
        let attachment = self
            .store_file(&upload.uploader_id, upload.file.clone(), bytes, allowance)
            .await?;
        self.store
            .complete_upload(&upload.id, &attachment.id)
            .await?;
        self.store.delete_parts(&upload.id).await?;
        if let Err(err) = self.blobs.delete_all(&upload_prefix(&upload.id)).await {
            tracing::warn!(upload = upload.id, error = %err, "could not remove a finished upload's parts");
        }
        Ok(Transfer::Complete(attachment))
    }

    /// Removes expired uploads and their parts, every `every`, until
    /// `shutdown`. Every replica runs it; removing twice is harmless.
    pub(crate) async fn expire_uploads(self, every: Duration, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = shutdown.cancelled() => return,
            }
            if let Err(err) = self.expire_once().await {
                tracing::warn!(error = %err, "expiring uploads failed; trying again later");
            }
        }
    }

    /// One pass of `expire_uploads`; the number of uploads removed.
    pub(crate) async fn expire_once(&self) -> Result<usize, Error> {
        let expired = self.store.expired_uploads(now_millis(), 100).await?;
        for id in &expired {
            self.blobs.delete_all(&upload_prefix(id)).await?;
            self.store.delete_upload(id).await?;
        }
        if !expired.is_empty() {
            tracing::info!(count = expired.len(), "expired uploads removed");
        }
        Ok(expired.len())
    }
}

/// Cuts a store's chunks (of any size) to at most `CHUNK_BYTES`.
fn rechunk(
    chunks: BoxStream<'static, Result<Bytes, object_store::Error>>,
) -> BoxStream<'static, Result<Bytes, Error>> {
    chunks
        .map_err(Error::from)
        .map_ok(|mut bytes| {
            let mut pieces = Vec::with_capacity(bytes.len().div_ceil(CHUNK_BYTES));
            while bytes.len() > CHUNK_BYTES {
                pieces.push(Ok(bytes.split_to(CHUNK_BYTES)));
            }
            pieces.push(Ok(bytes));
            futures_util::stream::iter(pieces)
        })
        .try_flatten()
        .boxed()
}
