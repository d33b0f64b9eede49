//! Image files as the media service reads them for dimensions and a
//! thumbnail: whatever the bytes, an answer (a thumbnail within 320 px, or
//! a refusal), never a panic, a hang or an unbounded allocation (libFuzzer's
//! -rss_limit_mb and -timeout catch the last two).
#![no_main]

use std::io::Write as _;

use parley_media::images::inspect;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut file = tempfile::tempfile().expect("a temp file");
    file.write_all(data).expect("written");
    if let Ok(image) = inspect(&mut file) {
        assert!(image.width > 0 && image.height > 0);
        assert!(!image.thumbnail.is_empty());
    }
});
