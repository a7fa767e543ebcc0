//! A ublk server library: the kernel ABI (`sys`), the control device (`ctrl`), the sans-IO
//! per-queue core (`core`) and its io_uring executor (`io`), and the memory target (`mem`).
//! See ARCHITECTURE.md at the workspace root.

pub mod admin;
pub mod batch;
pub mod contract;
pub mod core;
pub mod ctrl;
pub mod io;
pub mod ktrace;
pub mod mem;
pub mod planted;
pub mod recovery;
pub mod rng;
pub mod server;
pub mod sys;
pub mod trace;
pub mod uring;
pub mod util;
