//! `vm-test --cargo PATH`: a Rust package's tests. Built on the host, static (`+crt-static`,
//! so they run in the guest as they are), with cargo's own JSON naming every test binary and
//! the bins and examples beside them; each binary's tests listed on the host (`--list`, which
//! runs no test); each test then runs alone in a fresh VM (`--exact NAME`), libtest's result
//! mapped to a verdict. Tests and examples keep their host paths in the guest: a test finds
//! `env!("CARGO_BIN_EXE_x")` and `target/debug/examples/x` where cargo put them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::host::procs;
use crate::runs::Verdict;
use crate::util::{bad_input, Result};

/// Longest a build may take (a first build compiles every dependency).
const BUILD_LIMIT: Duration = Duration::from_secs(3600);
/// Longest a test binary's `--list` may take.
const LIST_LIMIT: Duration = Duration::from_secs(60);
/// Most tests one package may have (a session's bound).
const MAX_TESTS: usize = 5000;
/// The target every test is built for (static glibc: the guest has no libraries).
const TARGET: &str = "x86_64-unknown-linux-gnu";

/// A package's tests, built.
pub struct Built {
    /// The package directory (the tests' working directory, as under `cargo test`).
    pub package_dir: PathBuf,
    pub binaries: Vec<Binary>,
    /// Bins and examples cargo built beside the tests: shipped with every test.
    pub companions: Vec<PathBuf>,
    pub tests: Vec<CargoTest>,
}

/// One test executable: the lib's unit tests, an integration test file, a bin's tests.
pub struct Binary {
    pub path: PathBuf,
    /// Its cargo target's name (`basic` for tests/basic.rs, the crate for unit tests).
    pub target: String,
}

/// One test of one binary.
pub struct CargoTest {
    pub binary: usize,
    pub name: String,
    pub ignored: bool,
}

impl CargoTest {
    /// Its name in the reports: `target::test path`.
    pub fn id(&self, built: &Built) -> String {
        format!("{}::{}", built.binaries[self.binary].target, self.name)
    }
}

