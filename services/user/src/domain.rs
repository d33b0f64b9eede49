//! Users as the service understands them: parsed and validated once, at the
//! edge, so the store and handlers only ever see valid values.

use std::collections::{BTreeSet, HashMap};

use parley_proto::user::v1 as pb;
use parley_runtime::{storage::timestamp, token::USER_ROLE};

use crate::error::Error;

/// Longest display name, in characters.
pub const MAX_DISPLAY_NAME_CHARS: usize = 64;
/// Most metadata entries per user.
pub const MAX_METADATA_ENTRIES: usize = 32;
/// Longest metadata key, in bytes.
pub const MAX_METADATA_KEY_BYTES: usize = 64;
/// Longest metadata value, in bytes.
pub const MAX_METADATA_VALUE_BYTES: usize = 1024;
/// Most roles per user.
pub const MAX_ROLES: usize = 16;

/// Whether an account may be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserStatus {
    /// In use.
    Active,
    /// Dormant.
    Inactive,
    /// Barred by an administrator.
    Suspended,
}

impl UserStatus {
    /// The stored (and REST) spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "ACTIVE",
            Self::Inactive => "INACTIVE",
            Self::Suspended => "SUSPENDED",
        }
    }

    /// Reads the stored spelling.
    pub fn from_stored(value: &str) -> Option<Self> {
        match value {
            "ACTIVE" => Some(Self::Active),
            "INACTIVE" => Some(Self::Inactive),
            "SUSPENDED" => Some(Self::Suspended),
            _ => None,
        }
    }

    /// Reads the protobuf enum; `None` for UNSPECIFIED.
    ///
    /// # Errors
    /// INVALID_ARGUMENT naming `field` for an unknown value.
    pub fn from_proto(value: i32, field: &'static str) -> Result<Option<Self>, Error> {
        match pb::UserStatus::try_from(value) {
            Ok(pb::UserStatus::Unspecified) => Ok(None),
            Ok(pb::UserStatus::Active) => Ok(Some(Self::Active)),
            Ok(pb::UserStatus::Inactive) => Ok(Some(Self::Inactive)),
            Ok(pb::UserStatus::Suspended) => Ok(Some(Self::Suspended)),
            Err(_) => Err(Error::invalid(field, format!("unknown status {value}"))),
        }
    }

    fn to_proto(self) -> pb::UserStatus {
        match self {
            Self::Active => pb::UserStatus::Active,
            Self::Inactive => pb::UserStatus::Inactive,
            Self::Suspended => pb::UserStatus::Suspended,
        }
    }
}

/// A valid username: 3-32 characters of `[A-Za-z0-9_.-]`.
///
/// # Errors
/// INVALID_ARGUMENT naming `username`.
pub fn parse_username(value: &str) -> Result<String, Error> {
    let valid_chars = value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !(3..=32).contains(&value.len()) || !valid_chars {
        return Err(Error::invalid(
            "username",
            "must be 3-32 characters of letters, digits, `_`, `.` or `-`",
        ));
    }
    Ok(value.to_owned())
}

/// A valid display name; empty means the username.
///
/// # Errors
/// INVALID_ARGUMENT naming `display_name`.
pub fn parse_display_name(value: &str, username: &str) -> Result<String, Error> {
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Ok(username.to_owned());
    }
    if trimmed.chars().count() > MAX_DISPLAY_NAME_CHARS {
        return Err(Error::invalid(
            "display_name",
            format!("must be at most {MAX_DISPLAY_NAME_CHARS} characters"),
        ));
    }
    if trimmed.chars().any(char::is_control) {
        return Err(Error::invalid(
            "display_name",
            "must not contain control characters",
        ));
    }
    Ok(trimmed.to_owned())
}

/// A valid email address, or "" for none.
///
/// # Errors
/// INVALID_ARGUMENT naming `email`.
pub fn parse_email(value: &str) -> Result<String, Error> {
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    if trimmed.len() > 254 || !email_address::EmailAddress::is_valid(trimmed) {
        return Err(Error::invalid("email", "is not a valid email address"));
    }
    Ok(trimmed.to_owned())
}

/// Valid roles, deduplicated and sorted; `["user"]` when empty.
///
/// # Errors
/// INVALID_ARGUMENT naming `roles`.
pub fn parse_roles(roles: Vec<String>) -> Result<Vec<String>, Error> {
    if roles.is_empty() {
        return Ok(vec![USER_ROLE.to_owned()]);
    }
    if roles.len() > MAX_ROLES {
        return Err(Error::invalid(
            "roles",
            format!("at most {MAX_ROLES} roles"),
        ));
    }
    let mut unique = BTreeSet::new();
    for role in roles {
        let valid = (1..=32).contains(&role.len())
            && role
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-'));
        if !valid {
            return Err(Error::invalid(
                "roles",
                format!("`{role}` must be 1-32 characters of a-z, 0-9, `_` or `-`"),
            ));
        }
        unique.insert(role);
    }
    Ok(unique.into_iter().collect())
}

