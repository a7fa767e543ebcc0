//! `cargo xtask servers [FILES]`: list the built-in server profiles, or check profile files
//! (file:line:column errors, exit 2 as vm-e2e --server gives them) without a VM.

use std::path::PathBuf;

use crate::image::recipe::Recipe;
use crate::server::{builtin_names, Profile, DIR};
use crate::util::{root, Result};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Profile files to check (default: the built-in ones in vm-images/servers/)
    pub files: Vec<PathBuf>,
}

pub fn run(args: Args) -> Result<i32> {
    let files = if args.files.is_empty() {
        let dir = root().join(DIR);
        builtin_names()
            .iter()
            .map(|n| dir.join(format!("{n}.yaml")))
            .collect()
    } else {
        args.files
    };
    let recipe = Recipe::load()?;
    let mut bad = 0;
    for f in &files {
        let loaded = Profile::load(f).and_then(|mut p| p.prepare(&recipe).map(|()| p));
        match loaded {
            Ok(p) => println!("ok   {}\n", p.describe()),
            Err(e) => {
                bad += 1;
                eprintln!("{e}");
            }
        }
    }
    // An invalid profile is bad input, as it is to vm-e2e --server (exit 2).
    Ok(if bad > 0 { 2 } else { 0 })
}
