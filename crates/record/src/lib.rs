//! moat's record: what a run leaves behind for the people who must say where its code
//! could connect.
//!
//! This crate owns the audit log (`audit.rs`: one JSON line per decision, folded, capped,
//! never silently lost), the summary read from its events as they are written or from a log
//! file afterwards, and the policy `--learn` writes from it (`summary.rs`). It uses only the
//! policy; the engine hands it events, and the facade reads it back.
#![forbid(unsafe_code)]

pub mod audit;
pub mod summary;

pub use audit::Terminate;

/// Entry points for the fuzz targets in `fuzz/` (not a stable API): every parser of
/// untrusted bytes this crate owns.
#[doc(hidden)]
pub mod fuzzing {
    /// An audit log read back (`moat audit FILE`, a summary, a learned policy): each line
    /// that is a JSON object is taken as an event, whatever its fields hold.
    pub fn audit_summary(data: &[u8]) {
        let mut summary = crate::summary::Summary::new();
        for line in data.split(|&b| b == b'\n') {
            if let Ok(serde_json::Value::Object(event)) = serde_json::from_slice(line) {
                summary.add(&event);
            }
        }
        for run in summary.runs() {
            let _ = run.render();
            let _ = run.to_json();
            let _ = run.suggestions();
            let _ = run.learned_policy("fuzz");
        }
    }
}
