//! A ublk server library: the kernel ABI (`sys`), the control device (`ctrl`), the sans-IO
//! per-queue core (`core`) and its io_uring executor (`io`), and the memory target (`mem`).
//! See ARCHITECTURE.md at the workspace root.

pub mod core;
pub mod rng;
pub mod sys;
