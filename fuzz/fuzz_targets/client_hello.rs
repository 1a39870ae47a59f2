//! Fuzz target: the TLS ClientHello reader (`moat_inspect::fuzzing::client_hello`), across
//! records, must never panic on arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    moat_inspect::fuzzing::client_hello(data);
});
