//! Fuzz target: `moat_engine::fuzzing::dns_message` on arbitrary bytes must never panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    moat_engine::fuzzing::dns_message(data);
});
