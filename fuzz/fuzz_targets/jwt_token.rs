//! An access token as any service verifies it: header, `kid`, signature.
#![no_main]

use std::sync::LazyLock;

use parley_runtime::token::TokenVerifier;

static VERIFIER: LazyLock<TokenVerifier> = LazyLock::new(|| {
    let pem = parley_auth::keys::SigningKeys::generate_pem().expect("a key");
    let keys = parley_auth::keys::SigningKeys::from_pem(&pem).expect("the key parses");
    let verifier = TokenVerifier::new();
    verifier.set_public_keys(&keys.public_keys());
    verifier
});

libfuzzer_sys::fuzz_target!(|token: &str| {
    let _ = VERIFIER.verify(token);
});
