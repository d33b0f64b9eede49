//! The `attachment` and `upload` tables. Portable SQL, run on Postgres and
//! SQLite alike.

use parley_runtime::storage::{Database, timed};

use crate::{
    domain::{Attachment, FileInfo, signed},
    error::Error,
};

const ATTACHMENT_COLUMNS: &str = "attachment_id, uploader_id, filename, content_type, size, \
     sha256, width, height, thumbnail_type, created_at";

const UPLOAD_COLUMNS: &str =
    "upload_id, uploader_id, filename, declared_type, size, received, attachment_id";

/// Reads and writes attachment metadata and uploads. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct MediaStore {
    db: Database,
}

/// A resumable upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Upload {
    /// Random, unguessable.
    pub(crate) id: String,
    /// Who began it; only they may continue it.
    pub(crate) uploader_id: String,
    /// What was declared.
    pub(crate) file: FileInfo,
    /// The declared total.
    pub(crate) size: u64,
    /// Bytes stored so far.
    pub(crate) received: u64,
    /// The attachment, once complete.
    pub(crate) attachment_id: Option<String>,
}

/// A stored part of a resumable upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Part {
    /// Where it starts in the file.
    pub(crate) offset: u64,
    /// Bytes.
    pub(crate) size: u64,
    /// Its object's key.
    pub(crate) key: String,
}

#[derive(sqlx::FromRow)]
struct AttachmentRow {
    attachment_id: String,
    uploader_id: String,
    filename: String,
    content_type: String,
    size: i64,
    sha256: String,
    width: i64,
    height: i64,
    thumbnail_type: Option<String>,
    created_at: i64,
}

impl From<AttachmentRow> for Attachment {
    fn from(row: AttachmentRow) -> Self {
        Self {
            id: row.attachment_id,
            uploader_id: row.uploader_id,
            filename: row.filename,
            content_type: row.content_type,
            size: u64::try_from(row.size).unwrap_or(0),
            sha256: row.sha256,
            width: u32::try_from(row.width).unwrap_or(0),
            height: u32::try_from(row.height).unwrap_or(0),
            thumbnail_type: row.thumbnail_type,
            created_at: row.created_at,
        }
    }
}

#[derive(sqlx::FromRow)]
struct UploadRow {
    upload_id: String,
    uploader_id: String,
    filename: String,
    declared_type: Option<String>,
    size: i64,
    received: i64,
    attachment_id: Option<String>,
}

impl From<UploadRow> for Upload {
    fn from(row: UploadRow) -> Self {
        Self {
            id: row.upload_id,
            uploader_id: row.uploader_id,
            file: FileInfo {
                filename: row.filename,
                declared_type: row.declared_type,
            },
            size: u64::try_from(row.size).unwrap_or(0),
            received: u64::try_from(row.received).unwrap_or(0),
            attachment_id: row.attachment_id,
        }
    }
}

impl MediaStore {
    /// A store over `db`.
    pub(crate) fn new(db: Database) -> Self {
        Self { db }
    }

    /// Bytes `uploader_id` holds: stored attachments, and the declared
    /// sizes of uploads still open (so many open uploads cannot get round
    /// the quota).
    pub(crate) async fn used_bytes(&self, uploader_id: &str) -> Result<u64, Error> {
        // SUM over BIGINT is NUMERIC on Postgres, which the Any driver
        // cannot read: cast it back.
        let used: i64 = timed(
            "media_used_bytes",
            sqlx::query_scalar(
                "SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM \
                 (SELECT size FROM attachment WHERE uploader_id = $1 \
                  UNION ALL \
                  SELECT size FROM upload WHERE uploader_id = $1 AND attachment_id IS NULL) AS held",
            )
            .bind(uploader_id)
            .fetch_one(self.db.pool()),
        )
        .await?;
        Ok(u64::try_from(used).unwrap_or(0))
    }

    /// Stores a new attachment's metadata.
    pub(crate) async fn insert(&self, attachment: &Attachment) -> Result<(), Error> {
        timed(
            "media_insert_attachment",
            sqlx::query(&format!(
                "INSERT INTO attachment ({ATTACHMENT_COLUMNS}) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
            ))
            .bind(&attachment.id)
            .bind(&attachment.uploader_id)
            .bind(&attachment.filename)
            .bind(&attachment.content_type)
            .bind(signed(attachment.size))
            .bind(&attachment.sha256)
            .bind(i64::from(attachment.width))
            .bind(i64::from(attachment.height))
            .bind(attachment.thumbnail_type.as_deref())
            .bind(attachment.created_at)
            .execute(self.db.pool()),
        )
        .await?;
        Ok(())
    }

    /// One attachment, if it exists.
    pub(crate) async fn get(&self, id: &str) -> Result<Option<Attachment>, Error> {
        let row: Option<AttachmentRow> = timed(
            "media_get_attachment",
            sqlx::query_as(&format!(
                "SELECT {ATTACHMENT_COLUMNS} FROM attachment WHERE attachment_id = $1"
            ))
            .bind(id)
            .fetch_optional(self.db.pool()),
        )
        .await?;
        Ok(row.map(Attachment::from))
    }

