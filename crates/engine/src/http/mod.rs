//! HTTP as moat reads it inside intercepted TLS: HTTP/1.1 request framing and the
//! authority every request names (`h1.rs`).

pub mod h1;
