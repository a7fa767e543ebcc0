//! Verifiable block I/O: the command line as types (`cli`), the block format (`block`), seeded plans and their reference model
//! (`plan`), the reference model built while writing (`model`), an O_DIRECT io_uring engine with a hard deadline (`engine`), and the read-back check (`verify`).

pub mod block;
pub mod cli;
pub mod engine;
pub mod model;
pub mod plan;
pub mod verify;

pub use ublk::rng;
