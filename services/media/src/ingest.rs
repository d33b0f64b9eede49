//! What an upload learns from its bytes as they pass: their size against
//! the limit, their SHA-256, their type from the first bytes, and (for
//! images only) a spool file on disk that the thumbnailer reads later, so
//! no file is ever held whole in memory.

use std::io::Write as _;

use sha2::{Digest as _, Sha256};

use crate::{domain::is_thumbnailable, error::Error};

/// Bytes the type is sniffed from.
const SNIFF_BYTES: usize = 8192;

/// Bytes after which the image question is settled: every raster format
/// says what it is in its first dozen.
const IMAGE_MAGIC_BYTES: usize = 32;

/// The most an upload may take, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowance {
    /// Bytes.
    pub bytes: u64,
    /// What sets the limit.
    pub by: Limit,
}

/// What limits an upload's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// `MEDIA_MAX_BYTES`.
    MaxBytes,
    /// What is left of the uploader's quota.
    Quota,
}

impl Allowance {
    /// The error for `size` bytes, over this allowance.
    pub fn exceeded(&self, size: u64) -> Error {
        match self.by {
            Limit::MaxBytes => Error::TooLarge(format!(
                "the file is over the largest attachment size of {} bytes",
                self.bytes
            )),
            Limit::Quota => Error::TooLarge(format!(
                "{size} bytes would exceed your storage quota ({} bytes left)",
                self.bytes
            )),
        }
    }
}

/// An upload's bytes so far.
#[derive(Debug)]
pub struct Ingest {
    allowance: Allowance,
    size: u64,
    hasher: Sha256,
    head: Vec<u8>,
    spool: Spool,
}

#[derive(Debug)]
enum Spool {
    /// Too few bytes yet to tell whether this is an image.
    Undecided,
    /// An image: its bytes so far, on disk.
    File(std::fs::File),
    /// Not an image (or the spool could not be made): nothing kept.
    None,
}

/// An upload's bytes, all seen.
#[derive(Debug)]
pub struct Ingested {
    /// Bytes.
    pub size: u64,
    /// Lowercase hex.
    pub sha256: String,
    /// The type the bytes show, when they are recognisable.
    pub sniffed: Option<&'static str>,
    /// For a raster image, its bytes on disk (rewound by the reader).
    pub spool: Option<std::fs::File>,
}

impl Ingest {
    /// An empty upload allowed `allowance`.
    pub fn new(allowance: Allowance) -> Self {
        Self {
            allowance,
            size: 0,
            hasher: Sha256::new(),
            head: Vec::new(),
            spool: Spool::Undecided,
        }
    }

    /// Bytes so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Takes a chunk.
    ///
    /// # Errors
    /// RESOURCE_EXHAUSTED past the allowance; nothing more should be taken.
    pub fn take(&mut self, chunk: &[u8]) -> Result<(), Error> {
        let size = self.size + chunk.len() as u64;
        if size > self.allowance.bytes {
            return Err(self.allowance.exceeded(size));
        }
        self.size = size;
        self.hasher.update(chunk);
        // Until the head is full every byte goes into it, so the head and
        // the chunk's rest are everything seen so far.
        let into_head = (SNIFF_BYTES - self.head.len()).min(chunk.len());
        self.head.extend_from_slice(&chunk[..into_head]);
        match &mut self.spool {
            Spool::Undecided if self.head.len() >= IMAGE_MAGIC_BYTES => {
                self.spool = start_spool(&self.head, &chunk[into_head..]);
            }
            Spool::File(file) => {
                if let Err(err) = file.write_all(chunk) {
                    tracing::warn!(error = %err, "spooling an image failed; no thumbnail");
                    self.spool = Spool::None;
                }
            }
            Spool::Undecided | Spool::None => {}
        }
        Ok(())
    }

