//! Fuzz target: the DEST syntax, flow targets and domain names never panic.
#![no_main]

use moat_policy::{DestSpec, DomainName, DomainSuffix, FlowTarget};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = DestSpec::parse(text);
        let _ = FlowTarget::parse(text);
        let _ = DomainName::new(text);
        let _ = DomainSuffix::new(text);
    }
});
