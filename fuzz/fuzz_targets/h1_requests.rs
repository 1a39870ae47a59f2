//! Fuzz target: the HTTP/1.1 request reader of intercepted connections
//! (`moat_inspect::fuzzing::h1_requests`), fed in two pieces, must never panic, hang or
//! pass more bytes than it was given.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    moat_inspect::fuzzing::h1_requests(data);
});
