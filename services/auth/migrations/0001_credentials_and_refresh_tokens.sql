-- Portable SQL: the same file runs on Postgres (in schema "auth") and on
-- SQLite. Timestamps are Unix milliseconds.

-- A user's password. The profile itself lives in the user service.
CREATE TABLE credential (
    user_id       TEXT   NOT NULL PRIMARY KEY,
    -- Lower-cased username, to find the credential at login.
    username_key  TEXT   NOT NULL,
    -- Argon2id PHC string: algorithm, parameters, salt and hash.
    password_hash TEXT   NOT NULL,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL,
    CONSTRAINT credential_username_key UNIQUE (username_key)
);

-- Every refresh token descending from one login. Reusing a spent token
-- revokes the whole family.
CREATE TABLE refresh_token_family (
    family_id      TEXT   NOT NULL PRIMARY KEY,
    user_id        TEXT   NOT NULL,
    created_at     BIGINT NOT NULL,
    revoked_at     BIGINT,
    -- logout, reuse
    revoked_reason TEXT
);

CREATE TABLE refresh_token (
    -- SHA-256 of the token, hex: the token itself is never stored.
    token_hash TEXT   NOT NULL PRIMARY KEY,
    family_id  TEXT   NOT NULL REFERENCES refresh_token_family (family_id) ON DELETE CASCADE,
    issued_at  BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    -- Set when the token is exchanged; a second exchange is a reuse.
    spent_at   BIGINT
);

CREATE INDEX refresh_token_family_id ON refresh_token (family_id);
CREATE INDEX refresh_token_family_user_id ON refresh_token_family (user_id);
