-- Portable SQL: the same file runs on Postgres (in schema "chat") and on
-- SQLite. Timestamps are Unix milliseconds.
CREATE TABLE room (
    room_id       TEXT   NOT NULL PRIMARY KEY,
    name          TEXT   NOT NULL,
    -- 6-character join code; NULL for public rooms created by a join.
    short_code    TEXT,
    -- Argon2id hash of a private room's password; NULL for public rooms.
    password_hash TEXT,
    created_by    TEXT   NOT NULL,
    created_at    BIGINT NOT NULL,
    -- The seq of the newest message. Sends lock this row to take the next
    -- seqs, in the transaction that stores the messages.
    last_seq      BIGINT NOT NULL DEFAULT 0,
    CONSTRAINT room_short_code_key UNIQUE (short_code)
);

-- Who is a member of which room, until they leave.
CREATE TABLE room_member (
    room_id   TEXT   NOT NULL REFERENCES room (room_id) ON DELETE CASCADE,
    user_id   TEXT   NOT NULL,
    joined_at BIGINT NOT NULL,
    PRIMARY KEY (room_id, user_id)
);

-- The primary key serves history pages and `since_seq` replays: both are
-- range scans of one room's seqs, whatever the room's size.
CREATE TABLE message (
    room_id     TEXT   NOT NULL REFERENCES room (room_id) ON DELETE CASCADE,
    seq         BIGINT NOT NULL,
    message_id  TEXT   NOT NULL,
    sender_id   TEXT   NOT NULL,
    sender_name TEXT   NOT NULL,
    content     TEXT   NOT NULL,
    -- The sender's idempotency key; NULL when none was given (NULLs never
    -- collide in the unique index).
    client_id   TEXT,
    sent_at     BIGINT NOT NULL,
    PRIMARY KEY (room_id, seq)
);

CREATE UNIQUE INDEX message_client_key ON message (room_id, sender_id, client_id);
