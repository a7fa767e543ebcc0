//! `vm-test --go PATH [-- PACKAGES]`: a Go module's tests. Built on the host with a Go
//! toolchain the platform takes from Debian and locks like the tools layer
//! (`vm-images/go.lock`: golang-1.24-go and its sources, by sha256; `locks` keeps it fresh),
//! fetched by the rules of every image input and unpacked once per lock under
//! `target/vm-test/go/`. Each package with tests becomes one static test binary (`go test -c`,
//! `CGO_ENABLED=0`); its tests are listed on the host (`-test.list`) and each runs alone in a
//! fresh VM (`-test.run '^NAME$' -test.v`), from the package directory as `go test` would.
//!
//! Nothing is downloaded for the module: `GOPROXY=off`, `GOTOOLCHAIN=local`, a private module
//! cache. A module must build offline — no dependencies, or its dependencies vendored (`go mod
//! vendor`: `-mod=vendor` is used when `vendor/` exists). The build cache (`GOCACHE`) is kept,
//! so a second build is instant.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::host::procs;
use crate::image::apt::Apt;
use crate::image::fetch;
use crate::image::tools::ToolsLock;
use crate::runs::Verdict;
use crate::util::{bad_input, Result};

/// The Debian suite and packages of the toolchain.
const SUITE: &str = "trixie";
const PACKAGES: [&str; 2] = ["golang-1.24-go", "golang-1.24-src"];
/// GOROOT inside the unpacked packages.
const GOROOT: &str = "usr/lib/go-1.24";
const UPGRADE: &str = "cargo xtask locks --upgrade";
const BUILD_LIMIT: Duration = Duration::from_secs(1800);
const LIST_LIMIT: Duration = Duration::from_secs(60);
/// Most packages and tests one module may have (a session's bound).
const MAX_PACKAGES: usize = 500;
const MAX_TESTS: usize = 5000;

/// A module's tests, built.
pub struct Built {
    pub binaries: Vec<Binary>,
    pub tests: Vec<GoTest>,
}

/// One package's test binary.
pub struct Binary {
    pub path: PathBuf,
    /// The package's import path (the reports' prefix) and directory (the tests' cwd).
    pub import_path: String,
    pub dir: PathBuf,
    /// The package's `testdata/` files (Go's convention for what tests read), shipped along.
    pub data: Vec<PathBuf>,
}

pub struct GoTest {
    pub binary: usize,
    pub name: String,
}

impl GoTest {
    /// Its name in the reports: `import/path.TestName`.
    pub fn id(&self, built: &Built) -> String {
        format!("{}.{}", built.binaries[self.binary].import_path, self.name)
    }
}

pub fn lock_path() -> PathBuf {
    crate::image::recipe::Recipe::dir().join("go.lock")
}

/// The locked toolchain, unpacked: its GOROOT.
pub fn toolchain() -> Result<PathBuf> {
    let path = lock_path();
    let text = crate::input::read(&path)
        .map_err(|e| format!("{e}; the Go toolchain is locked by `{UPGRADE}`"))?;
    let lock = ToolsLock::parse(&text, &path)?;
    let key = crate::util::key_of(&[("go", lock.to_text().as_bytes())]);
    let dir = crate::util::target_dir()
        .join("vm-test/go")
        .join(&key[..16]);
    let goroot = dir.join(GOROOT);
    if dir.join(".complete").is_file() {
        return Ok(goroot);
    }
    let _guard = crate::image::store::lock(Duration::from_secs(1800))?;
    crate::host::deps::ensure(crate::host::deps::TOOLS_LAYER.to_vec())?;
    let lock_ref = fetch::LockRef {
        part: "go toolchain".into(),
        path: &path,
        upgrade: UPGRADE,
        snapshot: lock.snapshot.as_deref(),
        moving: false,
    };
    let apt = Apt::new(Some(&lock.suite));
    let (debs, _, inputs) = fetch::all(&apt, &lock_ref, &lock.packages)?;
    fetch::record(&inputs);
    let _ = std::fs::remove_dir_all(&dir);
    for deb in &debs {
        crate::image::tools::unpack(deb, &dir)?;
    }
    if !goroot.join("bin/go").is_file() {
        return Err(format!("the Go packages hold no {GOROOT}/bin/go"));
    }
    crate::util::write_atomic(&dir.join(".complete"), inputs.line().as_bytes())?;
    eprintln!("vm-test: {}", inputs.line());
    Ok(goroot)
}

