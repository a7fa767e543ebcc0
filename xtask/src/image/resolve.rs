//! What a kernel request resolves to in its suite today: the exact image package a
//! metapackage or `*` pattern names, the .deb files that hold it (with their archive paths)
//! and the selftests sources beside it. Used by `kernel-lock` to write locks, and by image
//! preparation when a locked kernel has left every archive (the newest of the same series).

use std::time::Duration;

use crate::host::procs;
use crate::image::apt::Apt;
use crate::image::recipe::{Deb, KernelLock, LockedDeb};
use crate::util::Result;

const LIMIT: Duration = Duration::from_secs(120);

/// The exact image package `package` resolves to (a metapackage's linux-image dependency, or
/// the newest match of a `*` pattern), with the .deb files that hold it.
pub fn resolve(apt: &Apt, package: &str) -> Result<KernelLock> {
    let image = if package.contains('*') {
        newest_match(apt, package)?
    } else {
        let mut cmd = apt.command("apt-cache");
        cmd.args(["depends", package]);
        let deps = procs::run_ok(&mut cmd, LIMIT, &format!("apt-cache depends {package}"))?;
        image_dependency(&deps.stdout).unwrap_or_else(|| package.to_string())
    };
    // Newer Debian splits the image into linux-binary-<rel> (kernel) and linux-modules-<rel>.
    let rel = image.trim_start_matches("linux-image-");
    let split = [
        format!("linux-binary-{rel}"),
        format!("linux-modules-{rel}"),
    ];
    let debs = match split
        .iter()
        .map(|p| print_uri(apt, p))
        .collect::<Result<Vec<Deb>>>()
    {
        Ok(debs) => debs,
        Err(_) => vec![print_uri(apt, &image)?],
    };
    let version = version_of(&debs[0].filename)?;
    let selftests = selftests_debs(apt, rel)?;
    let lock = KernelLock {
        package: image,
        version,
        debs,
        selftests,
        snapshot: Some(snapshot_now()),
    };
    // Round-trip through the lock parser so we never write a lock we would reject.
    KernelLock::parse(&lock.to_text(), std::path::Path::new("<resolved>"))
}

/// The oldest kernel whose source carries tools/testing/selftests/ublk.
pub const SELFTESTS_SINCE: (u64, u64) = (6, 15);

/// For a kernel release `rel` (e.g. 7.2.13+deb14-cloud-amd64) new enough to carry the ublk
/// selftests: the exact linux-source-X.Y, linux-libc-dev and liburing-dev the suite offers.
fn selftests_debs(apt: &Apt, rel: &str) -> Result<Vec<LockedDeb>> {
    let v = version_key(rel);
    let (major, minor) = (
        v.first().copied().unwrap_or(0),
        v.get(1).copied().unwrap_or(0),
    );
    if (major, minor) < SELFTESTS_SINCE {
        return Ok(Vec::new());
    }
    let packages = [
        format!("linux-source-{major}.{minor}"),
        "linux-libc-dev".into(),
        "liburing-dev".into(),
    ];
    packages
        .iter()
        .map(|p| {
            let d = print_uri(apt, p)?;
            Ok(d.locked(&version_of(&d.filename)?))
        })
        .collect()
}

/// The highest-versioned package name matching `pattern` (`*` = any run of characters),
/// ignoring debug and unsigned variants.
fn newest_match(apt: &Apt, pattern: &str) -> Result<String> {
    let prefix = pattern.split('*').next().unwrap_or_default();
    let mut cmd = apt.command("apt-cache");
    cmd.args(["pkgnames", prefix]);
    let out = procs::run_ok(&mut cmd, LIMIT, &format!("apt-cache pkgnames {prefix}"))?;
    let mut names: Vec<&str> = out
        .stdout
        .lines()
        .filter(|n| glob(pattern, n) && !n.ends_with("-dbg") && !n.ends_with("-unsigned"))
        .collect();
    names.sort_by_key(|n| version_key(n));
    names
        .last()
        .map(|n| n.to_string())
        .ok_or_else(|| format!("no package matches {pattern} in {}", apt.describe()))
}

