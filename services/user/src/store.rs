//! The `user_profile` table. Portable SQL, run on Postgres and SQLite alike.

use std::collections::HashMap;

use anyhow::Context as _;
use parley_runtime::storage::{Database, now_millis, timed, unique_violation};

use crate::{
    domain::{NewUser, User, UserStatus},
    error::Error,
};

const COLUMNS: &str = "user_id, username, display_name, email, status, roles, metadata, \
     created_at, updated_at, owner_id";

/// Reads and writes users. Cheap to clone.
#[derive(Debug, Clone)]
pub struct UserStore {
    db: Database,
}

#[derive(sqlx::FromRow)]
struct UserRow {
    user_id: String,
    username: String,
    display_name: String,
    email: String,
    status: String,
    roles: String,
    metadata: String,
    created_at: i64,
    updated_at: i64,
    owner_id: Option<String>,
}

impl TryFrom<UserRow> for User {
    type Error = Error;

    fn try_from(row: UserRow) -> Result<Self, Error> {
        Ok(Self {
            status: UserStatus::from_stored(&row.status).with_context(|| {
                format!("user {} has unknown status {:?}", row.user_id, row.status)
            })?,
            roles: serde_json::from_str(&row.roles)
                .with_context(|| format!("user {} has malformed roles", row.user_id))?,
            metadata: serde_json::from_str::<HashMap<String, String>>(&row.metadata)
                .with_context(|| format!("user {} has malformed metadata", row.user_id))?,
            id: row.user_id,
            username: row.username,
            display_name: row.display_name,
            email: row.email,
            created_at: row.created_at,
            updated_at: row.updated_at,
            owner_id: row.owner_id,
        })
    }
}

/// Maps a unique violation to the field it concerns.
fn conflict(err: sqlx::Error) -> Error {
    match unique_violation(&err) {
        Some(constraint) if constraint.contains("username_key") => {
            Error::AlreadyExists { field: "username" }
        }
        Some(constraint) if constraint.contains("email_key") => {
            Error::AlreadyExists { field: "email" }
        }
        _ => Error::Database(err),
    }
}

fn email_key(email: &str) -> Option<String> {
    (!email.is_empty()).then(|| email.to_lowercase())
}

fn json<T: serde::Serialize>(value: &T) -> Result<String, Error> {
    Ok(serde_json::to_string(value).context("encoding a JSON column")?)
}

/// Escapes `%`, `_` and `\` so user input matches literally in `LIKE`.
fn like_pattern(filter: &str) -> String {
    let mut pattern = String::with_capacity(filter.len() + 2);
    pattern.push('%');
    for c in filter.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// The filter of `ListUsers` for callers who see every email (admins and
/// services). Each column has a trigram index on Postgres
/// ([`SEARCH_INDEXES`]), so a substring search reads the index, not the
/// table.
const FILTER_WITH_EMAILS: &str = "(username_key LIKE $1 ESCAPE '\\' \
     OR lower(display_name) LIKE $1 ESCAPE '\\' OR email_key LIKE $1 ESCAPE '\\')";
/// The filter for everyone else: names only, so a hidden email cannot be
/// probed a substring at a time.
const FILTER_NAMES: &str =
    "(username_key LIKE $1 ESCAPE '\\' OR lower(display_name) LIKE $1 ESCAPE '\\')";

/// Most matches `ListUsers` counts for its `total`: counting stops there,
/// so a broad filter over a large directory costs a bounded read.
pub const MAX_COUNTED: i64 = 10_001;

/// Trigram indexes for `ListUsers`' substring filter, made after the
/// migrations on Postgres (SQLite scans, which suits a laptop's few
/// users). Where `pg_trgm` cannot be installed (no privilege), search
/// still works, by scanning. Replicas starting together queue on an
/// advisory lock instead of racing to create the same objects.
pub const SEARCH_INDEXES: &str = r"
DO $$
DECLARE trgm text;
BEGIN
  PERFORM pg_advisory_xact_lock(hashtext('parley-user-search-indexes'));
  BEGIN
    CREATE EXTENSION IF NOT EXISTS pg_trgm;
  EXCEPTION WHEN insufficient_privilege THEN
    RAISE WARNING 'pg_trgm cannot be installed here: user search scans the table';
  END;
  SELECT n.nspname INTO trgm FROM pg_extension e
    JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'pg_trgm';
  IF trgm IS NOT NULL THEN
    EXECUTE format('CREATE INDEX IF NOT EXISTS user_profile_username_trgm ON user_profile USING gin (username_key %I.gin_trgm_ops)', trgm);
    EXECUTE format('CREATE INDEX IF NOT EXISTS user_profile_display_trgm ON user_profile USING gin (lower(display_name) %I.gin_trgm_ops)', trgm);
    EXECUTE format('CREATE INDEX IF NOT EXISTS user_profile_email_trgm ON user_profile USING gin (email_key %I.gin_trgm_ops)', trgm);
  END IF;
END $$";

/// Which columns a filter searches: emails too only for callers who may
/// see them; `None` for no filter.
fn filter_sql(filter: &str, emails: bool) -> Option<&'static str> {
    if filter.is_empty() {
        None
    } else if emails {
        Some(FILTER_WITH_EMAILS)
    } else {
        Some(FILTER_NAMES)
    }
}

