//! `cargo xtask kernel-lock [--upgrade]`: show the locked guest kernel and the newest one the
//! archive offers; with --upgrade, re-resolve the recipe's package and rewrite the lock.

use std::process::Command;
use std::time::Duration;

use crate::host::procs;
use crate::image::recipe::{KernelLock, Recipe};
use crate::util::{is_root, Result};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Resolve the recipe's kernel package to the newest exact version and rewrite the lock
    #[arg(long)]
    pub upgrade: bool,
}

pub fn run(args: Args) -> Result<i32> {
    let recipe = Recipe::load()?;
    let path = recipe.lock_path();
    let current = KernelLock::load(&path).ok();
    if args.upgrade && is_root() {
        procs::run_ok(
            Command::new("apt-get").arg("update"),
            Duration::from_secs(600),
            "apt-get update",
        )?;
    }
    let newest = resolve(&recipe.kernel.package)?;
    match &current {
        Some(c) => println!(
            "locked:   {} {} (sha256 {})",
            c.package,
            c.version,
            &c.sha256[..16]
        ),
        None => println!("locked:   nothing valid in {}", path.display()),
    }
    println!(
        "newest:   {} {} (sha256 {})",
        newest.package,
        newest.version,
        &newest.sha256[..16]
    );
    if !args.upgrade {
        if current.as_ref() != Some(&newest) {
            println!("run `cargo xtask kernel-lock --upgrade` to lock the newest version");
        }
        return Ok(0);
    }
    if current.as_ref() == Some(&newest) {
        println!("kernel-lock: already up to date");
        return Ok(0);
    }
    crate::util::write_atomic(&path, newest.to_text().as_bytes())?;
    println!("kernel-lock: wrote {}; commit it. The next vm-build downloads and verifies the new kernel.", path.display());
    Ok(0)
}

/// Resolves a (meta)package to the exact linux-image package apt would download.
fn resolve(package: &str) -> Result<KernelLock> {
    let deps = procs::run_ok(
        Command::new("apt-cache").args(["depends", package]),
        Duration::from_secs(60),
        &format!("apt-cache depends {package}"),
    )?;
    let exact = image_dependency(&deps.stdout).unwrap_or_else(|| package.to_string());
    let uris = procs::run_ok(
        Command::new("apt-get").args(["download", "--print-uris", &exact]),
        Duration::from_secs(60),
        &format!("apt-get download --print-uris {exact}"),
    )?;
    parse_print_uris(&uris.stdout, &exact)
}

/// The `Depends: linux-image-...` line of `apt-cache depends` output.
fn image_dependency(text: &str) -> Option<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|d| d.starts_with("linux-image-"))
        .map(|d| d.trim().to_string())
}

/// Parses `'URL' FILENAME SIZE SHA256:HEX` from `apt-get download --print-uris`.
fn parse_print_uris(text: &str, package: &str) -> Result<KernelLock> {
    let line = text.lines().find(|l| l.starts_with('\'')).ok_or_else(|| format!("apt-get printed no download URI for {package}; is it in your apt sources? (apt-get update)"))?;
    let fields: Vec<&str> = line.split_whitespace().collect();
    let [_, filename, size, sum] = fields[..] else {
        return Err(format!("unexpected apt-get --print-uris line: {line}"));
    };
    let sha256 = sum
        .strip_prefix("SHA256:")
        .ok_or_else(|| format!("apt-get gave no SHA256 for {package}: {line}"))?;
    let version = filename
        .split('_')
        .nth(1)
        .ok_or_else(|| format!("cannot read a version from {filename}"))?;
    let lock = KernelLock {
        package: filename.split('_').next().unwrap().to_string(),
        version: version.replace("%3a", ":"),
        filename: filename.to_string(),
        size: size.parse().map_err(|_| format!("bad size in: {line}"))?,
        sha256: sha256.to_string(),
    };
    // Round-trip through the lock parser so we never write a lock we would reject.
    KernelLock::parse(&lock.to_text(), std::path::Path::new("<resolved>"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_apt_output() {
        let deps =
            "linux-image-6.12-cloud-amd64\n  Depends: linux-image-6.12.117+deb12-cloud-amd64\n";
        assert_eq!(
            image_dependency(deps).as_deref(),
            Some("linux-image-6.12.117+deb12-cloud-amd64")
        );
        let uris = "'http://deb.debian.org/debian-security/pool/updates/main/l/linux-signed-6.12-amd64/linux-image-6.12.117%2bdeb12-cloud-amd64_6.12.117-1%7edeb12u1_amd64.deb' \
linux-image-6.12.117+deb12-cloud-amd64_6.12.117-1~deb12u1_amd64.deb 34307256 SHA256:5195b288dec79e2981d6b84457f38b7ce7310a2d702930ec7d07209c7f78ce37\n";
        let l = parse_print_uris(uris, "x").unwrap();
        assert_eq!(l.package, "linux-image-6.12.117+deb12-cloud-amd64");
        assert_eq!(l.version, "6.12.117-1~deb12u1");
        assert_eq!(l.size, 34307256);
        assert!(parse_print_uris("", "pkg")
            .unwrap_err()
            .contains("no download URI for pkg"));
        assert!(parse_print_uris("'u' f.deb 1 MD5Sum:abc", "pkg")
            .unwrap_err()
            .contains("no SHA256"));
    }
}