/// `locks`: the Go lock against its suite; rewritten with `upgrade`. Returns 1 when stale.
pub fn check_lock(upgrade: bool) -> Result<usize> {
    let path = lock_path();
    if !path.exists() {
        // A recipe without one (a test's, a fork's) has no Go toolchain to keep fresh.
        println!(
            "go toolchain: {} absent; vm-test --go is not set up here",
            path.display()
        );
        return Ok(0);
    }
    let apt = Apt::new(Some(SUITE));
    apt.update(upgrade)?;
    let mut newest = Vec::new();
    for p in PACKAGES {
        let d = crate::image::resolve::print_uri(&apt, p)?;
        newest.push(d.locked(&crate::image::resolve::version_of(&d.filename)?));
    }
    let current = crate::input::read(&path).and_then(|t| ToolsLock::parse(&t, &path));
    let same = |l: &ToolsLock| {
        (l.packages.iter().zip(&newest)).all(|(a, b)| a.sha256 == b.sha256)
            && l.packages.len() == newest.len()
    };
    println!("go toolchain ({} from Debian {SUITE}):", PACKAGES.join(" "));
    if current.as_ref().is_ok_and(same) {
        println!("  up to date");
        return Ok(0);
    }
    for d in &newest {
        println!("  newest {} {}", d.package, d.version);
    }
    if !upgrade {
        println!("  run `{UPGRADE}` to lock the newest");
        return Ok(1);
    }
    for d in &mut newest {
        let file = fetch::download(&apt, &format!("{}={}", d.package, d.version), d, "archive")?;
        d.sha1 = Some(crate::image::apt::sha1_file(&file)?);
    }
    let lock = ToolsLock {
        suite: SUITE.into(),
        packages: newest,
        libraries: Vec::new(),
        executables: vec!["go".into()],
        snapshot: Some(crate::image::resolve::snapshot_now()),
    };
    let text = format!(
        "# The Go toolchain vm-test --go builds with, verified by sha256 before use.\n\
         # Written by `{UPGRADE}`; do not edit by hand.\n{}",
        serde_yaml::to_string(&lock).expect("lock serialises")
    );
    crate::util::write_atomic(&path, text.as_bytes())?;
    println!("  wrote {}; commit it", path.display());
    Ok(1)
}

/// The environment every go command runs in: offline, local toolchain, private caches.
fn go_command(goroot: &Path, module: &Path, work: &Path) -> Command {
    let mut cmd = Command::new(goroot.join("bin/go"));
    cmd.current_dir(module)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", work)
        .env("GOROOT", goroot)
        .env("GOTOOLCHAIN", "local")
        .env("GOPROXY", "off")
        .env("GOENV", "off")
        .env("GOTELEMETRY", "off")
        .env(
            "GOFLAGS",
            if module.join("vendor").is_dir() {
                "-mod=vendor"
            } else {
                "-mod=mod"
            },
        )
        .env("CGO_ENABLED", "0")
        .env("GOCACHE", work.join("cache"))
        .env("GOPATH", work.join("path"))
        .env("GOMODCACHE", work.join("modcache"))
        .stdin(std::process::Stdio::null());
    cmd
}