/// Where `ListUsers` starts: past a number of users, or after a username.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// Skip this many (bounded by the caller: OFFSET reads what it skips).
    Skip(i64),
    /// Keyset: usernames (lower-cased) after this one.
    After(String),
}

impl UserStore {
    /// A store over `db`, already migrated.
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    /// Stores a new user with a fresh id.
    ///
    /// # Errors
    /// ALREADY_EXISTS when the username or email is taken.
    pub async fn insert(&self, new: NewUser) -> Result<User, Error> {
        let now = now_millis();
        let user = User {
            id: uuid::Uuid::now_v7().to_string(),
            username: new.username,
            display_name: new.display_name,
            email: new.email,
            status: new.status,
            roles: new.roles,
            metadata: new.metadata,
            created_at: now,
            updated_at: now,
            owner_id: new.owner_id,
        };
        let sql = format!(
            "INSERT INTO user_profile ({COLUMNS}, username_key, email_key) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
        );
        let query = sqlx::query(&sql)
            .bind(&user.id)
            .bind(&user.username)
            .bind(&user.display_name)
            .bind(&user.email)
            .bind(user.status.as_str())
            .bind(json(&user.roles)?)
            .bind(json(&user.metadata)?)
            .bind(user.created_at)
            .bind(user.updated_at)
            .bind(&user.owner_id)
            .bind(user.username.to_lowercase())
            .bind(email_key(&user.email));
        timed("insert_user", query.execute(self.db.pool()))
            .await
            .map_err(conflict)?;
        Ok(user)
    }

    /// The user with `id`.
    ///
    /// # Errors
    /// NOT_FOUND when there is none.
    pub async fn get(&self, id: &str) -> Result<User, Error> {
        let sql = format!("SELECT {COLUMNS} FROM user_profile WHERE user_id = $1");
        let query = sqlx::query_as::<_, UserRow>(&sql).bind(id);
        timed("get_user", query.fetch_optional(self.db.pool()))
            .await?
            .ok_or_else(|| Error::NotFound(id.to_owned()))?
            .try_into()
    }

    /// Writes every changeable field of `user` back.
    ///
    /// # Errors
    /// NOT_FOUND when the user is gone; ALREADY_EXISTS when the new email is
    /// taken.
    pub async fn update(&self, mut user: User) -> Result<User, Error> {
        user.updated_at = now_millis();
        let query = sqlx::query(
            "UPDATE user_profile SET display_name = $2, email = $3, email_key = $4, status = $5, \
             roles = $6, metadata = $7, updated_at = $8 WHERE user_id = $1",
        )
        .bind(&user.id)
        .bind(&user.display_name)
        .bind(&user.email)
        .bind(email_key(&user.email))
        .bind(user.status.as_str())
        .bind(json(&user.roles)?)
        .bind(json(&user.metadata)?)
        .bind(user.updated_at);
        let done = timed("update_user", query.execute(self.db.pool()))
            .await
            .map_err(conflict)?;
        if done.rows_affected() == 0 {
            return Err(Error::NotFound(user.id));
        }
        Ok(user)
    }

