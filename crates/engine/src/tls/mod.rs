//! TLS, as far as the engine looks into it without intercepting: the ClientHello's
//! server name (`sni.rs`).

pub mod sni;
