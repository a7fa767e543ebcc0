//! `cargo xtask cache list|prune|fetch|dir`: the download cache shared by every checkout
//! (`image/cache.rs`). `fetch` resolves and prepares every image input — each kernel's part,
//! the tools layer — before any VM (a CI job's first step, or a laptop before going offline)
//! and prints where each came from: as locked (cache, archive, snapshot) or newer.

use crate::image::{cache, fetch, kernel, recipe::Recipe, tools};
use crate::util::Result;

#[derive(clap::Subcommand, Debug)]
pub enum Cmd {
    /// Every cached file, least recently used first, with its size and package
    List,
    /// Remove least recently used files until the cache holds at most SIZE (default: its bound,
    /// UBLK_VM_CACHE_MAX or 8G); `--max 0` empties it, remembered fallbacks included
    Prune {
        #[arg(long, value_name = "SIZE")]
        max: Option<String>,
    },
    /// Fetch (into the cache) and prepare the inputs of the named kernels and the tools layer;
    /// print where each came from
    Fetch {
        /// Kernels (default: every locked kernel of the recipe)
        #[arg(long, value_delimiter = ',')]
        kernel: Vec<String>,
        /// Leave the tools layer out
        #[arg(long)]
        no_tools: bool,
        /// Use exactly what the locks name, or fail (exit 125); also UBLK_VM_LOCKED=1
        #[arg(long)]
        locked: bool,
        /// A project's own guest packages too (as vm-test and vm-run take them)
        #[command(flatten)]
        packages: crate::image::extra::Request,
    },
    /// Print the cache directory
    Dir,
}

pub fn run(cmd: Cmd) -> Result<i32> {
    match cmd {
        Cmd::List => list(),
        Cmd::Prune { max } => prune(max),
        Cmd::Fetch {
            kernel,
            no_tools,
            locked,
            packages,
        } => fetch_all(kernel, no_tools, locked, &packages),
        Cmd::Dir => {
            println!("{}", cache::dir().display());
            Ok(0)
        }
    }
}

fn list() -> Result<i32> {
    let entries = cache::list()?;
    let total: u64 = entries.iter().map(|e| e.size).sum();
    for e in &entries {
        let what = e.meta.as_ref().map_or("(no description)".to_string(), |m| {
            format!("{} {} ({})", m.package, m.version, m.fetched_from)
        });
        let name = e.path.file_name().unwrap_or_default().to_string_lossy();
        println!(
            "{:>9.1} MiB  {}  {what}",
            e.size as f64 / 1048576.0,
            &name[..16.min(name.len())]
        );
    }
    println!(
        "{} files, {:.1} MiB of {:.1} MiB allowed, in {}",
        entries.len(),
        total as f64 / 1048576.0,
        cache::max_bytes()? as f64 / 1048576.0,
        cache::dir().display()
    );
    Ok(0)
}

fn prune(max: Option<String>) -> Result<i32> {
    let max_bytes = match max {
        Some(s) => cache::parse_bytes(&s).ok_or_else(|| {
            crate::util::bad_input(format!(
                "--max {s:?}: expected a size such as 8G, 500M or 0"
            ))
        })?,
        None => cache::max_bytes()?,
    };
    let (files, bytes) = cache::prune(max_bytes, None)?;
    if max_bytes == 0 {
        // Emptied: the remembered resolutions go too (the next run resolves afresh).
        let _ = std::fs::remove_dir_all(cache::dir().join("resolved"));
    }
    println!(
        "removed {files} files ({:.1} MiB) from {}",
        bytes as f64 / 1048576.0,
        cache::dir().display()
    );
    Ok(0)
}

fn fetch_all(
    kernels: Vec<String>,
    no_tools: bool,
    locked: bool,
    packages: &crate::image::extra::Request,
) -> Result<i32> {
    fetch::set_locked(locked);
    crate::image::extra::check_names(&packages.packages)?;
    let recipe = Recipe::load()?;
    let names: Vec<String> = match kernels.is_empty() {
        true => recipe.kernels.iter().map(|k| k.name.clone()).collect(),
        false => kernels,
    };
    for name in &names {
        let k = crate::image::prepare_kernel(&kernel::Source::parse(name), &recipe)?;
        println!(
            "{name}: kernel part {} ({})",
            &k.manifest.key[..16],
            k.manifest.source
        );
    }
    if !no_tools {
        let layer = tools::layer(&[])?;
        let key = layer.dir.file_name().unwrap_or_default().to_string_lossy();
        println!("tools layer: {}", &key[..16.min(key.len())]);
    }
    if !packages.is_empty() {
        let layer = crate::image::extra::layer(&[], packages)?;
        let key = layer.dir.file_name().unwrap_or_default().to_string_lossy();
        println!(
            "tools layer with project packages: {}",
            &key[..16.min(key.len())]
        );
    }
    for inputs in fetch::recorded() {
        println!("{}", inputs.line());
    }
    Ok(0)
}
