//! `vm-test --blktests PATH [-- TESTS]`: a user's blktests checkout, each test alone in a
//! fresh VM through blktests' own `./check` (its `requires()`, its `.out` comparison, its dmesg
//! check), read back as a verdict: `[passed]` pass, `[not run]` skip with blktests' reasons,
//! `[failed]` fail with what `check` printed under it.
//!
//! - **What runs**: the groups or tests given after `--` (`ublk`, `ublk/003`, as `./check`
//!   takes them), default the `ublk` group; each name is checked against the checkout.
//! - **What is shipped**: `check`, `common/`, the selected groups' directories, `src/`'s
//!   scripts and an optional `config` — never the user's own build products. `src/miniublk`
//!   and the other single-file C programs of `src/` are built static on the host against the
//!   locked liburing and uapi headers (`selftests::suite::uring_sysroot`), cached by content
//!   under `target/vm-test/blktests/`: the first build's time is printed, the second is instant.
//!   A program that does not build is named; the tests that need it skip as blktests says.
//! - **Which server**: blktests drives `src/miniublk`, or `rublk` when one is on PATH
//!   (`common/ublk`); `--server rublk` (a profile whose binary is named `rublk`) puts the
//!   profile's build there.
//! - **Guest packages**: `PACKAGES` beyond the tools layer, locked in `vm-images/blktests.lock`
//!   (or, with `--package`, resolved with the user's packages like any project's).
//! - **Splats**: blktests' own dmesg check stays; a `[failed]` whose only cause is dmesg lines
//!   an `--expect-splat` covers is a pass, and the platform's scan of the whole kernel log
//!   judges the rest, as for every suite.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::host::procs;
use crate::image::extra::Request;
use crate::runs::Verdict;
use crate::util::{bad_input, Result};
use crate::vmtest::run::{last_line, Judged};

/// Where the checkout lives in the guest; `./check` runs there.
pub const GUEST_DIR: &str = "root/blktests";
/// Debian packages `check` and the ublk group use beyond the tools layer: GNU awk, udevadm,
/// column, GNU diff. (Not kmod: its modprobe wants depmod's index; busybox's reads the
/// image's modules.dep.)
pub const PACKAGES: [&str; 4] = ["gawk", "udev", "bsdextrautils", "diffutils"];
/// Bounds of a checkout: files shipped and their total size.
const MAX_FILES: usize = 2000;
const MAX_TOTAL_BYTES: u64 = 64 << 20;
const MAX_FILE_BYTES: u64 = 8 << 20;
const MAX_TESTS: usize = 1000;
const BUILD_LIMIT: Duration = Duration::from_secs(300);
/// Bumped when the build changes.
const FORMAT: &str = "1";
/// `check`'s dmesg patterns (its `_check_dmesg`).
const DMESG_PATTERNS: [&str; 10] = [
    "kernel BUG at",
    "WARNING:",
    "BUG:",
    "Oops:",
    "possible recursive locking detected",
    "Internal error",
    "INFO: suspicious RCU usage",
    "INFO: possible circular locking dependency detected",
    "general protection fault:",
    "blktests failure",
];

/// A checkout, checked: the tests to run and the files that go with them.
pub struct Checkout {
    pub root: PathBuf,
    /// `GROUP/NNN`, in order.
    pub tests: Vec<String>,
    /// Files to ship, relative to `root`.
    pub files: Vec<String>,
    /// Programs built for the guest: (path under the checkout, host file).
    pub built: Vec<(String, PathBuf)>,
}

/// The guest packages of a blktests run: `PACKAGES` as `vm-images/blktests.lock` holds them;
/// with the user's `--package`s, those and `PACKAGES` resolved like any project's; with only a
/// `--package-lock`, what that lock holds (it must hold `PACKAGES` too).
pub fn packages(user: &Request) -> Request {
    let mut packages: Vec<String> = PACKAGES.map(String::from).into();
    if user.packages.is_empty() && user.lock.is_none() {
        let lock = Some(crate::image::recipe::Recipe::dir().join("blktests.lock"));
        return Request { packages, lock };
    }
    if user.packages.is_empty() {
        return user.clone();
    }
    packages.extend(
        user.packages
            .iter()
            .filter(|p| !PACKAGES.contains(&p.as_str()))
            .cloned(),
    );
    Request {
        packages,
        lock: user.lock.clone(),
    }
}

