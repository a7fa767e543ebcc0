//! `cargo xtask scenario check [FILES]`: validate scenario files without a VM (exit 0 all
//! valid, 2 any invalid: the code vm-e2e gives the same file).

use std::path::PathBuf;

use crate::scenario::model::Scenario;
use crate::util::Result;

#[derive(clap::Subcommand, Debug)]
pub enum Cmd {
    /// Parse and validate scenario files (default: scenarios/*.yaml)
    Check { files: Vec<PathBuf> },
}

pub fn run(cmd: Cmd) -> Result<i32> {
    match cmd {
        Cmd::Check { files } => {
            let files = if files.is_empty() {
                crate::scenario::all_files()?
            } else {
                files
            };
            let mut bad = 0;
            for f in &files {
                match Scenario::load(f) {
                    Ok(s) => println!(
                        "ok   {} ({}: {} steps, timeout {} s): {}",
                        f.display(),
                        s.name,
                        s.steps.len(),
                        s.timeout.0,
                        s.description
                    ),
                    Err(e) => {
                        bad += 1;
                        eprintln!("{e}");
                    }
                }
            }
            // An invalid file is bad input, as it is to vm-e2e (exit 2).
            Ok(if bad > 0 { 2 } else { 0 })
        }
    }
}
