//! `cargo xtask vm-perf`: what is measured (`workload`), how one kernel's session runs in its
//! VM (`session`), fio's command line and output (`fio`), the summary and perf.json
//! (`report`), the chart (`chart`) and the regression gate (`baseline`).

pub mod baseline;
pub mod chart;
pub mod fio;
pub mod report;
pub mod session;
pub mod workload;