/// Builds the package's tests (and what they run) static; lists every test.
pub fn build(dir: &Path, cargo_args: &[String], target_dir: &Path) -> Result<Built> {
    let manifest = dir.join("Cargo.toml");
    if !manifest.is_file() {
        return Err(bad_input(format!(
            "--cargo {}: no Cargo.toml there; name a package directory",
            dir.display()
        )));
    }
    let package_dir = std::fs::canonicalize(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let t0 = Instant::now();
    eprintln!(
        "vm-test: building {}'s tests static (cargo test --no-run; a first build compiles every dependency)",
        package_dir.display()
    );
    let json = cargo_no_run(&package_dir, cargo_args, target_dir)?;
    let (binaries, companions) = artifacts(&json)?;
    if binaries.is_empty() {
        return Err(bad_input(format!(
            "--cargo {}: cargo built no test binary (is it a workspace root? pass `-- -p NAME`)",
            dir.display()
        )));
    }
    let mut tests = Vec::new();
    for (i, b) in binaries.iter().enumerate() {
        tests.extend(list(&b.path)?.into_iter().map(|(name, ignored)| CargoTest {
            binary: i,
            name,
            ignored,
        }));
        if tests.len() > MAX_TESTS {
            return Err(bad_input(format!("more than {MAX_TESTS} tests")));
        }
    }
    let build_s = t0.elapsed().as_secs_f64();
    eprintln!(
        "vm-test: {} tests in {} binaries, built in {build_s:.1} s",
        tests.len(),
        binaries.len()
    );
    Ok(Built {
        package_dir,
        binaries,
        companions,
        tests,
    })
}

/// `cargo test --no-run --message-format=json`, static, bounded; its stdout.
fn cargo_no_run(dir: &Path, cargo_args: &[String], target_dir: &Path) -> Result<String> {
    let mut rustflags = std::env::var("RUSTFLAGS").unwrap_or_default();
    rustflags.push_str(" -C target-feature=+crt-static");
    let mut cmd = Command::new("cargo");
    cmd.current_dir(dir)
        .args([
            "test",
            "--no-run",
            "--message-format=json-render-diagnostics",
        ])
        .args(["--target", TARGET])
        .args(lock_flag(dir, cargo_args))
        .args(cargo_args)
        .env("RUSTFLAGS", rustflags.trim())
        .env("CARGO_TARGET_DIR", target_dir)
        .stdin(std::process::Stdio::null());
    let out = procs::run(&mut cmd, BUILD_LIMIT, "cargo test --no-run")?;
    if !out.status.success() {
        let tail = crate::reason::of(&out.stderr, 12);
        let hint = host_dependency_hint(&out.stderr)
            .map(|h| format!("; {h}"))
            .unwrap_or_default();
        return Err(format!(
            "cargo test --no-run in {} failed ({}){hint}: {tail}",
            dir.display(),
            out.status
        ));
    }
    Ok(out.stdout)
}

/// What the host lacks, when a build failed for a known host build dependency: the Debian
/// package that provides it. (Host tools are the user's to install: vm-test builds on the host
/// and never changes its packages.)
fn host_dependency_hint(stderr: &str) -> Option<&'static str> {
    const KNOWN: [(&str, &str); 4] = [
        (
            "Unable to find libclang",
            "a build script runs bindgen, which needs libclang: apt-get install libclang-dev",
        ),
        (
            "Could not run `\"pkg-config\"",
            "a build script needs pkg-config: apt-get install pkg-config",
        ),
        (
            "linker `cc` not found",
            "no C toolchain: apt-get install build-essential",
        ),
        (
            "cannot find -l",
            "a static library is missing (static builds link every C library statically): install its Debian -dev package",
        ),
    ];
    KNOWN
        .iter()
        .find(|(m, _)| stderr.contains(m))
        .map(|(_, h)| *h)
}

/// `--locked` when the package has a Cargo.lock (its own or its workspace's) and the user
/// passed no lock flag of their own: vm-test builds the versions the project locked and never
/// rewrites the user's lock file. Without a lock file cargo resolves (and writes one), as
/// `cargo test` would; a line says so.
fn lock_flag(dir: &Path, cargo_args: &[String]) -> Option<&'static str> {
    let own = ["--locked", "--frozen", "--offline"];
    if cargo_args.iter().any(|a| own.contains(&a.as_str())) {
        return None;
    }
    if workspace_root(dir).is_some_and(|root| root.join("Cargo.lock").is_file()) {
        return Some("--locked");
    }
    eprintln!(
        "vm-test: {} has no Cargo.lock: cargo resolves the newest dependencies and writes one",
        dir.display()
    );
    None
}

