//! moat's engine: the user-space TCP/IP stack behind the sandbox's interface. Every frame
//! the sandbox sends ends here, is judged against the policy, and only then leaves through
//! a host socket. See `engine/mod.rs` for the theory of operation and the layout.
//!
//! The layers below it are crates of their own, each naming only those under it: the wire
//! (`moat-wire`: frames, the device, offloads, ICMP), DNS (`moat-dns`), L7 inspection
//! (`moat-inspect`: TLS, HTTP readers, secrets; sans-I/O) and the record (`moat-record`: the
//! audit log, the summary, learn). This crate owns the loop, the flow table, the flows and
//! the stream stage that drives the inspection layer, and re-exports what the facade uses.
#![forbid(unsafe_code)]

mod engine;

pub use engine::{
    Counters, DEFAULT_BUSY_POLL, DEFAULT_MAX_BUFFER_MEMORY, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_TLS_PORTS, DenyMode, EngineConfig, EngineHandle, LinkConfig, MAX_BUSY_POLL, MAX_MTU,
    MAX_PUBLISHED, MIN_BUFFER_MEMORY, MIN_MTU, Published, PublishedSocket, TlsConfig, spawn,
};
pub use moat_inspect::secrets::{
    HostPattern, Secret, SecretError, check_distinct as check_secrets,
};
pub use moat_inspect::tls::ca::{CaError, FRESH_CA_DAYS, InterceptCa, LeafName, STABLE_CA_DAYS};
pub use moat_record::audit::{
    AuditLog, AuditOptions, AuditOut, AuditStats, DEFAULT_AUDIT_MAX_SIZE, FOLD_WINDOW, MAX_FOLDS,
    MIN_AUDIT_MAX_SIZE, Notices, Terminate, rfc3339,
};
pub use moat_record::summary;
pub use moat_wire::device::{FrameDevice, MemoryDevice, SharedMemoryDevice, TapDevice};
pub use moat_wire::offload::{MAX_UDP_SEGMENTS, TcpOffload, UdpSegments, VNET_HDR_LEN};
