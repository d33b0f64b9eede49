//! A `GatewayStreamRequest` as chat receives it from a gateway, decoded and
//! checked frame by frame.
#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    parley_chat::fuzz::gateway_stream(bytes);
});
