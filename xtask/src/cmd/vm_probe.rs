//! `cargo xtask vm-probe`: re-run the KVM probe and cache its verdict.

use crate::image;
use crate::image::kernel::Source;
use crate::util::Result;

pub fn run() -> Result<i32> {
    let img = image::build(&Source::default_debian())?;
    let rec = crate::vm::accel::probe(&img)?;
    println!(
        "accelerator for --accel auto: {} ({})",
        if rec.kvm_works { "kvm" } else { "tcg" },
        rec.reason
    );
    Ok(0)
}
