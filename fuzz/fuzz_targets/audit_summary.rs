//! Fuzz target: audit logs read back (`moat_record::fuzzing::audit_summary`: events
//! grouped into a summary, rendered, suggested flags, a learned policy): any JSON lines, any
//! field types — never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    moat_record::fuzzing::audit_summary(data);
});