/// The checkout at `root` with the tests `specs` name (default the `ublk` group), its
/// programs built.
pub fn open(root: &Path, specs: &[String]) -> Result<Checkout> {
    if !root.join("check").is_file() || !root.join("common/rc").is_file() {
        return Err(bad_input(format!(
            "--blktests {}: not a blktests checkout (no ./check and common/rc); clone https://github.com/osandov/blktests",
            root.display()
        )));
    }
    let default = ["ublk".to_string()];
    let specs = if specs.is_empty() {
        &default[..]
    } else {
        specs
    };
    let tests = test_names(root, specs)?;
    let groups: BTreeSet<&str> = tests.iter().filter_map(|t| t.split('/').next()).collect();
    let files = shipped(root, &groups)?;
    let built = build(root)?;
    Ok(Checkout {
        root: root.to_path_buf(),
        tests,
        files,
        built,
    })
}

/// Each spec a group (`tests/GROUP/`) or a test (`tests/GROUP/NNN`) of the checkout.
fn test_names(root: &Path, specs: &[String]) -> Result<Vec<String>> {
    let plain = |s: &str| {
        !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
    };
    let mut tests = BTreeSet::new();
    for spec in specs {
        let (group, test) = spec.split_once('/').unwrap_or((spec, ""));
        let dir = root.join("tests").join(group);
        let ok = plain(group) && (test.is_empty() || is_test_name(test)) && dir.is_dir();
        if !ok || (!test.is_empty() && !dir.join(test).is_file()) {
            return Err(bad_input(format!(
                "blktests: no group or test {} in {} (give GROUP or GROUP/NNN, as ./check takes them)",
                crate::text::term(spec),
                root.join("tests").display()
            )));
        }
        if !test.is_empty() {
            tests.insert(spec.clone());
            continue;
        }
        for e in std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))? {
            let name = e.map_err(|e| e.to_string())?.file_name();
            let name = name.to_string_lossy();
            if is_test_name(&name) && dir.join(&*name).is_file() {
                tests.insert(format!("{group}/{name}"));
            }
        }
    }
    if tests.is_empty() || tests.len() > MAX_TESTS {
        return Err(bad_input(format!(
            "blktests: {} tests selected in {}; between 1 and {MAX_TESTS}",
            tests.len(),
            root.display()
        )));
    }
    Ok(tests.into_iter().collect())
}

/// blktests' test files are three digits (`find -name '[0-9][0-9][0-9]'`).
fn is_test_name(n: &str) -> bool {
    n.len() == 3 && n.bytes().all(|b| b.is_ascii_digit())
}

/// `check`, `config`, `common/`, the groups' directories and `src/`'s scripts, bounded.
fn shipped(root: &Path, groups: &BTreeSet<&str>) -> Result<Vec<String>> {
    let mut files: Vec<String> = ["check", "config"]
        .into_iter()
        .filter(|f| root.join(f).is_file())
        .map(String::from)
        .collect();
    let mut dirs = vec!["common".to_string()];
    dirs.extend(groups.iter().map(|g| format!("tests/{g}")));
    for d in &dirs {
        for f in crate::image::tools::walk_files(&root.join(d))? {
            let rel = f.strip_prefix(root).unwrap_or(&f).display().to_string();
            files.push(rel);
        }
    }
    let src = root.join("src");
    if src.is_dir() {
        for f in crate::image::tools::walk_files(&src)? {
            if f.extension().is_some_and(|x| x == "sh") {
                files.push(f.strip_prefix(root).unwrap_or(&f).display().to_string());
            }
        }
    }
    let mut total_bytes = 0;
    for f in &files {
        let len = std::fs::symlink_metadata(root.join(f)).map_or(0, |m| m.len());
        total_bytes += len;
        if len > MAX_FILE_BYTES || files.len() > MAX_FILES || total_bytes > MAX_TOTAL_BYTES {
            return Err(bad_input(format!(
                "--blktests {}: {} files, {} MiB (at {f}): more than a checkout ships (at most {MAX_FILES} files of {} MiB each, {} MiB in all)",
                root.display(),
                files.len(),
                total_bytes >> 20,
                MAX_FILE_BYTES >> 20,
                MAX_TOTAL_BYTES >> 20
            )));
        }
    }
    files.sort();
    files.dedup();
    Ok(files)
}

