//! Fuzz target: the name read from a connection's first bytes
//! (`moat_inspect::fuzzing::first_bytes`) must never panic, and pushing the bytes in two
//! pieces must tell what parsing them whole tells.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    moat_inspect::fuzzing::first_bytes(data);
});
