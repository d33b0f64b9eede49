//! Credentials and refresh-token families. Portable SQL, run on Postgres
//! and SQLite alike.

use parley_runtime::storage::{Database, now_millis, timed, unique_violation};
use sqlx::Acquire as _;

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

    /// Starts a token family with its first refresh token.
    ///
    /// # Errors
    /// Database failures.
    pub async fn start_family(
        &self,
        user_id: &str,
        token_hash: &str,
        expires_at: i64,
    ) -> Result<(), Error> {
        let now = now_millis();
        let family_id = uuid::Uuid::now_v7().to_string();
        let mut tx = self.db.pool().begin().await?;
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
        Ok(())
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
        let mut connection = self.db.pool().acquire().await?;
        let mut tx = connection.begin().await?;
        // The write comes first, so on SQLite the transaction takes the
        // write lock at once instead of upgrading a read lock later.
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

    /// Deletes a user's credential and every refresh token family of
    /// theirs (their tokens go with them), in one transaction.
    ///
    /// # Errors
    /// Database failures.
    pub async fn delete_credentials(&self, user_id: &str) -> Result<(), Error> {
        let mut tx = self.db.pool().begin().await?;
        // Tokens first: foreign keys are not relied on to cascade.
        sqlx::query(
            "DELETE FROM refresh_token WHERE family_id IN \
             (SELECT family_id FROM refresh_token_family WHERE user_id = $1)",
        )
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
        for table in ["refresh_token_family", "credential"] {
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