/// `src/`'s C programs (`miniublk` and the single-file ones), static, cached by content.
fn build(root: &Path) -> Result<Vec<(String, PathBuf)>> {
    let sources = c_sources(root)?;
    if sources.is_empty() {
        return Ok(Vec::new());
    }
    let debs = crate::selftests::suite::uring_debs()?;
    let mut parts: Vec<(String, Vec<u8>)> = vec![("format".into(), FORMAT.into())];
    parts.push(("debs".into(), debs.into_bytes()));
    for s in &sources {
        parts.push((
            s.clone(),
            crate::input::read_bytes(&root.join(s), MAX_FILE_BYTES)?,
        ));
    }
    let refs: Vec<(&str, &[u8])> = parts.iter().map(|(k, v)| (k.as_str(), &v[..])).collect();
    let key = crate::util::key_of(&refs);
    let dir = crate::util::target_dir()
        .join("vm-test/blktests")
        .join(&key[..16]);
    if !dir.join(".complete").is_file() {
        compile_all(root, &sources, &dir)?;
    }
    let listed = std::fs::read_to_string(dir.join(".complete")).unwrap_or_default();
    Ok((listed.lines())
        .map(|rel| (rel.to_string(), dir.join(rel)))
        .collect())
}

/// `src/*.c` and `src/*/*.c`, relative to the checkout.
fn c_sources(root: &Path) -> Result<Vec<String>> {
    let src = root.join("src");
    if !src.is_dir() {
        return Ok(Vec::new());
    }
    let mut out: Vec<String> = (crate::image::tools::walk_files(&src)?.iter())
        .filter(|f| f.extension().is_some_and(|x| x == "c"))
        .map(|f| f.strip_prefix(root).unwrap_or(f).display().to_string())
        .collect();
    out.sort();
    Ok(out)
}

