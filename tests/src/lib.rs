//! Helpers shared by the end-to-end tests and `cargo xtask demo`: a plain HTTP client, an
//! OpenMetrics text reader, and the processes under test.

pub mod bpf;
pub mod dashboard;
pub mod ground_truth;
pub mod http;
pub mod openmetrics;
pub mod processes;
pub mod seeded;
