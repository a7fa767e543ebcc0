//! Host dependencies. Missing ones are installed with apt-get when we are root on a Debian
//! or Ubuntu host; otherwise the error names the exact command to run.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::host::procs;
use crate::image::elf;
use crate::image::kernel::Source;
use crate::util::{is_root, which, Result};

#[derive(Clone, Copy, Debug)]
pub struct Need {
    /// What must be present, as shown to the user.
    pub what: &'static str,
    /// The Debian/Ubuntu package providing it.
    pub package: &'static str,
    pub present: fn() -> bool,
}

impl PartialEq for Need {
    fn eq(&self, other: &Need) -> bool {
        self.what == other.what && self.package == other.package
    }
}

const QEMU: Need = Need {
    what: "qemu-system-x86_64",
    package: "qemu-system-x86",
    present: || which("qemu-system-x86_64").is_some(),
};
const BUSYBOX: Need = Need {
    what: "a static busybox",
    package: "busybox-static",
    present: || busybox().is_ok(),
};
const DPKG_DEB: Need = Need {
    what: "dpkg-deb",
    package: "dpkg",
    present: || which("dpkg-deb").is_some(),
};
const APT: Need = Need {
    what: "apt-get",
    package: "apt",
    present: || which("apt-get").is_some(),
};

const MKE2FS: Need = Need {
    what: "mke2fs",
    package: "e2fsprogs",
    present: || which("mke2fs").is_some(),
};
/// What building the guest tools layer needs on the host (Debian's archive keyring signs the
/// private apt configuration's suite).
pub const TOOLS_LAYER: [Need; 4] = [
    APT,
    DPKG_DEB,
    MKE2FS,
    Need {
        what: "the Debian archive keyring",
        package: "debian-archive-keyring",
        present: || std::path::Path::new(crate::image::apt::KEYRING).exists(),
    },
];

/// What building the kernel's ublk selftests (a static kublk) needs on the host.
pub const SELFTESTS_BUILD: [Need; 5] = [
    APT,
    DPKG_DEB,
    Need {
        what: "gcc",
        package: "gcc",
        present: || which("gcc").is_some(),
    },
    Need {
        what: "the static C library (libc.a)",
        package: "libc6-dev",
        present: || std::path::Path::new("/usr/lib/x86_64-linux-gnu/libc.a").exists(),
    },
    Need {
        what: "xz",
        package: "xz-utils",
        present: || which("xz").is_some(),
    },
];

/// What building and booting an image from `source` needs on the host.
pub fn needs(source: &Source) -> Vec<Need> {
    let mut v = vec![QEMU, BUSYBOX];
    if matches!(source, Source::Debian(_)) {
        v.extend([APT, DPKG_DEB]);
    }
    v
}

pub fn ensure(needs: Vec<Need>) -> Result<()> {
    let missing: Vec<Need> = needs.into_iter().filter(|n| !(n.present)()).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let pkgs = plan(&missing, is_root(), which("apt-get").is_some())?;
    apt_install(&pkgs)?;
    if let Some(n) = missing.iter().find(|n| !(n.present)()) {
        return Err(format!(
            "{} is still missing after installing {}",
            n.what, n.package
        ));
    }
    Ok(())
}

/// Debian packages by name (e.g. what a server profile's build needs), installed if missing.
pub fn ensure_packages(pkgs: &[String]) -> Result<()> {
    let missing: Vec<&str> = pkgs
        .iter()
        .map(|p| p.as_str())
        .filter(|p| !installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() || which("apt-get").is_none() {
        return Err(format!(
            "missing host packages: {}. Run:\n    sudo apt-get install -y --no-install-recommends {}",
            missing.join(" "),
            missing.join(" ")
        ));
    }
    apt_install(&missing)
}

fn installed(pkg: &str) -> bool {
    let out = procs::run(
        Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]),
        Duration::from_secs(30),
        "dpkg-query",
    );
    out.is_ok_and(|o| o.stdout.contains("install ok installed"))
}

/// apt-get install, with one `apt-get update` if the first attempt fails.
fn apt_install(pkgs: &[&str]) -> Result<()> {
    let command = format!(
        "apt-get install -y --no-install-recommends {}",
        pkgs.join(" ")
    );
    eprintln!(
        "xtask: installing missing host packages: {}",
        pkgs.join(" ")
    );
    let install = || {
        let mut cmd = Command::new("apt-get");
        cmd.env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "--no-install-recommends"])
            .args(pkgs);
        procs::run(&mut cmd, Duration::from_secs(900), &command)
    };
    let mut out = install()?;
    if !out.status.success() {
        // Fresh machines and containers often have no package lists yet.
        procs::run_ok(
            Command::new("apt-get").arg("update"),
            Duration::from_secs(600),
            "apt-get update",
        )?;
        out = install()?;
    }
    if !out.status.success() {
        return Err(format!(
            "{command} failed:\n{}",
            procs::tail(&out.stderr, 20)
        ));
    }
    Ok(())
}

/// The packages to install for `missing`, or the error telling the user what to run.
fn plan(missing: &[Need], root: bool, has_apt: bool) -> Result<Vec<&'static str>> {
    let pkgs: Vec<&str> = missing.iter().map(|n| n.package).collect();
    let whats: Vec<&str> = missing.iter().map(|n| n.what).collect();
    if root && has_apt {
        return Ok(pkgs);
    }
    let how = if has_apt {
        format!(
            "sudo apt-get install -y --no-install-recommends {}",
            pkgs.join(" ")
        )
    } else {
        format!(
            "install {} with your package manager (Debian/Ubuntu packages: {})",
            whats.join(", "),
            pkgs.join(" ")
        )
    };
    Err(format!(
        "missing host dependencies: {}. Run:\n    {how}",
        whats.join(", ")
    ))
}

/// A statically linked busybox (the guest has no libc).
pub fn busybox() -> Result<PathBuf> {
    for p in [
        "/bin/busybox",
        "/usr/bin/busybox",
        "/usr/lib/initramfs-tools/bin/busybox",
    ] {
        let p = PathBuf::from(p);
        if let Ok(data) = std::fs::read(&p) {
            if elf::is_static(&data).unwrap_or(false) {
                return Ok(p);
            }
        }
    }
    Err("no statically linked busybox found (install the busybox-static package)".into())
}

pub fn qemu() -> Result<PathBuf> {
    which("qemu-system-x86_64")
        .ok_or_else(|| "qemu-system-x86_64 not found (install the qemu-system-x86 package)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debian_provider_needs_apt_tools() {
        assert!(needs(&Source::default_debian()).contains(&DPKG_DEB));
        assert!(!needs(&Source::Host).contains(&DPKG_DEB));
        assert!(needs(&Source::Path("/x".into())).contains(&QEMU));
    }

    #[test]
    fn missing_dependencies_are_installed_as_root_else_explained() {
        let fake = Need {
            what: "frobnicator",
            package: "frob-utils",
            present: || false,
        };
        assert_eq!(
            plan(&[fake, QEMU], true, true).unwrap(),
            vec!["frob-utils", "qemu-system-x86"]
        );
        let e = plan(&[fake, QEMU], false, true).unwrap_err();
        assert!(
            e.contains("frobnicator")
                && e.contains(
                    "sudo apt-get install -y --no-install-recommends frob-utils qemu-system-x86"
                ),
            "{e}"
        );
        let e = plan(&[fake], true, false).unwrap_err();
        assert!(
            e.contains("with your package manager") && e.contains("frob-utils"),
            "{e}"
        );
    }
}