/// Valid metadata.
///
/// # Errors
/// INVALID_ARGUMENT naming `metadata`.
pub fn parse_metadata(metadata: HashMap<String, String>) -> Result<HashMap<String, String>, Error> {
    if metadata.len() > MAX_METADATA_ENTRIES {
        return Err(Error::invalid(
            "metadata",
            format!("at most {MAX_METADATA_ENTRIES} entries"),
        ));
    }
    for (key, value) in &metadata {
        if key.is_empty() || key.len() > MAX_METADATA_KEY_BYTES {
            return Err(Error::invalid(
                "metadata",
                format!("keys must be 1-{MAX_METADATA_KEY_BYTES} bytes"),
            ));
        }
        if value.len() > MAX_METADATA_VALUE_BYTES {
            return Err(Error::invalid(
                "metadata",
                format!("value of `{key}` is longer than {MAX_METADATA_VALUE_BYTES} bytes"),
            ));
        }
    }
    Ok(metadata)
}

/// A user about to be created, every field valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewUser {
    /// Sign-in name.
    pub username: String,
    /// Shown name.
    pub display_name: String,
    /// Email or "".
    pub email: String,
    /// Initial status.
    pub status: UserStatus,
    /// Initial roles.
    pub roles: Vec<String>,
    /// Initial metadata.
    pub metadata: HashMap<String, String>,
    /// A bot's owner; `None` for people.
    pub owner_id: Option<String>,
}

impl NewUser {
    /// Validates a creation request.
    ///
    /// # Errors
    /// INVALID_ARGUMENT naming the first bad field.
    pub fn parse(request: pb::CreateUserRequest) -> Result<Self, Error> {
        let username = parse_username(&request.username)?;
        let display_name = parse_display_name(&request.display_name, &username)?;
        let email = parse_email(&request.email)?;
        let status =
            UserStatus::from_proto(request.status, "status")?.unwrap_or(UserStatus::Active);
        let roles = parse_roles(request.roles)?;
        let metadata = parse_metadata(request.metadata)?;
        Ok(Self {
            username,
            display_name,
            email,
            status,
            roles,
            metadata,
            owner_id: None,
        })
    }

    /// Validates a bot owned by `owner_id`: a plain user (never `admin`,
    /// whatever its name), active, without email or metadata.
    ///
    /// # Errors
    /// INVALID_ARGUMENT naming the first bad field.
    pub fn bot(request: &pb::CreateBotRequest, owner_id: &str) -> Result<Self, Error> {
        let username = parse_username(&request.username)?;
        let display_name = parse_display_name(&request.display_name, &username)?;
        Ok(Self {
            username,
            display_name,
            email: String::new(),
            status: UserStatus::Active,
            roles: vec![parley_runtime::token::USER_ROLE.to_owned()],
            metadata: HashMap::new(),
            owner_id: Some(owner_id.to_owned()),
        })
    }
}

/// A stored user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// UUID.
    pub id: String,
    /// Sign-in name.
    pub username: String,
    /// Shown name.
    pub display_name: String,
    /// Email or "".
    pub email: String,
    /// Status.
    pub status: UserStatus,
    /// Roles.
    pub roles: Vec<String>,
    /// Metadata.
    pub metadata: HashMap<String, String>,
    /// Creation time, Unix milliseconds.
    pub created_at: i64,
    /// Last change, Unix milliseconds.
    pub updated_at: i64,
    /// A bot's owner; `None` for people.
    pub owner_id: Option<String>,
}

impl From<User> for pb::User {
    fn from(user: User) -> Self {
        Self {
            id: user.id,
            username: user.username,
            display_name: user.display_name,
            email: user.email,
            status: user.status.to_proto().into(),
            roles: user.roles,
            metadata: user.metadata,
            created_at: Some(timestamp(user.created_at)),
            updated_at: Some(timestamp(user.updated_at)),
            kind: if user.owner_id.is_some() {
                pb::UserKind::Bot
            } else {
                pb::UserKind::Human
            }
            .into(),
            owner_id: user.owner_id.unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames() {
        assert!(parse_username("ada_lovelace.1").is_ok());
        for bad in ["ab", "a b c", "ünïcode", &"x".repeat(33), ""] {
            assert!(parse_username(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn emails_are_optional_but_valid() {
        assert_eq!(parse_email("").unwrap(), "");
        assert_eq!(parse_email(" ada@example.com ").unwrap(), "ada@example.com");
        assert!(parse_email("not-an-email").is_err());
    }

    #[test]
    fn roles_default_and_validate() {
        assert_eq!(parse_roles(vec![]).unwrap(), vec!["user"]);
        assert_eq!(
            parse_roles(vec!["user".into(), "admin".into(), "user".into()]).unwrap(),
            vec!["admin", "user"]
        );
        assert!(parse_roles(vec!["Admin!".into()]).is_err());
    }

    #[test]
    fn a_new_user_gets_defaults() {
        let request = pb::CreateUserRequest {
            username: "Root".into(),
            ..Default::default()
        };
        let user = NewUser::parse(request).unwrap();
        assert_eq!(user.roles, vec!["user"]);
        assert_eq!(user.display_name, "Root");
        assert_eq!(user.status, UserStatus::Active);
    }

    #[test]
    fn metadata_is_bounded() {
        let too_many: HashMap<_, _> = (0..33).map(|i| (i.to_string(), String::new())).collect();
        assert!(parse_metadata(too_many).is_err());
        let long_value = HashMap::from([("k".to_owned(), "v".repeat(1025))]);
        assert!(parse_metadata(long_value).is_err());
    }
}