pub fn glob(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    let mut rest = name;
    for (i, part) in parts.iter().enumerate() {
        match (i, rest.find(part)) {
            (0, Some(0)) => rest = &rest[part.len()..],
            (0, _) => return false,
            (_, Some(at)) => rest = &rest[at + part.len()..],
            (_, None) => return false,
        }
    }
    rest.is_empty() || pattern.ends_with('*')
}

/// Numbers in a name compared as numbers (7.2.13 > 7.2.9).
pub fn version_key(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap_or(0))
        .collect()
}

/// The `Depends: linux-image-...` line of `apt-cache depends` output.
fn image_dependency(text: &str) -> Option<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|d| d.starts_with("linux-image-"))
        .map(|d| d.trim().to_string())
}

pub fn print_uri(apt: &Apt, package: &str) -> Result<Deb> {
    let mut cmd = apt.command("apt-get");
    cmd.args(["download", "--print-uris", package]);
    let out = procs::run_ok(
        &mut cmd,
        LIMIT,
        &format!("apt-get download --print-uris {package}"),
    )?;
    parse_print_uris(&out.stdout, package)
}

/// Parses `'URL' FILENAME SIZE SHA256:HEX` from `apt-get download --print-uris`.
fn parse_print_uris(text: &str, package: &str) -> Result<Deb> {
    let line = text.lines().find(|l| l.starts_with('\'')).ok_or_else(|| {
        format!("apt-get printed no download URI for {package}; is it in the apt sources? (apt-get update)")
    })?;
    let fields: Vec<&str> = line.split_whitespace().collect();
    let [url, filename, size, sum] = fields[..] else {
        return Err(format!("unexpected apt-get --print-uris line: {line}"));
    };
    let sha256 = sum
        .strip_prefix("SHA256:")
        .ok_or_else(|| format!("apt-get gave no SHA256 for {package}: {line}"))?;
    let (archive, pool) = crate::image::apt::archive_and_pool(url.trim_matches('\''));
    Ok(Deb {
        package: filename.split('_').next().unwrap_or_default().to_string(),
        filename: filename.to_string(),
        size: size.parse().map_err(|_| format!("bad size in: {line}"))?,
        sha256: sha256.to_string(),
        archive,
        pool,
        sha1: None,
    })
}

/// Now as the snapshot archive's timestamp, `YYYYMMDDTHHMMSSZ`.
pub fn snapshot_now() -> String {
    crate::util::timestamp().replace('-', "T") + "Z"
}

pub fn version_of(filename: &str) -> Result<String> {
    let v = filename
        .split('_')
        .nth(1)
        .ok_or_else(|| format!("cannot read a version from {filename}"))?;
    Ok(v.replace("%3a", ":"))
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
        let d = parse_print_uris(uris, "x").unwrap();
        assert_eq!(d.package, "linux-image-6.12.117+deb12-cloud-amd64");
        assert_eq!(version_of(&d.filename).unwrap(), "6.12.117-1~deb12u1");
        assert_eq!(d.size, 34307256);
        assert_eq!(d.archive.as_deref(), Some("debian-security"));
        assert_eq!(
            d.pool.as_deref(),
            Some("pool/updates/main/l/linux-signed-6.12-amd64/linux-image-6.12.117%2bdeb12-cloud-amd64_6.12.117-1%7edeb12u1_amd64.deb")
        );
        assert_eq!(
            crate::image::apt::archive_and_pool("file:///x/y.deb"),
            (None, None)
        );
        assert!(parse_print_uris("", "pkg")
            .unwrap_err()
            .contains("no download URI for pkg"));
        assert!(parse_print_uris("'u' f.deb 1 MD5Sum:abc", "pkg")
            .unwrap_err()
            .contains("no SHA256"));
    }

    #[test]
    fn patterns_pick_the_newest_match() {
        let p = "linux-image-7.2.*-cloud-amd64";
        assert!(glob(p, "linux-image-7.2.13+deb14-cloud-amd64"));
        assert!(!glob(p, "linux-image-7.2.13+deb14-cloud-amd64-dbg"));
        assert!(!glob(p, "linux-image-7.1.3+deb14-cloud-amd64"));
        let mut v = [
            "linux-image-7.2.9-cloud-amd64",
            "linux-image-7.2.13-cloud-amd64",
        ];
        v.sort_by_key(|n| version_key(n));
        assert_eq!(v[1], "linux-image-7.2.13-cloud-amd64");
    }
}
