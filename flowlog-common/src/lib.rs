//! Types shared by flowlog's kernel programs (`flowlog-ebpf`) and its agent (`flowlog-agent`).
//!
//! Everything here is `#[repr(C)]` with explicit padding so the kernel and user space agree on
//! every byte. Multi-byte network fields (ports) are kept as big-endian byte arrays, as they are
//! on the wire, with typed getters beside them; enums cross the boundary as plain integers and
//! are decoded with `TryFrom`, never transmuted.
#![no_std]

pub mod drops;
pub mod flow;
pub mod maps;
pub mod policy;
pub mod stats;
pub mod tcp;

#[cfg(feature = "user")]
mod user;
