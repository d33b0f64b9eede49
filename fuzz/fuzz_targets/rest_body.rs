//! A REST request body, read as every route's body.
#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    parley_gateway::fuzz::rest_body(bytes);
});