/// The guest packages the package asks for in its own manifest:
///
/// ```toml
/// [package.metadata.ublk-vm]
/// packages = ["qemu-utils", "diffutils"]
/// package-lock = "ublk-vm.lock"   # relative to the package; optional
/// ```
///
/// read through `cargo metadata --no-deps` (cargo parses the TOML). Errors name the manifest.
pub fn asked_packages(dir: &Path) -> Result<crate::image::extra::Request> {
    let manifest = std::fs::canonicalize(dir.join("Cargo.toml"))
        .map_err(|e| bad_input(format!("--cargo {}: {e}", dir.display())))?;
    let mut cmd = Command::new("cargo");
    cmd.current_dir(dir)
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .stdin(std::process::Stdio::null());
    let out = procs::run(&mut cmd, LIST_LIMIT, "cargo metadata")?;
    if !out.status.success() {
        let tail = crate::reason::of(&out.stderr, 6);
        return Err(bad_input(format!(
            "cargo metadata in {}: {tail}",
            dir.display()
        )));
    }
    let v: serde_json::Value = serde_json::from_str(&out.stdout)
        .map_err(|e| format!("cargo metadata printed bad JSON: {e}"))?;
    let ours = (v["packages"].as_array().into_iter().flatten())
        .find(|p| p["manifest_path"].as_str().map(Path::new) == Some(manifest.as_path()));
    let m = ours.map_or(&serde_json::Value::Null, |p| &p["metadata"]["ublk-vm"]);
    let bad = |what: &str| {
        bad_input(format!(
            "{}: [package.metadata.ublk-vm] {what}",
            manifest.display()
        ))
    };
    let mut req = crate::image::extra::Request::default();
    match &m["packages"] {
        serde_json::Value::Null => {}
        serde_json::Value::Array(list) => {
            for p in list {
                let name = p
                    .as_str()
                    .ok_or_else(|| bad("packages: a list of package names"))?;
                req.packages.push(name.to_string());
            }
        }
        _ => return Err(bad("packages: a list of package names")),
    }
    match &m["package-lock"] {
        serde_json::Value::Null => {}
        serde_json::Value::String(l) if !l.is_empty() && !l.contains('\0') => {
            req.lock = Some(manifest.parent().expect("a file's parent").join(l));
        }
        _ => return Err(bad("package-lock: a file name, relative to the package")),
    }
    crate::image::extra::check_names(&req.packages).map_err(|e| bad(&e))?;
    Ok(req)
}

/// The directory of the package's workspace root (`cargo locate-project --workspace`), where
/// its Cargo.lock lives.
fn workspace_root(dir: &Path) -> Option<PathBuf> {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(dir)
        .args(["locate-project", "--workspace", "--message-format", "plain"])
        .stdin(std::process::Stdio::null());
    let out = procs::run(&mut cmd, LIST_LIMIT, "cargo locate-project").ok()?;
    let manifest = PathBuf::from(out.stdout.trim());
    (out.status.success() && manifest.is_absolute())
        .then(|| manifest.parent().map(Path::to_path_buf))?
}

/// Test binaries and companions (bins, examples) from cargo's JSON messages.
fn artifacts(json: &str) -> Result<(Vec<Binary>, Vec<PathBuf>)> {
    let (mut binaries, mut companions) = (Vec::new(), Vec::new());
    for line in json.lines().filter(|l| l.starts_with('{')) {
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| format!("cargo printed bad JSON: {e}"))?;
        if v["reason"] != "compiler-artifact" {
            continue;
        }
        let Some(exe) = v["executable"].as_str() else {
            continue;
        };
        match v["profile"]["test"].as_bool() {
            Some(true) => binaries.push(Binary {
                path: exe.into(),
                target: v["target"]["name"].as_str().unwrap_or("?").to_string(),
            }),
            _ => companions.push(exe.into()),
        }
    }
    Ok((binaries, companions))
}

/// A test binary's tests: (name, ignored), from libtest's `--list` (run on the host: listing
/// runs no test).
pub fn list(bin: &Path) -> Result<Vec<(String, bool)>> {
    let names = |ignored: bool| -> Result<Vec<String>> {
        let mut cmd = Command::new(bin);
        cmd.args(["--list", "--format", "terse"]);
        if ignored {
            cmd.arg("--ignored");
        }
        let out = procs::run(&mut cmd, LIST_LIMIT, "a test binary's --list")?;
        if !out.status.success() {
            return Err(format!(
                "{} --list failed ({}): {}",
                bin.display(),
                out.status,
                crate::reason::of(&out.stderr, 4)
            ));
        }
        Ok(out
            .stdout
            .lines()
            .filter_map(|l| l.strip_suffix(": test"))
            .map(str::to_string)
            .collect())
    };
    let ignored = names(true)?;
    Ok(names(false)?
        .into_iter()
        .map(|n| {
            let i = ignored.contains(&n);
            (n, i)
        })
        .collect())
}

