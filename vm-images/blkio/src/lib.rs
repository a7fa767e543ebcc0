//! Verifiable block I/O: the block format (`block`), seeded plans and their reference model
//! (`plan`), the reference model built while writing (`model`), and an O_DIRECT io_uring engine with a hard deadline (`engine`).

pub mod block;
pub mod engine;
pub mod model;
pub mod plan;

pub use ublk::rng;