/// Builds every source into `dir` (by its path without `.c`); `.complete` lists what built.
/// miniublk failing to build is an error (the ublk group cannot run without it); any other
/// program is named and left out.
fn compile_all(root: &Path, sources: &[String], dir: &Path) -> Result<()> {
    let start = Instant::now();
    let spinner = crate::ui::spinner("building blktests' src/ programs (static)");
    let tmp = dir.with_extension("tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    let sysroot = tmp.join("sysroot");
    let used = crate::selftests::suite::uring_sysroot(&sysroot);
    let mut built = Vec::new();
    let mut failed = Vec::new();
    let result = used.and_then(|used| {
        for s in sources {
            let prog = s.trim_end_matches(".c").to_string();
            match compile(root, s, &sysroot, &tmp.join(&prog)) {
                Ok(()) => built.push(prog),
                Err(e) if prog == "src/miniublk" => return Err(e),
                Err(_) => failed.push(prog),
            }
        }
        Ok(used)
    });
    spinner.finish_and_clear();
    let used = result?;
    let _ = std::fs::remove_dir_all(&sysroot);
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&tmp, dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    crate::util::write_atomic(&dir.join(".complete"), built.join("\n").as_bytes())?;
    eprintln!(
        "vm-test: built blktests' {} static in {:.1} s against {}",
        built.join(" "),
        start.elapsed().as_secs_f64(),
        used.lines().collect::<Vec<_>>().join(", ")
    );
    if !failed.is_empty() {
        eprintln!(
            "vm-test: blktests' {} did not build static; the tests that need them skip",
            failed.join(" ")
        );
    }
    Ok(())
}

/// One program, as blktests' src/Makefile builds it, static.
fn compile(root: &Path, source: &str, sysroot: &Path, out: &Path) -> Result<()> {
    if let Some(d) = out.parent() {
        std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    let mut cmd = Command::new("gcc");
    cmd.current_dir(root)
        .args(["-O2", "-static", "-D_GNU_SOURCE", "-DHAVE_LINUX_BLKZONED_H"])
        .args(crate::selftests::suite::sysroot_flags(sysroot))
        .arg("-o")
        .arg(out)
        .arg(source)
        .args(["-luring", "-lpthread"]);
    let o = procs::run(&mut cmd, BUILD_LIMIT, &format!("gcc {source}"))?;
    if !o.status.success() {
        return Err(format!(
            "blktests: building {source} static failed:\n{}",
            procs::tail(&o.stderr, 30)
        ));
    }
    Ok(())
}

/// The guest command for one test: `./check` on it, then the tail of what it left.
pub fn command(test: &str) -> String {
    let results = "/tmp/blktests-results";
    format!(
        "cd /{GUEST_DIR} && ./check -o {results} {test}; rc=$?; \
         for f in {results}/nodev/{test}.full {results}/nodev/{test}.out.bad {results}/nodev/{test}.dmesg; do \
         [ -s \"$f\" ] && {{ echo \"==> ${{f#{results}/}} (last 40 lines)\"; tail -n 40 \"$f\"; }}; done; exit $rc"
    )
}

/// `check`'s status line for `test` and what it printed under it.
pub fn verdict_of(status: i32, output: &str, test: &str, expected: &[String]) -> Judged {
    let lines: Vec<&str> = output.lines().collect();
    let found = lines.iter().enumerate().rev().find_map(|(i, l)| {
        let l = l.trim_end();
        let rest = l.strip_prefix(test).filter(|r| r.starts_with(' '))?;
        let status = ["passed", "failed", "not run"]
            .into_iter()
            .find(|s| rest.ends_with(&format!(" [{s}]")))?;
        Some((i, status))
    });
    let Some((at, said)) = found else {
        return (
            Verdict::Fail,
            Some(format!(
                "blktests printed no result for {test} (exit {status}): {}",
                last_line(output, "no output")
            )),
        );
    };
    let under: Vec<&str> = (lines[at + 1..].iter())
        .take_while(|l| l.starts_with("    "))
        .map(|l| l[4..].trim_end())
        .filter(|l| !l.split_whitespace().any(|w| w == "..."))
        .collect();
    let text = crate::text::bound(&reason(&under), 400).into_owned();
    match said {
        "passed" => (Verdict::Pass, None),
        "not run" if text.is_empty() => (Verdict::Skip, Some("blktests: not run".into())),
        "not run" => (Verdict::Skip, Some(format!("blktests: not run: {text}"))),
        _ if only_expected_dmesg(&under, expected) => (Verdict::Pass, None),
        _ if text.is_empty() => (Verdict::Fail, Some("blktests: failed".into())),
        _ => (Verdict::Fail, Some(format!("blktests: failed: {text}"))),
    }
}

/// What `check` printed under a status line, in one line: an output diff as its changed lines
/// (`output differs from 001.out: -Test complete; +modprobe: ...`), anything else as is.
fn reason(under: &[&str]) -> String {
    if let Some(("something found in dmesg:", excerpt)) = under.split_first().map(|(a, b)| (*a, b))
    {
        let hits: Vec<&str> = (excerpt.iter().map(|l| l.trim()))
            .filter(|l| DMESG_PATTERNS.iter().any(|p| l.contains(p)))
            .collect();
        return format!("something found in dmesg: {}", hits.join("; "));
    }
    let diff = under.iter().any(|l| l.starts_with("--- tests/"));
    if !diff {
        return (under.iter().map(|l| l.trim()))
            .collect::<Vec<_>>()
            .join("; ");
    }
    let expected = (under.iter())
        .find_map(|l| l.strip_prefix("--- tests/"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|p| p.rsplit('/').next())
        .unwrap_or(".out");
    let changed: Vec<&str> = (under.iter().copied())
        .filter(|l| !l.starts_with("--- ") && !l.starts_with("+++ ") && !l.starts_with("@@"))
        .filter(|l| l.starts_with('-') || l.starts_with('+') || !l.starts_with(' '))
        .map(str::trim)
        .filter(|l| !l.starts_with("(Run 'diff") && *l != "...")
        .collect();
    format!("output differs from {expected}: {}", changed.join("; "))
}

/// A failure that is blktests' dmesg check alone, every matching line an expected splat.
fn only_expected_dmesg(under: &[&str], expected: &[String]) -> bool {
    let Some(("something found in dmesg:", excerpt)) = under.split_first().map(|(a, b)| (*a, b))
    else {
        return false;
    };
    let hits: Vec<&&str> = (excerpt.iter())
        .filter(|l| DMESG_PATTERNS.iter().any(|p| l.contains(p)))
        .collect();
    !expected.is_empty()
        && !hits.is_empty()
        && hits
            .iter()
            .all(|l| expected.iter().any(|e| l.contains(e.as_str())))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSED: &str = "ublk/001 (test ublk delete)                                  \n    runtime    ...  \nublk/001 (test ublk delete)                                   [passed]\n    runtime    ...  1.234s\n";

    #[test]
    fn checks_status_lines_are_verdicts_with_blktests_reasons() {
        assert_eq!(
            verdict_of(0, PASSED, "ublk/001", &[]),
            (Verdict::Pass, None)
        );
        let notrun = "ublk/003 (mount)                                             [not run]\n    mkfs.ext4 is not available\n    driver ublk_drv is not available\n";
        assert_eq!(
            verdict_of(0, notrun, "ublk/003", &[]).1.unwrap(),
            "blktests: not run: mkfs.ext4 is not available; driver ublk_drv is not available"
        );
        let failed = "ublk/002 (x)                                                 [failed]\n    runtime    ...  3.0s\n    --- tests/ublk/002.out\t2026-12-05 00:59:00 +0000\n    +++ /tmp/r/nodev/ublk/002.out.bad\t2026-12-05\n    @@ -1,2 +1,2 @@\n     Running ublk/002\n    -Test complete\n    +modprobe: FATAL: no ublk_drv\n==> nodev/ublk/002.full (last 40 lines)\nadd failed\n";
        let (v, why) = verdict_of(1, failed, "ublk/002", &[]);
        assert_eq!(v, Verdict::Fail);
        assert_eq!(
            why.unwrap(),
            "blktests: failed: output differs from 002.out: -Test complete; +modprobe: FATAL: no ublk_drv"
        );
        let exited = "ublk/002 (x)                                                 [failed]\n    exited with status 1\n";
        assert_eq!(
            verdict_of(1, exited, "ublk/002", &[]).1.unwrap(),
            "blktests: failed: exited with status 1"
        );
        // A test named like a prefix of another is not confused with it.
        let (v, why) = verdict_of(0, PASSED, "ublk/00", &[]);
        assert_eq!(v, Verdict::Fail);
        assert!(why
            .unwrap()
            .starts_with("blktests printed no result for ublk/00 "));
        let (v, why) = verdict_of(2, "check: bad option\n", "ublk/001", &[]);
        assert_eq!(v, Verdict::Fail);
        assert!(why
            .unwrap()
            .contains("no result for ublk/001 (exit 2): check: bad option"));
    }

    #[test]
    fn a_dmesg_failure_passes_only_when_every_line_is_expected() {
        let out = "ublk/004 (x)                                                 [failed]\n    runtime    ...  3.0s\n    something found in dmesg:\n    [   10.1] run blktests ublk/004 at 2026-12-05 01:00:00\n    [   10.2] WARNING: CPU: 0 PID: 9 at drivers/block/ublk_drv.c:99 ublk_x\n";
        let expected = vec!["ublk_drv.c:99".to_string()];
        assert_eq!(verdict_of(1, out, "ublk/004", &expected).0, Verdict::Pass);
        assert_eq!(
            verdict_of(1, out, "ublk/004", &[]).1.unwrap(),
            "blktests: failed: something found in dmesg: [   10.2] WARNING: CPU: 0 PID: 9 at drivers/block/ublk_drv.c:99 ublk_x"
        );
        let other = vec!["ublk_drv.c:98".to_string()];
        assert_eq!(verdict_of(1, out, "ublk/004", &other).0, Verdict::Fail);
        let also = out.replace("ublk_x\n", "ublk_x\n    [ 10.3] BUG: unable to handle\n");
        assert_eq!(verdict_of(1, &also, "ublk/004", &expected).0, Verdict::Fail);
    }

    #[test]
    fn commands_name_the_test_and_its_leftovers() {
        let c = command("ublk/001");
        assert!(c.starts_with("cd /root/blktests && ./check -o /tmp/blktests-results ublk/001;"));
        assert!(c.contains("nodev/ublk/001.full"));
        assert!(c.ends_with("exit $rc"));
    }
}
