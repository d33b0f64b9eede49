//! Credentials and refresh-token families. Portable SQL, run on Postgres
//! and SQLite alike.

use parley_runtime::storage::{Database, now_millis, timed, unique_violation};

use crate::error::Error;

/// Reads and writes credentials and refresh tokens. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AuthStore {
    db: Database,
}

/// A stored credential.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Credential {
    /// The user's id.
    pub user_id: String,
    /// Argon2id PHC string.
    pub password_hash: String,
}

/// A refresh token's state, found by its hash.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RefreshTokenState {
    /// The family it belongs to.
    pub family_id: String,
    /// The family's user.
    pub user_id: String,
    /// Expiry, Unix milliseconds.
    pub expires_at: i64,
    /// When it was exchanged, if it was.
    pub spent_at: Option<i64>,
    /// When its family was revoked, if it was.
    pub revoked_at: Option<i64>,
}

/// Why a family is revoked.
#[derive(Debug, Clone, Copy)]
pub enum Revocation {
    /// The user logged out.
    Logout,
    /// A spent token was presented again: the family is compromised.
    Reuse,
}

impl Revocation {
    fn as_str(self) -> &'static str {
        match self {
            Self::Logout => "logout",
            Self::Reuse => "reuse",
        }
    }
}

impl AuthStore {
    /// A store over `db`, already migrated.
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    /// Stores a user's credential.
    ///
    /// # Errors
    /// ALREADY_EXISTS when a credential for the username exists.
    pub async fn insert_credential(
        &self,
        user_id: &str,
        username: &str,
        password_hash: &str,
    ) -> Result<(), Error> {
        let now = now_millis();
        let query = sqlx::query(
            "INSERT INTO credential (user_id, username_key, password_hash, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $4)",
        )
        .bind(user_id)
        .bind(username.to_lowercase())
        .bind(password_hash)
        .bind(now);
        timed("insert_credential", query.execute(self.db.pool()))
            .await
            .map_err(|err| match unique_violation(&err) {
                Some(_) => Error::UsernameTaken,
                None => Error::Database(err),
            })?;
        Ok(())
    }

    /// The credential for `username`, compared without regard to case.
    ///
    /// # Errors
    /// Database failures.
    pub async fn credential_by_username(
        &self,
        username: &str,
    ) -> Result<Option<Credential>, Error> {
        let query = sqlx::query_as::<_, Credential>(
            "SELECT user_id, password_hash FROM credential WHERE username_key = $1",
        )
        .bind(username.to_lowercase());
        Ok(timed("get_credential", query.fetch_optional(self.db.pool())).await?)
    }

