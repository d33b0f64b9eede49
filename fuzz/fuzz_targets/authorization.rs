//! An `Authorization` header, from which the REST routes and the upgrade
//! take a bearer token.
#![no_main]

libfuzzer_sys::fuzz_target!(|value: &[u8]| {
    parley_gateway::fuzz::authorization(value);
});
