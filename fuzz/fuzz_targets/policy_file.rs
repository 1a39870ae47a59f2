//! Fuzz target: policy files (TOML and JSON) either parse or give a located error.
#![no_main]

use std::path::Path;

use moat_policy::{NetworkPolicy, PolicyFormat};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        for format in [PolicyFormat::Toml, PolicyFormat::Json] {
            if let Ok(policy) = NetworkPolicy::from_text(Path::new("fuzz"), text, format) {
                let _ = policy.compile();
            }
        }
    }
});
