//! Fuzz target: how a refused connection's first bytes are classified in deny mode
//! `explain` (`moat_inspect::fuzzing::refused_first_bytes`): never a panic or a hang, a
//! verdict that more bytes cannot change, and a 403 whose body stays one line.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    moat_inspect::fuzzing::refused_first_bytes(data);
});
