#![forbid(unsafe_code)]
pub mod e2e;
