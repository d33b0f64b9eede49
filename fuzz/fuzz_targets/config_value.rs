//! Configuration values: durations, database URLs, service URLs and CORS
//! origin lists, as every binary parses its variables.
#![no_main]

use std::str::FromStr as _;

use parley_runtime::config::{CorsOrigins, DatabaseUrl, ServiceUrl, parse_duration};

libfuzzer_sys::fuzz_target!(|value: &str| {
    let _ = parse_duration(value);
    let _ = DatabaseUrl::from_str(value);
    let _ = ServiceUrl::from_str(value);
    let _ = CorsOrigins::from_str(value);
});
