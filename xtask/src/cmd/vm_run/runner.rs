//! `cargo xtask vm-runner [OPTIONS] BINARY [ARGS...]`: cargo's `target.runner` for a server's
//! repository, so plain `cargo test` runs each test binary in a fresh VM with `ublk_drv` and
//! exits as cargo expects (the binary's own status: 0, 101 when a test failed; 124 at the
//! limit, 125 when no VM could run it; 1 for a kernel splat the binary left).
//!
//! Cargo calls the runner with the test binary's path and libtest's arguments, from the
//! package directory. The binary goes to the same path in the guest, with the bins and
//! examples cargo built beside it (so `env!("CARGO_BIN_EXE_x")` and `target/.../examples/x`
//! resolve), runs from the same directory with `CARGO_MANIFEST_DIR` set to it, and its output
//! streams back. This is `vm-run` with those arguments: one VM per binary — the habit of
//! virtme-ng's and danobi/vmtest's runners. `vm-test --cargo` is the other trade: a VM per
//! test, per-test verdicts and limits, reports.

use std::path::{Path, PathBuf};

use clap::Parser;

use crate::util::{bad_input, Result};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Hard limit in seconds for the binary's VM (boot + every test in it) [default: 600]
    #[arg(long, value_name = "SECS", allow_negative_numbers = true, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub timeout: Option<u64>,
    /// Kernel: a locked Debian kernel by name (debian-6.12, debian-7.2), host, or a PATH
    #[arg(long, default_value = crate::image::kernel::DEFAULT_KERNEL, value_name = "NAME|PATH")]
    pub kernel: String,
    #[command(flatten)]
    pub packages: crate::image::extra::Request,
    /// A kernel-log substring that is known and not a splat; repeatable
    #[arg(long, value_name = "TEXT")]
    pub expect_splat: Vec<String>,
    /// The test binary (cargo passes it) and its arguments
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "BINARY [ARGS]"
    )]
    pub command: Vec<String>,
}

/// Most companions shipped beside a binary (bins and examples).
const MAX_COMPANIONS: usize = 256;
const DEFAULT_TIMEOUT_S: u64 = 600;

pub fn run(args: Args) -> Result<i32> {
    // The project's CARGO_TARGET_DIR (cargo passes its environment on) is the project's: this
    // checkout's own state (guest binaries, the image, run directories) stays in its target/.
    std::env::remove_var("CARGO_TARGET_DIR");
    let binary = std::fs::canonicalize(&args.command[0])
        .map_err(|e| bad_input(format!("vm-runner: {}: {e}", args.command[0])))?;
    let cwd = std::env::current_dir().map_err(|e| format!("vm-runner: current directory: {e}"))?;
    let argv = vm_run_argv(&args, &binary, &cwd)?;
    #[derive(Parser)]
    struct VmRun {
        #[command(flatten)]
        args: super::Args,
    }
    let parsed = VmRun::try_parse_from(&argv)
        .map_err(|e| bad_input(format!("vm-runner: {}", e.to_string().trim())))?;
    super::run(parsed.args)
}

/// vm-run's arguments for this binary.
fn vm_run_argv(args: &Args, binary: &Path, cwd: &Path) -> Result<Vec<String>> {
    let path = |p: &Path| p.display().to_string();
    let name = binary.file_name().unwrap_or_default().to_string_lossy();
    let timeout_s = args.timeout.unwrap_or(DEFAULT_TIMEOUT_S);
    let mut v: Vec<String> = ["vm-run", "--tools", "bash", "--fail-on-splat"]
        .map(String::from)
        .into();
    v.extend(["--timeout".into(), timeout_s.to_string()]);
    v.extend(["--kernel".into(), args.kernel.clone()]);
    v.extend([
        "--name".into(),
        format!("runner-{}", crate::util::slug(&name)),
    ]);
    if !args.packages.packages.is_empty() {
        v.extend(["--package".into(), args.packages.packages.join(",")]);
    }
    if let Some(l) = &args.packages.lock {
        v.extend(["--package-lock".into(), path(l)]);
    }
    for e in &args.expect_splat {
        v.extend(["--expect-splat".into(), e.clone()]);
    }
    for f in std::iter::once(binary.to_path_buf()).chain(companions(binary)) {
        v.extend(["--copy-in".into(), format!("{}:{}", path(&f), path(&f))]);
    }
    let mut script = format!(
        "mkdir -p {dir} && cd {dir} && CARGO_MANIFEST_DIR={dir} exec {bin}",
        dir = quote(&path(cwd))?,
        bin = quote(&path(binary))?
    );
    for a in &args.command[1..] {
        script.push(' ');
        script.push_str(&quote(a)?);
    }
    v.extend(["--".into(), "sh".into(), "-c".into(), script]);
    Ok(v)
}

/// The bins beside a test binary (`target/<triple>/<profile>/deps/x-HASH` → the executables
/// in `<profile>/` and `<profile>/examples/` without cargo's hash suffix).
fn companions(binary: &Path) -> Vec<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let Some(profile) = binary.parent().and_then(Path::parent) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for dir in [profile.to_path_buf(), profile.join("examples")] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten().take(10 * MAX_COMPANIONS) {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            let executable = (std::fs::symlink_metadata(&p))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
            if executable && !hashed(&name) && !name.contains('.') && found.len() < MAX_COMPANIONS {
                found.push(p);
            }
        }
    }
    found.sort();
    found
}

/// `name-0123456789abcdef`: a copy cargo keeps under its hash (the plain name is the same file).
fn hashed(name: &str) -> bool {
    name.rsplit_once('-')
        .is_some_and(|(_, h)| h.len() == 16 && h.chars().all(|c| c.is_ascii_hexdigit()))
}

/// A single-quoted shell word (no NUL: the guest command refuses it).
fn quote(s: &str) -> Result<String> {
    if s.contains('\0') {
        return Err(bad_input(
            "vm-runner: an argument contains a NUL byte".into(),
        ));
    }
    Ok(format!("'{}'", s.replace('\'', r"'\''")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashed_copies_are_left_and_words_are_quoted() {
        assert!(hashed("basic-0f3a9c1d2e4b5a69"));
        assert!(!hashed("ublk-mem"));
        assert!(!hashed("my-server"));
        assert_eq!(quote("it's").unwrap(), r"'it'\''s'");
        assert!(quote("a\0b").is_err());
    }
}