/// libtest's result of one `--exact` test: 0 pass (unless the output says it skipped), 101
/// fail with its panic; anything else (no such test, a crash) is a fail with the output.
pub fn verdict_of(status: i32, output: &str, skip: &regex::Regex) -> (Verdict, Option<String>) {
    let ran_one = output.lines().any(|l| l.trim() == "running 1 test");
    match status {
        0 if !ran_one => (
            Verdict::Fail,
            Some("libtest ran no test by this name (renamed since the listing?)".into()),
        ),
        // With --nocapture a test's words may follow libtest's `test NAME ... ` on its line.
        0 => match output
            .lines()
            .find_map(|l| skip.find(l).map(|m| &l[m.start()..]))
        {
            Some(said) => (Verdict::Skip, Some(said.trim().chars().take(200).collect())),
            None => (Verdict::Pass, None),
        },
        st => {
            let why = panic_of(output).unwrap_or_else(|| crate::reason::of(output, 6));
            (Verdict::Fail, Some(format!("exit {st}: {why}")))
        }
    }
}

/// The panic message of a failed test: the `panicked at` line and the one after it.
fn panic_of(output: &str) -> Option<String> {
    let lines: Vec<&str> = output.lines().collect();
    let at = lines.iter().position(|l| l.contains("panicked at"))?;
    let msg = lines.get(at + 1).map(|m| m.trim()).unwrap_or_default();
    Some(format!("{} {msg}", lines[at].trim()).trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_host_build_dependency_is_named() {
        let bindgen = "  thread 'main' panicked at bindgen-0.69.5/lib.rs:622:31:\n  Unable to find libclang: \"couldn't find any valid shared libraries\"";
        assert!(host_dependency_hint(bindgen)
            .unwrap()
            .contains("apt-get install libclang-dev"));
        assert_eq!(host_dependency_hint("error[E0308]: mismatched types"), None);
    }

    #[test]
    fn libtest_results_become_verdicts() {
        let skip = regex::Regex::new("skipping:").unwrap();
        let ok = "running 1 test\ntest a ... ok\n\ntest result: ok. 1 passed\n";
        assert_eq!(verdict_of(0, ok, &skip).0, Verdict::Pass);
        let skipped = "running 1 test\ntest a ... skipping: kernel lacks ZERO_COPY\nok\n";
        assert_eq!(
            verdict_of(0, skipped, &skip),
            (
                Verdict::Skip,
                Some("skipping: kernel lacks ZERO_COPY".into())
            )
        );
        let none = "running 0 tests\n\ntest result: ok. 0 passed; 0 failed\n";
        assert_eq!(verdict_of(0, none, &skip).0, Verdict::Fail);
        let failed = "running 1 test\n\nthread 'a' (12) panicked at tests/t.rs:4:5:\nassertion failed: 1 == 2\nnote: run with `RUST_BACKTRACE=1`\ntest a ... FAILED\n";
        let (v, why) = verdict_of(101, failed, &skip);
        assert_eq!(v, Verdict::Fail);
        assert_eq!(
            why.unwrap(),
            "exit 101: thread 'a' (12) panicked at tests/t.rs:4:5: assertion failed: 1 == 2"
        );
    }

    #[test]
    fn cargo_messages_name_tests_and_companions() {
        let json = r#"{"reason":"compiler-artifact","target":{"name":"fx","kind":["lib"]},"profile":{"test":true},"executable":"/t/deps/fx-1"}
{"reason":"compiler-artifact","target":{"name":"fx","kind":["lib"]},"profile":{"test":false},"executable":null}
{"reason":"compiler-artifact","target":{"name":"tool","kind":["example"]},"profile":{"test":false},"executable":"/t/examples/tool"}
{"reason":"build-finished","success":true}"#;
        let (bins, comp) = artifacts(json).unwrap();
        assert_eq!(bins.len(), 1);
        assert_eq!(
            (bins[0].target.as_str(), bins[0].path.to_str()),
            ("fx", Some("/t/deps/fx-1"))
        );
        assert_eq!(comp, [PathBuf::from("/t/examples/tool")]);
        assert!(artifacts("{not json").is_err());
    }
}
