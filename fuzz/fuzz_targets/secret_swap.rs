//! Fuzz target: secret substitution and redaction inside HTTP/1.1 and HTTP/2 messages
//! (`moat_inspect::fuzzing::secret_swap`: framing, chunked re-framing, HPACK re-encoding,
//! flow-control bookkeeping), both directions, fed in two pieces: must never panic or hang.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    moat_inspect::fuzzing::secret_swap(data);
});
