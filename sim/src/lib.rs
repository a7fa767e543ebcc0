//! The ublk simulator: a deterministic model of the kernel side of one device (`world`)
//! driving the daemon's real sans-IO queue core, request streams (`workload`), schedulers
//! (`sched`: random and PCT), and exploration with shrinking and repro commands (`explore`).

pub mod explore;
pub mod sched;
pub mod workload;
pub mod world;