    /// What the bytes were.
    pub fn finish(self) -> Ingested {
        let sniffed = infer::get(&self.head).map(|kind| kind.mime_type());
        let spool = match self.spool {
            Spool::File(file) => Some(file),
            // A file shorter than the magic: all of it is in the head.
            Spool::Undecided => match start_spool(&self.head, &[]) {
                Spool::File(file) => Some(file),
                _ => None,
            },
            Spool::None => None,
        };
        Ingested {
            size: self.size,
            sha256: format!("{:x}", self.hasher.finalize()),
            // A spool only for what the whole head still calls an image.
            spool: spool.filter(|_| sniffed.is_some_and(is_thumbnailable)),
            sniffed,
        }
    }
}

/// Decides from `head` whether to spool, and if so writes everything seen
/// so far: the head, then `rest` (the bytes of the last chunk past it).
fn start_spool(head: &[u8], rest: &[u8]) -> Spool {
    let image = infer::get(head).is_some_and(|kind| is_thumbnailable(kind.mime_type()));
    if !image {
        return Spool::None;
    }
    let spooled = tempfile::tempfile().and_then(|mut file| {
        file.write_all(head)?;
        file.write_all(rest)?;
        Ok(file)
    });
    match spooled {
        Ok(file) => Spool::File(file),
        Err(err) => {
            tracing::warn!(error = %err, "cannot spool an image; no thumbnail");
            Spool::None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Seek as _};

    use super::*;

    const PNG_MAGIC: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";

    fn allowance(bytes: u64) -> Allowance {
        Allowance {
            bytes,
            by: Limit::MaxBytes,
        }
    }

    fn png_like(len: usize) -> Vec<u8> {
        let mut bytes = PNG_MAGIC.to_vec();
        bytes.extend((0..len - PNG_MAGIC.len()).map(|i| (i % 251) as u8));
        bytes
    }

    fn spooled(ingested: Ingested) -> Option<Vec<u8>> {
        let mut file = ingested.spool?;
        file.rewind().ok()?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).ok()?;
        Some(bytes)
    }

    #[test]
    fn hashes_counts_and_sniffs_across_chunks() {
        let mut ingest = Ingest::new(allowance(100));
        for chunk in [&b"hello "[..], b"world"] {
            assert!(ingest.take(chunk).is_ok());
        }
        let done = ingest.finish();
        assert_eq!(done.size, 11);
        assert_eq!(
            done.sha256,
            "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"
        );
        assert_eq!(done.sniffed, None);
        assert!(done.spool.is_none());
    }

    #[test]
    fn refuses_past_the_allowance() {
        let mut ingest = Ingest::new(allowance(10));
        assert!(ingest.take(&[0; 10]).is_ok());
        assert!(matches!(ingest.take(&[0]), Err(Error::TooLarge(_))));
        assert_eq!(ingest.size(), 10);
    }

    #[test]
    fn images_are_spooled_whole_however_they_are_cut() {
        let image = png_like(20_000);
        for cut in [1, 7, 31, 32, 33, 5000, 8192, 8193, 20_000] {
            let mut ingest = Ingest::new(allowance(1 << 20));
            for chunk in image.chunks(cut) {
                assert!(ingest.take(chunk).is_ok());
            }
            let done = ingest.finish();
            assert_eq!(done.sniffed, Some("image/png"), "cut {cut}");
            assert_eq!(spooled(done).as_deref(), Some(&image[..]), "cut {cut}");
        }
    }

    #[test]
    fn a_tiny_image_is_spooled_at_the_end() {
        let image = PNG_MAGIC.to_vec();
        let mut ingest = Ingest::new(allowance(100));
        assert!(ingest.take(&image).is_ok());
        assert_eq!(spooled(ingest.finish()).as_deref(), Some(&image[..]));
    }

    #[test]
    fn other_files_are_not_spooled() {
        let mut ingest = Ingest::new(allowance(1 << 20));
        assert!(ingest.take(b"%PDF-1.7\n").is_ok());
        assert!(ingest.take(&[b'x'; 100]).is_ok());
        let done = ingest.finish();
        assert_eq!(done.sniffed, Some("application/pdf"));
        assert!(done.spool.is_none());
    }
}
