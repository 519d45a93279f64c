//! The part of flowlog's datapath that is plain logic: header parsing and packet accounting.
//!
//! It is generic over [`parse::Frame`], so the kernel programs (`main.rs`) run it on packet
//! memory and the host unit tests run it on byte slices.
#![cfg_attr(not(test), no_std)]

pub mod account;
pub mod headers;
pub mod parse;
pub mod policy;
