//! An upload's bytes as the media service takes them: cut into chunks (the
//! first byte sets their size), counted against a limit, hashed, sniffed
//! and, for images, spooled. The spool must hold exactly the bytes taken.
#![no_main]

use std::io::{Read as _, Seek as _};

use parley_media::ingest::{Allowance, Ingest, Limit};
use sha2::{Digest as _, Sha256};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&cut, bytes)) = data.split_first() else {
        return;
    };
    let limit = bytes.len() as u64 / 2 + 16;
    let mut ingest = Ingest::new(Allowance {
        bytes: limit,
        by: Limit::MaxBytes,
    });
    let mut taken = 0;
    for chunk in bytes.chunks(usize::from(cut).max(1)) {
        if ingest.take(chunk).is_err() {
            assert!(taken + chunk.len() as u64 > limit, "refused under the limit");
            return;
        }
        taken += chunk.len() as u64;
    }
    let done = ingest.finish();
    assert_eq!(done.size, bytes.len() as u64);
    assert_eq!(done.sha256, format!("{:x}", Sha256::digest(bytes)));
    if let Some(mut spool) = done.spool {
        let mut spooled = Vec::new();
        spool.rewind().expect("rewound");
        spool.read_to_end(&mut spooled).expect("read");
        assert_eq!(spooled, bytes, "the spool holds exactly the upload");
    }
});
