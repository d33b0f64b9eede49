//! Where attachment bytes live: a folder or an S3-compatible bucket behind
//! `object_store`, under three key spaces: `files/<id>`, `thumbnails/<id>`
//! and `uploads/<upload id>/<part>` for resumable uploads in progress.
//!
//! Writes stream: a file is buffered only up to one part, then goes out as
//! a multipart upload with at most two parts in flight, so a transfer's
//! memory is bounded by a few parts whatever the file's size.

use std::{ops::Range, sync::Arc, time::Instant};

use anyhow::Context as _;
use bytes::Bytes;
use futures_util::{StreamExt as _, TryStreamExt as _, stream::BoxStream};
use object_store::{
    GetOptions, ObjectStore, ObjectStoreExt as _, PutPayload, WriteMultipart,
    local::LocalFileSystem, path::Path,
};

use crate::config::{MediaArgs, StoreUrl};

/// Multipart uploads in flight per file.
const PARTS_IN_FLIGHT: usize = 2;

/// The object store and how big its multipart parts are. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Blobs {
    store: Arc<dyn ObjectStore>,
    /// S3 refuses parts under 5 MiB (but the last); a folder takes any.
    part_bytes: usize,
}

impl Blobs {
    /// Opens the store `MEDIA_STORE_URL` names, creating a folder store's
    /// folder.
    ///
    /// # Errors
    /// When the folder cannot be created or the S3 settings are unusable.
    pub(crate) fn open(args: &MediaArgs) -> anyhow::Result<Self> {
        match &args.store_url {
            StoreUrl::File(folder) => {
                std::fs::create_dir_all(folder)
                    .with_context(|| format!("creating {}", folder.display()))?;
                let store = LocalFileSystem::new_with_prefix(folder)
                    .with_context(|| format!("using {} as the media store", folder.display()))?
                    // Removes the emptied folder of a finished upload.
                    .with_automatic_cleanup(true);
                Ok(Self {
                    store: Arc::new(store),
                    part_bytes: 1024 * 1024,
                })
            }
            StoreUrl::S3 { bucket, prefix } => Ok(Self {
                store: s3(args, bucket, prefix)?,
                part_bytes: 5 * 1024 * 1024,
            }),
        }
    }

    /// A writer of a new object at `key`.
    pub(crate) fn writer(&self, key: Path) -> BlobWriter {
        BlobWriter {
            blobs: self.clone(),
            key,
            state: WriterState::Buffering(Vec::new(), 0),
        }
    }

    /// Stores `bytes` at `key` in one request.
    pub(crate) async fn put(&self, key: &Path, bytes: Bytes) -> Result<(), object_store::Error> {
        timed("put", self.store.put(key, PutPayload::from_bytes(bytes))).await?;
        Ok(())
    }

    /// The bytes of `key` in `range`, as the store hands them out (chunks
    /// of any size). `range` must not be empty.
    pub(crate) async fn read(
        &self,
        key: &Path,
        range: Range<u64>,
    ) -> Result<BoxStream<'static, Result<Bytes, object_store::Error>>, object_store::Error> {
        let result = timed(
            "get",
            self.store
                .get_opts(key, GetOptions::new().with_range(Some(range))),
        )
        .await?;
        Ok(result.into_stream())
    }

    /// The size of the object at `key`.
    pub(crate) async fn size(&self, key: &Path) -> Result<u64, object_store::Error> {
        Ok(timed("head", self.store.head(key)).await?.size)
    }

    /// Deletes `key`; a key already gone is not an error.
    pub(crate) async fn delete(&self, key: &Path) -> Result<(), object_store::Error> {
        match timed("delete", self.store.delete(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(err) => Err(err),
        }
    }

    /// Deletes every key under `prefix`.
    pub(crate) async fn delete_all(&self, prefix: &Path) -> Result<(), object_store::Error> {
        let keys = self.store.list(Some(prefix)).map_ok(|meta| meta.location);
        let deleted = self.store.delete_stream(keys.boxed());
        timed("delete", async move {
            deleted
                .try_for_each(|_| async { Ok(()) })
                .await
                .or_else(|err| match err {
                    object_store::Error::NotFound { .. } => Ok(()),
                    err => Err(err),
                })
        })
        .await
    }
}

/// An S3-compatible bucket, under `prefix`.
#[cfg(feature = "s3")]
fn s3(args: &MediaArgs, bucket: &str, prefix: &str) -> anyhow::Result<Arc<dyn ObjectStore>> {
    use object_store::{aws::AmazonS3Builder, prefix::PrefixStore};
    use secrecy::ExposeSecret as _;

    // The AWS_* variables and instance roles apply first; the MEDIA_S3_*
    // settings override them.
    let mut builder = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_region(&args.s3_region);
    if let Some(endpoint) = &args.s3_endpoint {
        builder = builder
            .with_endpoint(endpoint)
            .with_allow_http(endpoint.starts_with("http://"));
    }
    if let Some(credentials) = args.s3_credentials()? {
        builder = builder
            .with_access_key_id(credentials.access_key_id.expose_secret())
            .with_secret_access_key(credentials.secret_access_key.expose_secret());
    }
    let s3: Arc<dyn ObjectStore> = Arc::new(
        builder
            .build()
            .with_context(|| format!("using s3://{bucket} as the media store"))?,
    );
    Ok(if prefix.is_empty() {
        s3
    } else {
        Arc::new(PrefixStore::new(s3, prefix))
    })
}

