-- Portable SQL, as 0001. API keys and revocations (README, "Bots and API
-- keys").

-- A key acting as its user within its scopes. The key is
-- `pk_<key_id>_<secret>`; only the secret's SHA-256 is kept.
CREATE TABLE api_key (
    key_id       TEXT   NOT NULL PRIMARY KEY,
    user_id      TEXT   NOT NULL,
    name         TEXT   NOT NULL,
    -- Space-separated scope names.
    scopes       TEXT   NOT NULL,
    secret_hash  TEXT   NOT NULL,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT,
    last_used_at BIGINT,
    revoked_at   BIGINT
);

CREATE INDEX api_key_user_id ON api_key (user_id);

-- Tokens to refuse before their expiry, published to every verifier by
-- WatchRevocations. A row is useless after `until_at` and is deleted then.
CREATE TABLE revocation (
    revocation_id TEXT   NOT NULL PRIMARY KEY,
    -- user, family, api_key
    kind          TEXT   NOT NULL,
    subject       TEXT   NOT NULL,
    revoked_at    BIGINT NOT NULL,
    until_at      BIGINT NOT NULL
);

CREATE INDEX revocation_revoked_at ON revocation (revoked_at);
