//! Fuzz target: the HTTP/2 request reader of intercepted connections (frames, HPACK,
//! authority checks; `moat_inspect::fuzzing::h2_requests`), fed in two pieces, must never
//! panic, hang or pass more bytes than it was given.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    moat_inspect::fuzzing::h2_requests(data);
});
