//! Attachments and the checked values requests are parsed into once, at
//! the edge (README, "Media").

use crate::error::Error;

/// The most bytes one message carries: a `PutAttachment`'s content, a
/// chunk in either direction.
pub(crate) const CHUNK_BYTES: usize = 1024 * 1024;

/// Longest side of a thumbnail, in pixels.
pub(crate) const THUMBNAIL_SIDE: u32 = 320;

/// Images that would need more pixels than this to decode are stored as
/// plain files, without a thumbnail.
pub(crate) const MAX_IMAGE_PIXELS: u64 = 50_000_000;

/// A stored attachment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Attachment {
    /// Random, unguessable.
    pub(crate) id: String,
    /// The name the uploader gave.
    pub(crate) filename: String,
    /// Sniffed, declared or `application/octet-stream`.
    pub(crate) content_type: String,
    /// Bytes.
    pub(crate) size: u64,
    /// Lowercase hex SHA-256 of the bytes.
    pub(crate) sha256: String,
    /// Who uploaded it.
    pub(crate) uploader_id: String,
    /// Unix milliseconds.
    pub(crate) created_at: i64,
    /// Pixels, 0 when not a decodable image.
    pub(crate) width: u32,
    /// Pixels, 0 when not a decodable image.
    pub(crate) height: u32,
    /// The thumbnail's media type, when there is one.
    pub(crate) thumbnail_type: Option<String>,
}

/// A size or offset as the wire and the database carry it: sizes are at
/// most `MEDIA_MAX_BYTES`, far inside `i64`.
pub(crate) fn signed(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A fresh id: a v4 UUID (122 random bits) without hyphens, so it reads
/// as one token in URLs and logs.
pub(crate) fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Checks an attachment or upload id (`what`) as a client gave it in
/// `field`: 32 lowercase hex digits. Anything else can name nothing, and is
/// NOT_FOUND rather than an error about its shape.
pub(crate) fn parse_id(id: &str, field: &'static str, what: &'static str) -> Result<String, Error> {
    if id.is_empty() {
        return Err(Error::invalid(field, "is required"));
    }
    if id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(id.to_owned())
    } else {
        Err(Error::NotFound(what))
    }
}

/// What an upload declares: its file's name and media type, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileInfo {
    /// The name, without folders.
    pub(crate) filename: String,
    /// The declared media type, lowercased, without parameters; `None`
    /// when none was given.
    pub(crate) declared_type: Option<String>,
}

impl FileInfo {
    /// Parses the declared name and media type.
    ///
    /// # Errors
    /// INVALID_ARGUMENT naming `filename` or `content_type`.
    pub(crate) fn parse(filename: &str, content_type: &str) -> Result<Self, Error> {
        Ok(Self {
            filename: parse_filename(filename)?,
            declared_type: parse_media_type(content_type)?,
        })
    }
}

/// The last path component of `name`: browsers and tools send full paths
/// now and then, and a name with folders in it must never reach a
/// `Content-Disposition` header as a path.
fn parse_filename(name: &str) -> Result<String, Error> {
    let name = name.rsplit(['/', '\\']).next().unwrap_or(name).trim();
    if name.is_empty() || name == "." || name == ".." {
        return Err(Error::invalid("filename", "is required"));
    }
    if name.len() > 255 {
        return Err(Error::invalid("filename", "is longer than 255 bytes"));
    }
    if name.chars().any(char::is_control) {
        return Err(Error::invalid("filename", "holds control characters"));
    }
    Ok(name.to_owned())
}

/// `type/subtype` with RFC 6838's restricted name characters; parameters
/// (`; charset=...`) are dropped and the rest lowercased.
fn parse_media_type(value: &str) -> Result<Option<String>, Error> {
    let essence = value.split(';').next().unwrap_or("").trim();
    if essence.is_empty() {
        return Ok(None);
    }
    let valid_name = |part: &str| {
        !part.is_empty()
            && part.len() <= 127
            && part.bytes().all(|b| {
                b.is_ascii_alphanumeric()
                    || matches!(
                        b,
                        b'!' | b'#' | b'$' | b'&' | b'-' | b'^' | b'_' | b'.' | b'+'
                    )
            })
    };
    match essence.split_once('/') {
        Some((kind, subtype)) if valid_name(kind) && valid_name(subtype) => {
            Ok(Some(essence.to_ascii_lowercase()))
        }
        _ => Err(Error::invalid(
            "content_type",
            "is not a media type such as image/png",
        )),
    }
}

/// The media type an attachment is stored with: what the bytes say when
/// they are recognisable, else what the uploader declared, else
/// `application/octet-stream`.
pub(crate) fn content_type(sniffed: Option<&str>, declared: Option<&str>) -> String {
    sniffed
        .or(declared)
        .unwrap_or("application/octet-stream")
        .to_owned()
}

/// The raster formats that get dimensions and a thumbnail; every other
/// type (SVG included, which can carry script) is a plain file.
pub(crate) fn is_thumbnailable(content_type: &str) -> bool {
    matches!(
        content_type,
        "image/png" | "image/jpeg" | "image/gif" | "image/webp"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filenames_lose_their_folders_and_keep_their_name() {
        let name = |n: &str| FileInfo::parse(n, "").map(|f| f.filename);
        assert_eq!(name("cat.png").ok(), Some("cat.png".into()));
        assert_eq!(name("C:\\Users\\me\\cat.png").ok(), Some("cat.png".into()));
        assert_eq!(name("../../etc/passwd").ok(), Some("passwd".into()));
        assert_eq!(
            name(" spaced name.txt ").ok(),
            Some("spaced name.txt".into())
        );
        assert_eq!(name("日本.txt").ok(), Some("日本.txt".into()));
        for bad in ["", "dir/", "..", "a\nb", &"x".repeat(256)] {
            assert!(name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn media_types_are_checked_and_normalised() {
        let declared = |t: &str| FileInfo::parse("f", t).map(|f| f.declared_type);
        assert_eq!(declared("").ok(), Some(None));
        assert_eq!(
            declared("Text/Plain; charset=utf-8").ok(),
            Some(Some("text/plain".into()))
        );
        assert_eq!(
            declared("application/vnd.api+json").ok(),
            Some(Some("application/vnd.api+json".into()))
        );
        for bad in [
            "text",
            "text/",
            "/plain",
            "te xt/plain",
            "a/b/c",
            "<script>/x",
        ] {
            assert!(declared(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sniffed_beats_declared_beats_the_default() {
        assert_eq!(
            content_type(Some("image/png"), Some("text/html")),
            "image/png"
        );
        assert_eq!(content_type(None, Some("text/html")), "text/html");
        assert_eq!(content_type(None, None), "application/octet-stream");
    }

    #[test]
    fn ids_are_32_hex_digits_and_others_name_nothing() {
        let id = new_id();
        assert_eq!(parse_id(&id, "id", "attachment").ok(), Some(id.clone()));
        assert_ne!(new_id(), id);
        assert!(matches!(
            parse_id("", "id", "attachment"),
            Err(Error::InvalidArgument { .. })
        ));
        for bad in ["x", "../a", &id.to_uppercase(), &format!("{id}0")] {
            assert!(
                matches!(parse_id(bad, "id", "attachment"), Err(Error::NotFound(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn only_raster_images_get_thumbnails() {
        assert!(is_thumbnailable("image/png"));
        assert!(!is_thumbnailable("image/svg+xml"));
        assert!(!is_thumbnailable("text/html"));
    }
}