    /// The bots of `owner_id`, by username.
    ///
    /// # Errors
    /// Database failures.
    pub async fn bots_of(&self, owner_id: &str) -> Result<Vec<User>, Error> {
        let sql = format!(
            "SELECT {COLUMNS} FROM user_profile WHERE owner_id = $1 ORDER BY username_key LIMIT 1000"
        );
        let query = sqlx::query_as::<_, UserRow>(&sql).bind(owner_id);
        timed("list_bots", query.fetch_all(self.db.pool()))
            .await?
            .into_iter()
            .map(User::try_from)
            .collect()
    }

    /// The user named `username`, compared without regard to case.
    ///
    /// # Errors
    /// NOT_FOUND when there is none.
    pub async fn get_by_username(&self, username: &str) -> Result<User, Error> {
        let sql = format!("SELECT {COLUMNS} FROM user_profile WHERE username_key = $1");
        let query = sqlx::query_as::<_, UserRow>(&sql).bind(username.to_lowercase());
        timed("get_user_by_username", query.fetch_optional(self.db.pool()))
            .await?
            .ok_or_else(|| Error::NotFound(username.to_owned()))?
            .try_into()
    }

    /// How many bots `owner_id` owns.
    ///
    /// # Errors
    /// Database failures.
    pub async fn count_bots(&self, owner_id: &str) -> Result<i64, Error> {
        let query =
            sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM user_profile WHERE owner_id = $1")
                .bind(owner_id);
        Ok(timed("count_bots", query.fetch_one(self.db.pool())).await?)
    }

    /// Deletes the user with `id`.
    ///
    /// # Errors
    /// NOT_FOUND when there is none.
    pub async fn delete(&self, id: &str) -> Result<(), Error> {
        let query = sqlx::query("DELETE FROM user_profile WHERE user_id = $1").bind(id);
        let done = timed("delete_user", query.execute(self.db.pool())).await?;
        if done.rows_affected() == 0 {
            return Err(Error::NotFound(id.to_owned()));
        }
        Ok(())
    }

    /// How many users match `filter` (in their emails too when `emails`),
    /// up to [`MAX_COUNTED`].
    ///
    /// # Errors
    /// Database failures.
    pub async fn count(&self, filter: &str, emails: bool) -> Result<i64, Error> {
        let sql = match filter_sql(filter, emails) {
            Some(filter) => format!(
                "SELECT COUNT(*) FROM (SELECT 1 FROM user_profile WHERE {filter} LIMIT {MAX_COUNTED}) AS matched"
            ),
            None => format!(
                "SELECT COUNT(*) FROM (SELECT 1 FROM user_profile LIMIT {MAX_COUNTED}) AS matched"
            ),
        };
        let query = sqlx::query_scalar::<_, i64>(&sql).bind(like_pattern(filter));
        Ok(timed("count_users", query.fetch_one(self.db.pool())).await?)
    }

    /// Up to `limit` users matching `filter`, in username order, from
    /// `start`.
    ///
    /// # Errors
    /// Database failures.
    pub async fn list(
        &self,
        filter: &str,
        emails: bool,
        start: &Start,
        limit: i64,
    ) -> Result<Vec<User>, Error> {
        let filter_sql = filter_sql(filter, emails).unwrap_or("$1 = $1");
        let (after, offset) = match start {
            Start::Skip(offset) => ("", *offset),
            Start::After(username) => (username.as_str(), 0),
        };
        let sql = format!(
            "SELECT {COLUMNS} FROM user_profile WHERE {filter_sql} AND username_key > $2 \
             ORDER BY username_key LIMIT $3 OFFSET $4"
        );
        let query = sqlx::query_as::<_, UserRow>(&sql)
            .bind(like_pattern(filter))
            .bind(after.to_lowercase())
            .bind(limit)
            .bind(offset);
        timed("list_users", query.fetch_all(self.db.pool()))
            .await?
            .into_iter()
            .map(User::try_from)
            .collect()
    }

    /// Makes [`SEARCH_INDEXES`] on Postgres.
    ///
    /// # Errors
    /// Database failures.
    pub async fn ensure_search_indexes(&self) -> Result<(), Error> {
        if self.db.kind() == parley_runtime::config::DatabaseKind::Postgres {
            timed(
                "search_indexes",
                sqlx::query(SEARCH_INDEXES).execute(self.db.pool()),
            )
            .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_patterns_match_literally() {
        assert_eq!(like_pattern("Ada"), "%ada%");
        assert_eq!(like_pattern("50%_off\\"), "%50\\%\\_off\\\\%");
    }
}
