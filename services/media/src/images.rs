//! Dimensions and thumbnails of raster images, decoded with bounds: the
//! header is read first and an image over `MAX_IMAGE_PIXELS` is never
//! decoded, and the decoder itself is held to the same size and to a cap
//! on its allocations. Blocking: run it on a blocking thread, one at a
//! time (the caller's semaphore), so decoding never stalls the async
//! workers and at most one decoded image is in memory.

use std::io::{BufReader, Cursor, Seek as _, SeekFrom};

use image::{DynamicImage, ImageDecoder as _, ImageReader, Limits, codecs::jpeg::JpegEncoder};

use crate::domain::{MAX_IMAGE_PIXELS, THUMBNAIL_SIDE};

/// The most the decoder may allocate: a full-size image of
/// `MAX_IMAGE_PIXELS` at four bytes a pixel, and room for its buffers.
const MAX_DECODE_BYTES: u64 = MAX_IMAGE_PIXELS * 4 + 64 * 1024 * 1024;

/// What an image turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspected {
    /// Pixels, after the image's own orientation is applied.
    pub width: u32,
    /// Pixels, after the image's own orientation is applied.
    pub height: u32,
    /// The thumbnail's bytes.
    pub thumbnail: Vec<u8>,
    /// `image/png` (kept for images with transparency) or `image/jpeg`.
    pub thumbnail_type: &'static str,
}

