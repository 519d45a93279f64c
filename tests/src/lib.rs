//! flowlog's privileged integration-test harness: crafted frames for BPF_PROG_TEST_RUN and the
//! host parser tests, and network-namespace topologies for traffic tests.
//!
//! The tests themselves live in `tests/*.rs`. They need root (CAP_BPF, CAP_NET_ADMIN,
//! CAP_SYS_ADMIN) and only ever touch namespaces and links they create.

pub mod agent;
pub mod bpffs;
pub mod cloudwatch;
pub mod collector;
pub mod faults;
pub mod foreign;
pub mod frames;
pub mod metrics;
pub mod netns;
pub mod records;
pub mod s3;
pub mod test_run;
pub mod topology;
pub mod traffic;
