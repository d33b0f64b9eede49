//! The saved session: one file in the user's config directory, readable
//! by the user alone (mode 0600), holding the server and the current
//! refresh token (README: "Client libraries").

use std::{
    io::Write as _,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

/// What is saved between runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Saved {
    /// The server it was signed in to.
    pub(crate) server: String,
    /// The session to resume.
    pub(crate) session: parley_client::Session,
}

/// `$PARLEY_CONFIG_DIR`, else `$XDG_CONFIG_HOME/parley`, else
/// `~/.config/parley`.
pub(crate) fn dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("PARLEY_CONFIG_DIR") {
        return Some(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME") {
        return Some(Path::new(&dir).join("parley"));
    }
    std::env::var_os("HOME").map(|home| Path::new(&home).join(".config").join("parley"))
}

fn file() -> std::io::Result<PathBuf> {
    dir()
        .map(|dir| dir.join("credentials.json"))
        .ok_or_else(|| std::io::Error::other("no config directory: set PARLEY_CONFIG_DIR or HOME"))
}

/// The saved session; `None` when there is none.
pub(crate) fn load() -> std::io::Result<Option<Saved>> {
    match std::fs::read(file()?) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|err| std::io::Error::other(format!("unreadable credentials: {err}"))),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err),
    }
}

/// Saves `saved`, replacing the file whole (written aside, then renamed),
/// created with mode 0600.
pub(crate) fn save(saved: &Saved) -> std::io::Result<()> {
    let path = file()?;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let aside = path.with_extension("json.new");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut out = options.open(&aside)?;
    out.write_all(&serde_json::to_vec_pretty(saved).map_err(std::io::Error::other)?)?;
    out.sync_all()?;
    std::fs::rename(aside, path)
}

/// Forgets the saved session.
pub(crate) fn remove() -> std::io::Result<()> {
    match std::fs::remove_file(file()?) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(err),
        _ => Ok(()),
    }
}
