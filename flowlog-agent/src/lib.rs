//! flowlog's agent as a library: the binary (`main.rs`), xtask and the integration tests all
//! call these functions.

pub mod agent;
pub mod check;
pub mod cli;
pub mod config;
pub mod datapath;
pub mod files;
pub mod flow_log;
pub mod format;
pub mod interfaces;
pub mod interval;
pub mod kernel_drops;
pub mod metrics;
pub mod policy;
pub mod privileges;
pub mod record;
pub mod sink;
pub mod sys;
pub mod values;
