//! Fuzz target: DNS-over-TCP framing (`moat_dns::fuzzing::dns_tcp_stream`): a stream of
//! length-prefixed messages pushed in arbitrary pieces must never panic, never hold more
//! than one maximal message, and every message cut out goes to the DNS parser.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    moat_dns::fuzzing::dns_tcp_stream(data);
});
