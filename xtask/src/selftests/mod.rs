//! The kernel's own ublk selftests: the suite built for the guest (`suite.rs`) and one test
//! script in one fresh VM (`run.rs`). The command is `cmd/vm_selftests.rs`.

pub mod run;
pub mod suite;
