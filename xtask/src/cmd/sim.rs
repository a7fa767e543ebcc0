//! `cargo xtask sim ...`: builds the simulator in release mode and runs it with the given
//! arguments (`explore`, `replay`, `bench`; see `cargo xtask sim -- --help`).

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::host::procs::{self, Group};
use crate::util::{root, target_dir, Result};

/// A sim run is bounded by its own arguments; this only guarantees nothing runs forever.
const LIMIT: Duration = Duration::from_secs(4 * 3600);

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Arguments for the simulator, e.g. `explore --seeds 10000 --scheduler pct:3`
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    pub args: Vec<String>,
}

pub fn run(args: Args) -> Result<i32> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let build = procs::run(
        Command::new(&cargo)
            .current_dir(root())
            .args(["build", "--release", "-p", "sim"]),
        Duration::from_secs(1800),
        "cargo build --release -p sim",
    )?;
    if !build.status.success() {
        return Err(format!(
            "building the simulator failed:\n{}",
            procs::tail(&build.stderr, 30)
        ));
    }
    let bin = target_dir().join("release").join("sim");
    let mut cmd = Command::new(&bin);
    cmd.args(&args.args)
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit());
    let mut g = Group::spawn(&mut cmd).map_err(|e| format!("run {}: {e}", bin.display()))?;
    match g.wait_for(LIMIT) {
        Some(status) => {
            let code = status.code().unwrap_or(1);
            g.kill();
            match procs::interrupted() {
                Some(sig) => Ok(128 + sig),
                None => Ok(code),
            }
        }
        None => {
            g.kill();
            Err(format!(
                "the simulator ran over {} h and was killed",
                LIMIT.as_secs() / 3600
            ))
        }
    }
}
