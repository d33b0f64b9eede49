//! Claims that carry a valid signature: what verification reads once the
//! signature holds (types, expiry, roles), whatever JSON the claims are.
#![no_main]

use std::sync::LazyLock;

use parley_auth::keys::SigningKeys;
use parley_runtime::token::TokenVerifier;

static KEYS: LazyLock<(SigningKeys, TokenVerifier)> = LazyLock::new(|| {
    let pem = SigningKeys::generate_pem().expect("a key");
    let keys = SigningKeys::from_pem(&pem).expect("the key parses");
    let verifier = TokenVerifier::new();
    verifier.set_public_keys(&keys.public_keys());
    (keys, verifier)
});

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    let Ok(claims) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return;
    };
    let (keys, verifier) = &*KEYS;
    if let Ok(token) = keys.sign(&claims) {
        let _ = verifier.verify(&token);
    }
});