/// Why an image gets no dimensions and no thumbnail: it is then stored as
/// a plain file.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// It says it is bigger than we decode.
    #[error("{width}x{height} is over {MAX_IMAGE_PIXELS} pixels")]
    TooManyPixels {
        /// As its header says.
        width: u32,
        /// As its header says.
        height: u32,
    },
    /// It says it has no pixels (a zero width or height).
    #[error("{width}x{height} has no pixels")]
    Empty {
        /// As its header or decoder says.
        width: u32,
        /// As its header or decoder says.
        height: u32,
    },
    /// It does not decode (truncated, corrupt, lying about its format, or
    /// over the decoder's limits).
    #[error("does not decode: {0}")]
    Undecodable(#[from] image::ImageError),
    /// The spool could not be read.
    #[error("cannot read the spooled image: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads the image in `file` (from its start) and makes its thumbnail.
///
/// # Errors
/// `Refused` for anything that is not a decodable image within bounds.
pub fn inspect(file: &mut std::fs::File) -> Result<Inspected, Refused> {
    file.seek(SeekFrom::Start(0))?;
    let (width, height) = ImageReader::new(BufReader::new(&*file))
        .with_guessed_format()?
        .into_dimensions()?;
    if width == 0 || height == 0 {
        return Err(Refused::Empty { width, height });
    }
    if u64::from(width) * u64::from(height) > MAX_IMAGE_PIXELS {
        return Err(Refused::TooManyPixels { width, height });
    }

    file.seek(SeekFrom::Start(0))?;
    let mut reader = ImageReader::new(BufReader::new(&*file)).with_guessed_format()?;
    let mut limits = Limits::default();
    limits.max_image_width = Some(width.max(1));
    limits.max_image_height = Some(height.max(1));
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    let mut decoder = reader.into_decoder()?;
    // Phones store photos sideways with an EXIF orientation; a thumbnail
    // the right way up needs it applied.
    let orientation = decoder.orientation()?;
    let mut image = DynamicImage::from_decoder(decoder)?;
    image.apply_orientation(orientation);
    // The decoder may disagree with the header it was checked by.
    if image.width() == 0 || image.height() == 0 {
        return Err(Refused::Empty {
            width: image.width(),
            height: image.height(),
        });
    }

    // Shrunk to fit, never enlarged.
    let thumbnail = if image.width() > THUMBNAIL_SIDE || image.height() > THUMBNAIL_SIDE {
        image.thumbnail(THUMBNAIL_SIDE, THUMBNAIL_SIDE)
    } else {
        image.clone()
    };
    let (bytes, thumbnail_type) = if thumbnail.color().has_alpha() {
        let mut bytes = Cursor::new(Vec::new());
        thumbnail.write_to(&mut bytes, image::ImageFormat::Png)?;
        (bytes.into_inner(), "image/png")
    } else {
        let mut bytes = Vec::new();
        thumbnail
            .to_rgb8()
            .write_with_encoder(JpegEncoder::new_with_quality(&mut bytes, 82))?;
        (bytes, "image/jpeg")
    };
    Ok(Inspected {
        width: image.width(),
        height: image.height(),
        thumbnail: bytes,
        thumbnail_type,
    })
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use image::{ImageFormat, Rgb, RgbImage, Rgba, RgbaImage};

    use super::*;

    fn spool(bytes: &[u8]) -> std::fs::File {
        let mut file = tempfile::tempfile().expect("a temp file");
        file.write_all(bytes).expect("spooled");
        file
    }

    fn encoded(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut bytes = Cursor::new(Vec::new());
        image.write_to(&mut bytes, format).expect("encoded");
        bytes.into_inner()
    }

    fn thumbnail_size(inspected: &Inspected) -> (u32, u32) {
        let thumbnail = image::load_from_memory(&inspected.thumbnail).expect("a thumbnail");
        (thumbnail.width(), thumbnail.height())
    }

    #[test]
    fn every_raster_format_gets_dimensions_and_a_thumbnail() {
        let photo = DynamicImage::ImageRgb8(RgbImage::from_fn(800, 600, |x, y| {
            Rgb([(x % 256) as u8, (y % 256) as u8, 128])
        }));
        for format in [
            ImageFormat::Png,
            ImageFormat::Jpeg,
            ImageFormat::Gif,
            ImageFormat::WebP,
        ] {
            let inspected = inspect(&mut spool(&encoded(&photo, format)))
                .unwrap_or_else(|err| panic!("{format:?}: {err}"));
            assert_eq!(
                (inspected.width, inspected.height),
                (800, 600),
                "{format:?}"
            );
            assert_eq!(thumbnail_size(&inspected), (320, 240), "{format:?}");
        }
    }

    #[test]
    fn transparency_keeps_a_png_thumbnail() {
        let icon = DynamicImage::ImageRgba8(RgbaImage::from_pixel(40, 90, Rgba([1, 2, 3, 0])));
        let inspected = inspect(&mut spool(&encoded(&icon, ImageFormat::Png))).expect("inspected");
        assert_eq!(inspected.thumbnail_type, "image/png");
        assert_eq!(thumbnail_size(&inspected), (40, 90));
    }

    #[test]
    fn a_decompression_bomb_is_refused_before_decoding() {
        // A valid PNG header claiming 100,000 x 100,000 pixels.
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut ihdr = b"IHDR".to_vec();
        ihdr.extend(100_000u32.to_be_bytes());
        ihdr.extend(100_000u32.to_be_bytes());
        ihdr.extend([8, 2, 0, 0, 0]);
        png.extend(13u32.to_be_bytes());
        png.extend(&ihdr);
        png.extend(crc32(&ihdr).to_be_bytes());
        // The start of its pixel data: the header is read up to here.
        let mut idat = b"IDAT".to_vec();
        idat.extend([0x78, 0x9c, 0, 0, 0, 0, 0, 0, 0, 0]);
        png.extend(10u32.to_be_bytes());
        png.extend(&idat);
        png.extend(crc32(&idat).to_be_bytes());
        assert!(matches!(
            inspect(&mut spool(&png)),
            Err(Refused::TooManyPixels {
                width: 100_000,
                height: 100_000
            })
        ));
    }

    #[test]
    fn truncated_and_lying_files_are_refused() {
        let photo = DynamicImage::ImageRgb8(RgbImage::new(64, 64));
        let png = encoded(&photo, ImageFormat::Png);
        assert!(inspect(&mut spool(&png[..png.len() / 2])).is_err());
        // A PNG signature in front of JPEG data.
        let mut lying = b"\x89PNG\r\n\x1a\n".to_vec();
        lying.extend(encoded(&photo, ImageFormat::Jpeg));
        assert!(inspect(&mut spool(&lying)).is_err());
        assert!(inspect(&mut spool(b"not an image at all")).is_err());
    }

    /// Found by the fuzzer: a GIF whose screen is 3088x0 decodes to an
    /// image without pixels, which has no thumbnail.
    #[test]
    fn an_image_without_pixels_is_refused() {
        let gif = include_bytes!("../../../fuzz/corpus/image_decode/regression-gif-zero-height");
        assert!(matches!(
            inspect(&mut spool(gif)),
            Err(Refused::Empty { height: 0, .. })
        ));
    }

    /// Writes the image seeds of the fuzz targets `image_decode` and
    /// `media_sniff` (whose first byte is the chunk size) into
    /// `fuzz/corpus/`: `cargo test -p parley-media fuzz_seeds -- --ignored`.
    #[test]
    #[ignore = "writes fuzz/corpus; run by hand"]
    fn fuzz_seeds() {
        let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
        let small = DynamicImage::ImageRgba8(RgbaImage::from_fn(16, 12, |x, y| {
            Rgba([(x * 16) as u8, (y * 20) as u8, 7, 200])
        }));
        for (name, format) in [
            ("png", ImageFormat::Png),
            ("jpeg", ImageFormat::Jpeg),
            ("gif", ImageFormat::Gif),
            ("webp", ImageFormat::WebP),
        ] {
            let image = if format == ImageFormat::Jpeg {
                DynamicImage::ImageRgb8(small.to_rgb8())
            } else {
                small.clone()
            };
            let bytes = encoded(&image, format);
            for (target, prefix) in [("image_decode", &[][..]), ("media_sniff", &[7u8][..])] {
                let dir = corpus.join(target);
                std::fs::create_dir_all(&dir).expect("the corpus folder");
                let seed = [prefix, &bytes].concat();
                std::fs::write(dir.join(format!("seed-{name}")), seed).expect("a seed");
            }
        }
    }

    /// CRC-32 (IEEE) of a PNG chunk's type and data.
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = 0xffff_ffffu32;
        for &byte in bytes {
            crc ^= u32::from(byte);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xedb8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
}