/// Builds every tested package of the module (or `packages`) static; lists every test.
pub fn build(dir: &Path, packages: &[String], work: &Path) -> Result<Built> {
    if !dir.join("go.mod").is_file() {
        return Err(bad_input(format!(
            "--go {}: no go.mod there; name a module directory",
            dir.display()
        )));
    }
    let module = std::fs::canonicalize(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let goroot = toolchain()?;
    let t0 = Instant::now();
    let pkgs = tested_packages(&goroot, &module, packages, work)?;
    let mut binaries = Vec::new();
    for (i, (import_path, pkg_dir)) in pkgs.into_iter().enumerate() {
        let out = work.join("bin").join(format!("{i}.test"));
        let mut cmd = go_command(&goroot, &module, work);
        cmd.args(["test", "-c", "-o"]).arg(&out).arg(&import_path);
        run_go(&mut cmd, BUILD_LIMIT, &format!("go test -c {import_path}"))?;
        let data = testdata(&pkg_dir)?;
        binaries.push(Binary {
            path: out,
            import_path,
            dir: pkg_dir,
            data,
        });
    }
    let mut tests = Vec::new();
    for (i, b) in binaries.iter().enumerate() {
        let mut cmd = Command::new(&b.path);
        cmd.current_dir(&b.dir).args(["-test.list", "."]);
        let out = run_go(
            &mut cmd,
            LIST_LIMIT,
            &format!("{} -test.list", b.import_path),
        )?;
        for name in out.lines().map(str::trim).filter(|l| is_test_name(l)) {
            tests.push(GoTest {
                binary: i,
                name: name.to_string(),
            });
        }
        if tests.len() > MAX_TESTS {
            return Err(bad_input(format!("more than {MAX_TESTS} tests")));
        }
    }
    eprintln!(
        "vm-test: {} tests in {} packages, built in {:.1} s",
        tests.len(),
        binaries.len(),
        t0.elapsed().as_secs_f64()
    );
    Ok(Built { binaries, tests })
}

/// Most `testdata/` files and bytes shipped per package.
const MAX_DATA_FILES: usize = 1000;
const MAX_DATA_BYTES: u64 = 256 << 20;

/// The regular files under `dir/testdata` (symbolic links and special files left out).
fn testdata(dir: &Path) -> Result<Vec<PathBuf>> {
    let (mut files, mut total) = (Vec::new(), 0u64);
    let mut stack = vec![(dir.join("testdata"), 0usize)];
    while let Some((d, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(m) = std::fs::symlink_metadata(e.path()) else {
                continue;
            };
            if m.is_dir() && depth < 16 {
                stack.push((e.path(), depth + 1));
            } else if m.is_file() {
                total += m.len();
                files.push(e.path());
            }
            if files.len() > MAX_DATA_FILES || total > MAX_DATA_BYTES {
                return Err(bad_input(format!(
                    "{}: more than {MAX_DATA_FILES} files or {} MiB in testdata/",
                    dir.display(),
                    MAX_DATA_BYTES >> 20
                )));
            }
        }
    }
    files.sort();
    Ok(files)
}

/// `go list`'s packages that have tests: import path and directory.
fn tested_packages(
    goroot: &Path,
    module: &Path,
    packages: &[String],
    work: &Path,
) -> Result<Vec<(String, PathBuf)>> {
    let mut cmd = go_command(goroot, module, work);
    cmd.args([
        "list",
        "-f",
        "{{.ImportPath}}\t{{.Dir}}\t{{len .TestGoFiles}}{{len .XTestGoFiles}}",
    ]);
    match packages.is_empty() {
        true => cmd.arg("./..."),
        false => cmd.args(packages),
    };
    let out = run_go(&mut cmd, LIST_LIMIT, "go list")?;
    let mut found = Vec::new();
    for line in out.lines() {
        let mut f = line.split('\t');
        let (Some(path), Some(dir), Some(counts)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if counts != "00" && found.len() < MAX_PACKAGES {
            found.push((path.to_string(), PathBuf::from(dir)));
        }
    }
    if found.is_empty() {
        return Err(bad_input(format!(
            "--go {}: no package with tests",
            module.display()
        )));
    }
    Ok(found)
}

/// A top-level test, benchmark-free: `TestX`, `ExampleX`, `FuzzX` as `-test.list` prints them.
fn is_test_name(l: &str) -> bool {
    (l.starts_with("Test") || l.starts_with("Example") || l.starts_with("Fuzz"))
        && l.len() <= 256
        && l.chars().all(|c| c.is_alphanumeric() || c == '_')
}

/// Runs a go command (or a test binary on the host); its stdout, or its stderr in the error.
fn run_go(cmd: &mut Command, limit: Duration, what: &str) -> Result<String> {
    let out = procs::run(cmd, limit, what)?;
    if out.status.success() {
        return Ok(out.stdout);
    }
    let said = format!("{}\n{}", out.stderr, out.stdout);
    let hint = if said.contains("GOPROXY=off") || said.contains("cannot find module") {
        "; the module must build offline: vendor its dependencies (`go mod vendor`)"
    } else {
        ""
    };
    Err(format!(
        "{what} failed ({}){hint}: {}",
        out.status,
        crate::reason::of(&said, 12)
    ))
}

/// The guest command of one test (from its package directory).
pub fn command(b: &Binary, name: &str) -> String {
    let dir = crate::util::shell_line(&[b.dir.display().to_string()]);
    let run = crate::util::shell_line(&[
        b.path.display().to_string(),
        "-test.run".into(),
        format!("^{name}$"),
        "-test.v".into(),
        "-test.count=1".into(),
    ]);
    format!("mkdir -p {dir} && cd {dir} && exec {run}")
}

/// `go test -v`'s result of one test: exit 0 is a pass, or a skip when the test's own
/// `--- SKIP: NAME` line says so (its log line before it is the reason); else a fail with the
/// test's first log line.
pub fn verdict_of(status: i32, out: &str, name: &str) -> (Verdict, Option<String>) {
    let lines: Vec<&str> = out.lines().collect();
    let at = |tag: &str| {
        let prefix = format!("--- {tag}: {name} ");
        lines.iter().position(|l| l.starts_with(&prefix))
    };
    let said = |end: usize| {
        (lines[..end].iter().rev())
            .map(|l| l.trim())
            .find(|l| !l.is_empty() && !l.starts_with("=== "))
            .map(|l| crate::text::bound(l, 300).into_owned())
    };
    match (status, at("SKIP")) {
        (0, Some(i)) => (Verdict::Skip, said(i).or(Some("skipped".into()))),
        (0, None) => (Verdict::Pass, None),
        (st, _) => {
            let panic = || {
                lines
                    .iter()
                    .find(|l| l.starts_with("panic: "))
                    .map(|l| l.to_string())
            };
            let why = match at("FAIL") {
                Some(i) => said(i),
                None => panic().or_else(|| said(lines.len())),
            };
            let why = why.unwrap_or_else(|| "no output".into());
            (Verdict::Fail, Some(format!("exit {st}: {why}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_test_v_output_maps_to_verdicts() {
        let skip = "=== RUN   TestSkips\n    fix_test.go:23: kernel lacks UBLK_F_X\n--- SKIP: TestSkips (0.00s)\nPASS\n";
        assert_eq!(
            verdict_of(0, skip, "TestSkips"),
            (
                Verdict::Skip,
                Some("fix_test.go:23: kernel lacks UBLK_F_X".into())
            )
        );
        let fail = "=== RUN   TestFails\n    fix_test.go:15: arithmetic is broken\n--- FAIL: TestFails (0.00s)\nFAIL\n";
        assert_eq!(
            verdict_of(1, fail, "TestFails"),
            (
                Verdict::Fail,
                Some("exit 1: fix_test.go:15: arithmetic is broken".into())
            )
        );
        let pass = "=== RUN   TestOk\n--- PASS: TestOk (0.00s)\nPASS\n";
        assert_eq!(verdict_of(0, pass, "TestOk"), (Verdict::Pass, None));
        // A subtest's skip is not the test's.
        let sub = "--- SKIP: TestOkish/sub (0.00s)\n--- PASS: TestOkish (0.00s)\n";
        assert_eq!(verdict_of(0, sub, "TestOkish"), (Verdict::Pass, None));
        assert!(
            is_test_name("TestA_b1") && !is_test_name("ok  \tx") && !is_test_name("BenchmarkX")
        );
    }
}