    /// Deletes an attachment's metadata; false when it was not there.
    pub(crate) async fn delete(&self, id: &str) -> Result<bool, Error> {
        let done = timed(
            "media_delete_attachment",
            sqlx::query("DELETE FROM attachment WHERE attachment_id = $1")
                .bind(id)
                .execute(self.db.pool()),
        )
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Records a new resumable upload, open until `expires_at`.
    pub(crate) async fn create_upload(
        &self,
        upload: &Upload,
        now: i64,
        expires_at: i64,
    ) -> Result<(), Error> {
        timed(
            "media_create_upload",
            sqlx::query(&format!(
                "INSERT INTO upload ({UPLOAD_COLUMNS}, expires_at, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
            ))
            .bind(&upload.id)
            .bind(&upload.uploader_id)
            .bind(&upload.file.filename)
            .bind(upload.file.declared_type.as_deref())
            .bind(signed(upload.size))
            .bind(signed(upload.received))
            .bind(upload.attachment_id.as_deref())
            .bind(expires_at)
            .bind(now)
            .execute(self.db.pool()),
        )
        .await?;
        Ok(())
    }

    /// One upload, if it exists and has not expired.
    pub(crate) async fn upload(&self, id: &str, now: i64) -> Result<Option<Upload>, Error> {
        let row: Option<UploadRow> = timed(
            "media_get_upload",
            sqlx::query_as(&format!(
                "SELECT {UPLOAD_COLUMNS} FROM upload WHERE upload_id = $1 AND expires_at > $2"
            ))
            .bind(id)
            .bind(now)
            .fetch_optional(self.db.pool()),
        )
        .await?;
        Ok(row.map(Upload::from))
    }

    /// Moves an open upload from `part.offset` to the part's end, records
    /// the part, and keeps the upload until `expires_at`, in one
    /// transaction; false when the upload no longer stands at the part's
    /// offset (a second stream moved it, or it completed or expired).
    pub(crate) async fn advance_upload(
        &self,
        id: &str,
        part: &Part,
        expires_at: i64,
    ) -> Result<bool, Error> {
        let mut tx = self.db.begin_write().await?;
        let moved = timed(
            "media_advance_upload",
            sqlx::query(
                "UPDATE upload SET received = $3, expires_at = $4 \
                 WHERE upload_id = $1 AND received = $2 AND attachment_id IS NULL",
            )
            .bind(id)
            .bind(signed(part.offset))
            .bind(signed(part.offset + part.size))
            .bind(expires_at)
            .execute(&mut *tx),
        )
        .await?;
        if moved.rows_affected() == 0 {
            return Ok(false);
        }
        timed(
            "media_insert_part",
            sqlx::query(
                "INSERT INTO upload_part (upload_id, part_offset, size, part_key) \
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(id)
            .bind(signed(part.offset))
            .bind(signed(part.size))
            .bind(&part.key)
            .execute(&mut *tx),
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// An upload's recorded parts, in order.
    pub(crate) async fn parts(&self, id: &str) -> Result<Vec<Part>, Error> {
        let rows: Vec<(i64, i64, String)> = timed(
            "media_upload_parts",
            sqlx::query_as(
                "SELECT part_offset, size, part_key FROM upload_part \
                 WHERE upload_id = $1 ORDER BY part_offset",
            )
            .bind(id)
            .fetch_all(self.db.pool()),
        )
        .await?;
        Ok(rows
            .into_iter()
            .map(|(offset, size, key)| Part {
                offset: u64::try_from(offset).unwrap_or(0),
                size: u64::try_from(size).unwrap_or(0),
                key,
            })
            .collect())
    }

    /// Marks an upload complete with its attachment.
    pub(crate) async fn complete_upload(&self, id: &str, attachment_id: &str) -> Result<(), Error> {
        timed(
            "media_complete_upload",
            sqlx::query("UPDATE upload SET attachment_id = $2 WHERE upload_id = $1")
                .bind(id)
                .bind(attachment_id)
                .execute(self.db.pool()),
        )
        .await?;
        Ok(())
    }

    /// Up to `limit` uploads expired by `now`.
    pub(crate) async fn expired_uploads(&self, now: i64, limit: i64) -> Result<Vec<String>, Error> {
        Ok(timed(
            "media_expired_uploads",
            sqlx::query_scalar(
                "SELECT upload_id FROM upload WHERE expires_at <= $1 ORDER BY expires_at LIMIT $2",
            )
            .bind(now)
            .bind(limit)
            .fetch_all(self.db.pool()),
        )
        .await?)
    }

    /// Forgets an upload and its parts.
    pub(crate) async fn delete_upload(&self, id: &str) -> Result<(), Error> {
        let mut tx = self.db.begin_write().await?;
        for statement in [
            "DELETE FROM upload WHERE upload_id = $1",
            "DELETE FROM upload_part WHERE upload_id = $1",
        ] {
            timed(
                "media_delete_upload",
                sqlx::query(statement).bind(id).execute(&mut *tx),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Forgets an upload's parts (once they are in its attachment).
    pub(crate) async fn delete_parts(&self, id: &str) -> Result<(), Error> {
        timed(
            "media_delete_parts",
            sqlx::query("DELETE FROM upload_part WHERE upload_id = $1")
                .bind(id)
                .execute(self.db.pool()),
        )
        .await?;
        Ok(())
    }
}
