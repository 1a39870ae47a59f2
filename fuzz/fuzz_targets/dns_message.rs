//! Fuzz target: the DNS message parser (`Message::parse`) and helpers
//! (`moat_dns::fuzzing::dns_message`) must never panic on arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    moat_dns::fuzzing::dns_message(data);
});
