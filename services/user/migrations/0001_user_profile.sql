-- Portable SQL: the same file runs on Postgres (in schema "users") and on
-- SQLite. Timestamps are Unix milliseconds; roles and metadata are JSON.
CREATE TABLE user_profile (
    user_id      TEXT   NOT NULL PRIMARY KEY,
    username     TEXT   NOT NULL,
    -- Lower-cased username: names are unique regardless of case.
    username_key TEXT   NOT NULL,
    display_name TEXT   NOT NULL,
    -- '' when none was given.
    email        TEXT   NOT NULL,
    -- Lower-cased email, NULL when none, so many users may have no email.
    email_key    TEXT,
    status       TEXT   NOT NULL,
    roles        TEXT   NOT NULL,
    metadata     TEXT   NOT NULL,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL,
    CONSTRAINT user_profile_username_key UNIQUE (username_key),
    CONSTRAINT user_profile_email_key UNIQUE (email_key)
);
