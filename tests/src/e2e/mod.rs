//! Shared pieces of the end-to-end tests: finding the built binaries, starting a target
//! process on a free loopback port, a cluster of control services on loopback addresses
//! (`cluster`) or in network namespaces (`netns_cluster`), and reading libiscsi's CUnit output.

pub mod blocks;
pub mod cluster;
pub mod conformance;
pub mod cunit;
pub mod fio;
pub mod fio_area;
pub mod host_io;
pub mod netns_cluster;
pub mod netns_three;
pub mod procs;
pub mod raw;
pub mod scenario;