/// Without the `s3` feature only folders can be stores.
#[cfg(not(feature = "s3"))]
fn s3(_: &MediaArgs, bucket: &str, _: &str) -> anyhow::Result<Arc<dyn ObjectStore>> {
    anyhow::bail!("s3://{bucket}: this build of parley-media has no S3 support (feature `s3`)")
}

/// Times one store operation into `parley_media_store_seconds`.
async fn timed<T>(operation: &'static str, call: impl Future<Output = T>) -> T {
    let started = Instant::now();
    let result = call.await;
    metrics::histogram!("parley_media_store_seconds", "operation" => operation)
        .record(started.elapsed().as_secs_f64());
    result
}

/// The key of an attachment's bytes.
pub(crate) fn file_key(id: &str) -> Path {
    Path::from_iter(["files", id])
}

/// The key of an attachment's thumbnail.
pub(crate) fn thumbnail_key(id: &str) -> Path {
    Path::from_iter(["thumbnails", id])
}

/// Where a resumable upload's parts live.
pub(crate) fn upload_prefix(upload_id: &str) -> Path {
    Path::from_iter(["uploads", upload_id])
}

/// A fresh key for a part of a resumable upload starting at `offset`: each
/// write gets its own, so a losing concurrent stream can never overwrite a
/// recorded part.
pub(crate) fn part_key(upload_id: &str, offset: u64) -> Path {
    Path::from_iter([
        "uploads",
        upload_id,
        &format!("{offset:020}-{}", crate::domain::new_id()),
    ])
}

/// Writes one object from chunks as they come. Call `finish` to store it
/// or `abort` to drop what was sent; dropping it unfinished leaves an
/// unfinished multipart upload for the store's own expiry.
#[derive(Debug)]
pub(crate) struct BlobWriter {
    blobs: Blobs,
    key: Path,
    state: WriterState,
}

#[derive(Debug)]
enum WriterState {
    /// Less than a part so far: a small file goes out in one request.
    Buffering(Vec<Bytes>, usize),
    /// A part or more: a multipart upload.
    Multipart(WriteMultipart),
    /// Finished or aborted.
    Done,
}

impl BlobWriter {
    /// Adds a chunk, waiting while two parts are in flight.
    ///
    /// # Errors
    /// When the store fails; the writer should then be aborted.
    pub(crate) async fn write(&mut self, chunk: Bytes) -> Result<(), object_store::Error> {
        match &mut self.state {
            WriterState::Buffering(chunks, buffered) => {
                *buffered += chunk.len();
                chunks.push(chunk);
                if *buffered >= self.blobs.part_bytes {
                    let chunks = std::mem::take(chunks);
                    let upload =
                        timed("put_multipart", self.blobs.store.put_multipart(&self.key)).await?;
                    let mut multipart =
                        WriteMultipart::new_with_chunk_size(upload, self.blobs.part_bytes);
                    for chunk in chunks {
                        multipart.put(chunk);
                    }
                    self.state = WriterState::Multipart(multipart);
                }
                Ok(())
            }
            WriterState::Multipart(multipart) => {
                multipart.wait_for_capacity(PARTS_IN_FLIGHT).await?;
                multipart.put(chunk);
                Ok(())
            }
            WriterState::Done => Err(object_store::Error::Generic {
                store: "media",
                source: "write after finish".into(),
            }),
        }
    }

    /// Stores the object.
    ///
    /// # Errors
    /// When the store fails (a multipart upload is then aborted).
    pub(crate) async fn finish(mut self) -> Result<(), object_store::Error> {
        match std::mem::replace(&mut self.state, WriterState::Done) {
            WriterState::Buffering(chunks, _) => {
                let payload: PutPayload = chunks.into_iter().collect();
                timed("put", self.blobs.store.put(&self.key, payload)).await?;
                Ok(())
            }
            WriterState::Multipart(multipart) => {
                timed("put", multipart.finish()).await?;
                Ok(())
            }
            WriterState::Done => Ok(()),
        }
    }

    /// Drops what was written.
    pub(crate) async fn abort(mut self) {
        if let WriterState::Multipart(multipart) =
            std::mem::replace(&mut self.state, WriterState::Done)
            && let Err(err) = multipart.abort().await
        {
            tracing::warn!(key = %self.key, error = %err, "could not abort a multipart upload");
        }
    }
}
