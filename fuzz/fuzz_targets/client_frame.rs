//! A WebSocket text frame from a client, as the gateway parses it.
#![no_main]

libfuzzer_sys::fuzz_target!(|text: &str| {
    parley_gateway::fuzz::client_frame(text);
});
