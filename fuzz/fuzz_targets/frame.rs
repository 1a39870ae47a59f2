//! Fuzz target: `moat_wire::fuzzing::frame` on arbitrary bytes must never panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    moat_wire::fuzzing::frame(data);
});
