//! Test executables in fresh VMs: one program or script per VM under a hard limit, kselftest
//! exit codes (`run`). vm-selftests runs the kernel's scripts through it, vm-test users'.

pub mod run;
