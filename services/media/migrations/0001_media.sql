-- Portable SQL: the same file runs on Postgres (in schema "media") and on
-- SQLite. Timestamps are Unix milliseconds. The bytes live in the object
-- store (MEDIA_STORE_URL); these tables say what they are.

-- A stored file: files/<attachment_id>, and thumbnails/<attachment_id>
-- when thumbnail_type is set.
CREATE TABLE attachment (
    attachment_id  TEXT   NOT NULL PRIMARY KEY,
    uploader_id    TEXT   NOT NULL,
    filename       TEXT   NOT NULL,
    content_type   TEXT   NOT NULL,
    size           BIGINT NOT NULL,
    sha256         TEXT   NOT NULL,
    width          BIGINT NOT NULL,
    height         BIGINT NOT NULL,
    thumbnail_type TEXT,
    created_at     BIGINT NOT NULL
);

-- The quota sums one uploader's sizes.
CREATE INDEX attachment_uploader ON attachment (uploader_id);

-- A resumable upload: its parts are listed in upload_part. Once
-- complete it names its attachment and stays until it expires, so a client
-- whose stream broke before the last answer can still learn the result.
CREATE TABLE upload (
    upload_id     TEXT   NOT NULL PRIMARY KEY,
    uploader_id   TEXT   NOT NULL,
    filename      TEXT   NOT NULL,
    declared_type TEXT,
    size          BIGINT NOT NULL,
    received      BIGINT NOT NULL,
    attachment_id TEXT,
    expires_at    BIGINT NOT NULL,
    created_at    BIGINT NOT NULL
);

CREATE INDEX upload_expires ON upload (expires_at);
CREATE INDEX upload_uploader ON upload (uploader_id);

-- The stored parts of a resumable upload, in order. A part is recorded in
-- the same transaction that moves its upload's `received`, so only parts
-- on the chain are listed; parts a losing concurrent stream wrote (each
-- part has a key of its own) are removed with the upload's folder.
CREATE TABLE upload_part (
    upload_id   TEXT   NOT NULL,
    part_offset BIGINT NOT NULL,
    size        BIGINT NOT NULL,
    part_key    TEXT   NOT NULL,
    PRIMARY KEY (upload_id, part_offset)
);
