//! A query string, read as the history route's and the upgrade's.
#![no_main]

libfuzzer_sys::fuzz_target!(|query: &str| {
    parley_gateway::fuzz::query_string(query);
});
