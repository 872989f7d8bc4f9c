#![forbid(unsafe_code)]
pub mod e2e;
pub mod netns;