    /// Starts a token family with its first refresh token; returns the
    /// family's id.
    ///
    /// # Errors
    /// Database failures.
    pub async fn start_family(
        &self,
        user_id: &str,
        token_hash: &str,
        expires_at: i64,
    ) -> Result<String, Error> {
        let now = now_millis();
        let family_id = uuid::Uuid::now_v7().to_string();
        let mut tx = self.db.begin_write().await?;
        sqlx::query(
            "INSERT INTO refresh_token_family (family_id, user_id, created_at) VALUES ($1, $2, $3)",
        )
        .bind(&family_id)
        .bind(user_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO refresh_token (token_hash, family_id, issued_at, expires_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(token_hash)
        .bind(&family_id)
        .bind(now)
        .bind(expires_at)
        .execute(&mut *tx)
        .await?;
        timed("start_token_family", tx.commit()).await?;
        Ok(family_id)
    }

    /// The state of the refresh token with this hash.
    ///
    /// # Errors
    /// Database failures.
    pub async fn refresh_token(
        &self,
        token_hash: &str,
    ) -> Result<Option<RefreshTokenState>, Error> {
        let query = sqlx::query_as::<_, RefreshTokenState>(
            "SELECT t.family_id, f.user_id, t.expires_at, t.spent_at, f.revoked_at \
             FROM refresh_token t JOIN refresh_token_family f ON f.family_id = t.family_id \
             WHERE t.token_hash = $1",
        )
        .bind(token_hash);
        Ok(timed("get_refresh_token", query.fetch_optional(self.db.pool())).await?)
    }

    /// Spends `old_hash` and issues `new_hash` in the same family, in one
    /// transaction. Returns false, changing nothing, when `old_hash` was
    /// already spent: someone else exchanged it first.
    ///
    /// # Errors
    /// Database failures.
    pub async fn rotate(
        &self,
        old_hash: &str,
        family_id: &str,
        new_hash: &str,
        expires_at: i64,
    ) -> Result<bool, Error> {
        let now = now_millis();
        let mut tx = self.db.begin_write().await?;
        let spent = sqlx::query(
            "UPDATE refresh_token SET spent_at = $2 WHERE token_hash = $1 AND spent_at IS NULL",
        )
        .bind(old_hash)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if spent.rows_affected() != 1 {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO refresh_token (token_hash, family_id, issued_at, expires_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(new_hash)
        .bind(family_id)
        .bind(now)
        .bind(expires_at)
        .execute(&mut *tx)
        .await?;
        timed("rotate_refresh_token", tx.commit()).await?;
        Ok(true)
    }

    /// Deletes a user's credential, API keys and every refresh token
    /// family of theirs (their tokens go with them), in one transaction.
    ///
    /// # Errors
    /// Database failures.
    pub async fn delete_credentials(&self, user_id: &str) -> Result<(), Error> {
        let mut tx = self.db.begin_write().await?;
        // Tokens first: foreign keys are not relied on to cascade.
        sqlx::query(
            "DELETE FROM refresh_token WHERE family_id IN \
             (SELECT family_id FROM refresh_token_family WHERE user_id = $1)",
        )
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
        for table in ["refresh_token_family", "credential", "api_key"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE user_id = $1"))
                .bind(user_id)
                .execute(&mut *tx)
                .await?;
        }
        timed("delete_credentials", tx.commit()).await?;
        Ok(())
    }

    /// Revokes a family; revoking twice keeps the first reason.
    ///
    /// # Errors
    /// Database failures.
    pub async fn revoke_family(&self, family_id: &str, why: Revocation) -> Result<(), Error> {
        let query = sqlx::query(
            "UPDATE refresh_token_family SET revoked_at = $2, revoked_reason = $3 \
             WHERE family_id = $1 AND revoked_at IS NULL",
        )
        .bind(family_id)
        .bind(now_millis())
        .bind(why.as_str());
        timed("revoke_token_family", query.execute(self.db.pool())).await?;
        Ok(())
    }
}

/// A stored API key, without anything that would let it be used.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ApiKeyRow {
    /// Its id.
    pub key_id: String,
    /// The user it acts as.
    pub user_id: String,
    /// Its label.
    pub name: String,
    /// Space-separated scopes.
    pub scopes: String,
    /// SHA-256 of the secret, base64url.
    pub secret_hash: String,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Unix milliseconds; `None`: never.
    pub expires_at: Option<i64>,
    /// Unix milliseconds.
    pub last_used_at: Option<i64>,
    /// Unix milliseconds.
    pub revoked_at: Option<i64>,
}

/// A stored revocation.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RevocationRow {
    /// Its id (UUIDv7).
    pub revocation_id: String,
    /// `user`, `family` or `api_key`.
    pub kind: String,
    /// The user, family or key id.
    pub subject: String,
    /// Unix milliseconds.
    pub revoked_at: i64,
    /// Unix milliseconds.
    pub until_at: i64,
}

const API_KEY_COLUMNS: &str = "key_id, user_id, name, scopes, secret_hash, created_at, \
     expires_at, last_used_at, revoked_at";
const REVOCATION_COLUMNS: &str = "revocation_id, kind, subject, revoked_at, until_at";

impl AuthStore {
    /// Stores a new key.
    ///
    /// # Errors
    /// Database failures.
    pub async fn insert_api_key(&self, key: &ApiKeyRow) -> Result<(), Error> {
        let sql = format!(
            "INSERT INTO api_key ({API_KEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        );
        let query = sqlx::query(&sql)
            .bind(&key.key_id)
            .bind(&key.user_id)
            .bind(&key.name)
            .bind(&key.scopes)
            .bind(&key.secret_hash)
            .bind(key.created_at)
            .bind(key.expires_at)
            .bind(key.last_used_at)
            .bind(key.revoked_at);
        timed("insert_api_key", query.execute(self.db.pool())).await?;
        Ok(())
    }

    /// The key with `key_id`, revoked or not.
    ///
    /// # Errors
    /// Database failures.
    pub async fn api_key(&self, key_id: &str) -> Result<Option<ApiKeyRow>, Error> {
        let sql = format!("SELECT {API_KEY_COLUMNS} FROM api_key WHERE key_id = $1");
        let query = sqlx::query_as::<_, ApiKeyRow>(&sql).bind(key_id);
        Ok(timed("get_api_key", query.fetch_optional(self.db.pool())).await?)
    }

    /// A user's keys that are not revoked, newest first.
    ///
    /// # Errors
    /// Database failures.
    pub async fn api_keys_of(&self, user_id: &str) -> Result<Vec<ApiKeyRow>, Error> {
        let sql = format!(
            "SELECT {API_KEY_COLUMNS} FROM api_key WHERE user_id = $1 AND revoked_at IS NULL \
             ORDER BY created_at DESC, key_id DESC"
        );
        let query = sqlx::query_as::<_, ApiKeyRow>(&sql).bind(user_id);
        Ok(timed("list_api_keys", query.fetch_all(self.db.pool())).await?)
    }

    /// How many keys a user has that are not revoked.
    ///
    /// # Errors
    /// Database failures.
    pub async fn count_api_keys(&self, user_id: &str) -> Result<i64, Error> {
        let query = sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM api_key WHERE user_id = $1 AND revoked_at IS NULL",
        )
        .bind(user_id);
        Ok(timed("count_api_keys", query.fetch_one(self.db.pool())).await?)
    }

    /// Marks a key revoked and records the revocation, in one transaction.
    /// Returns false when it was already revoked.
    ///
    /// # Errors
    /// Database failures.
    pub async fn revoke_api_key(
        &self,
        key_id: &str,
        revocation: &RevocationRow,
    ) -> Result<bool, Error> {
        let mut tx = self.db.begin_write().await?;
        let done = sqlx::query(
            "UPDATE api_key SET revoked_at = $2 WHERE key_id = $1 AND revoked_at IS NULL",
        )
        .bind(key_id)
        .bind(revocation.revoked_at)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Ok(false);
        }
        insert_revocation(&mut tx, revocation).await?;
        timed("revoke_api_key", tx.commit()).await?;
        Ok(true)
    }

    /// Notes that a key was exchanged now.
    ///
    /// # Errors
    /// Database failures.
    pub async fn touch_api_key(&self, key_id: &str, now: i64) -> Result<(), Error> {
        let query = sqlx::query("UPDATE api_key SET last_used_at = $2 WHERE key_id = $1")
            .bind(key_id)
            .bind(now);
        timed("touch_api_key", query.execute(self.db.pool())).await?;
        Ok(())
    }

    /// Records a revocation.
    ///
    /// # Errors
    /// Database failures.
    pub async fn insert_revocation(&self, revocation: &RevocationRow) -> Result<(), Error> {
        let mut tx = self.db.begin_write().await?;
        insert_revocation(&mut tx, revocation).await?;
        timed("insert_revocation", tx.commit()).await?;
        Ok(())
    }

    /// Revocations recorded after `since` (Unix milliseconds) and still
    /// in force at `now`, oldest first.
    ///
    /// # Errors
    /// Database failures.
    pub async fn revocations_since(
        &self,
        since: i64,
        now: i64,
    ) -> Result<Vec<RevocationRow>, Error> {
        let sql = format!(
            "SELECT {REVOCATION_COLUMNS} FROM revocation WHERE revoked_at > $1 AND until_at >= $2 \
             ORDER BY revoked_at"
        );
        let query = sqlx::query_as::<_, RevocationRow>(&sql)
            .bind(since)
            .bind(now);
        Ok(timed("list_revocations", query.fetch_all(self.db.pool())).await?)
    }

    /// Deletes revocations that ran out before `now`.
    ///
    /// # Errors
    /// Database failures.
    pub async fn forget_revocations(&self, now: i64) -> Result<u64, Error> {
        let query = sqlx::query("DELETE FROM revocation WHERE until_at < $1").bind(now);
        Ok(timed("forget_revocations", query.execute(self.db.pool()))
            .await?
            .rows_affected())
    }
}

async fn insert_revocation(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    revocation: &RevocationRow,
) -> Result<(), Error> {
    let sql = format!("INSERT INTO revocation ({REVOCATION_COLUMNS}) VALUES ($1, $2, $3, $4, $5)");
    sqlx::query(&sql)
        .bind(&revocation.revocation_id)
        .bind(&revocation.kind)
        .bind(&revocation.subject)
        .bind(revocation.revoked_at)
        .bind(revocation.until_at)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
