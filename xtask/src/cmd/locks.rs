//! `cargo xtask locks [--upgrade] [--check]`: every lock of the image — each Debian kernel
//! (with the selftests sources beside it), the guest tools layer and the Go toolchain of
//! `vm-test --go` — against what its suite
//! offers now. Debian replaces packages every week; a stale lock still runs (the fetch falls
//! back to the newest build and says so), but only an upgraded one is exact again. The
//! scheduled workflow (`.github/workflows/locks.yml`) runs `--upgrade`, the suite, and opens
//! a pull request.

use crate::cmd::{kernel_lock, tools_lock};
use crate::util::Result;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Rewrite every stale lock with what its suite offers now
    #[arg(long)]
    pub upgrade: bool,
    /// Exit 1 when some lock is stale (without --upgrade: a freshness gate)
    #[arg(long)]
    pub check: bool,
}

pub fn run(args: Args) -> Result<i32> {
    let kernels = kernel_lock::check(kernel_lock::Args {
        upgrade: args.upgrade,
        names: Vec::new(),
    })?;
    let tools = tools_lock::check(tools_lock::Args {
        upgrade: args.upgrade,
    })?;
    let go = crate::vmtest::go::check_lock(args.upgrade)?;
    let stale = kernels + tools + go;
    match (stale, args.upgrade) {
        (0, _) => println!("every lock is up to date"),
        (n, false) => println!("{n} lock(s) stale; `cargo xtask locks --upgrade` rewrites them"),
        (n, true) => println!("{n} lock(s) rewritten; run the suite, then commit them"),
    }
    Ok(i32::from(args.check && !args.upgrade && stale > 0))
}
