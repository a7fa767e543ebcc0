//! `cargo xtask kernels`: the Debian kernels a run can boot (`--kernel NAME`), each with its
//! locked version, where it comes from, whether its kernel part is cached, and the ublk features
//! it reported when it last booted.

use crate::image::kernel;
use crate::image::recipe::{KernelLock, Recipe};
use crate::util::Result;

pub fn run() -> Result<i32> {
    let recipe = Recipe::load()?;
    println!(
        "{:<20} {:<26} {:<9} {:<7} ublk features (when last booted)",
        "name", "locked version", "suite", "cached"
    );
    for (i, spec) in recipe.kernels.iter().enumerate() {
        let lock = KernelLock::load(&spec.lock_path()).ok();
        let version = match (&lock, spec.moving) {
            (_, true) => "moving (newest)".to_string(),
            (Some(l), _) => l.version.clone(),
            (None, _) => "not locked".to_string(),
        };
        let cached = lock
            .as_ref()
            .is_some_and(|l| crate::image::debian::is_cached(&recipe, l));
        let features = lock
            .as_ref()
            // Debian names the image package after the release: linux-image-<release>.
            .and_then(|l| l.package.strip_prefix("linux-image-"))
            .and_then(kernel::known_features)
            .map_or("(not booted yet)".to_string(), |f| f.join(" "));
        let name = if i == 0 {
            format!("{} (debian)", spec.name)
        } else {
            spec.name.clone()
        };
        println!(
            "{name:<20} {version:<26} {:<9} {:<7} {features}",
            spec.suite.as_deref().unwrap_or("host"),
            if cached { "yes" } else { "no" },
        );
    }
    Ok(0)
}
