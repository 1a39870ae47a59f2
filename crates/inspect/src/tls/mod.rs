//! TLS: the ClientHello's server name, read without intercepting (`sni.rs`), and the
//! interception CA with its leaf certificates (`ca.rs`). The intercepting stream stage
//! is `engine/tls_stage.rs`.

pub mod ca;
pub mod sni;
