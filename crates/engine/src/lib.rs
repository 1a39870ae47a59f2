//! moat's engine: the user-space TCP/IP stack behind the sandbox's interface. Every frame
//! the sandbox sends ends here, is judged against the policy, and only then leaves through
//! a host socket. See `engine.rs` for the theory of operation.
#![forbid(unsafe_code)]

mod audit;
mod device;
mod dns;
mod engine;
mod icmp;
mod wire;

pub use audit::{AuditLog, rfc3339};
pub use device::{FrameDevice, MemoryDevice, TapDevice};
pub use engine::{Counters, DenyMode, EngineConfig, EngineHandle, LinkConfig, spawn};
