//! Small helpers shared by the commands: paths, hashing, sizes, time stamps, quoting.

use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

pub type Result<T, E = String> = std::result::Result<T, E>;

/// The exit codes every command follows (README: "Exit codes"). A failure of the thing under
/// test is never an error: a command returns it as its exit code.
pub const EXIT_PASS: i32 = 0;
pub const EXIT_FAIL: i32 = 1;
pub const EXIT_BAD_INPUT: i32 = 2;
pub const EXIT_COULD_NOT_TEST: i32 = 125;

/// Errors marked where their input was checked (bad input) or their cause known (could not
/// test), by message: the class travels with the text, so an error a caller swallowed (a
/// probe) never changes the exit code of a later one. Bounded: the newest are kept.
static MARKED: std::sync::Mutex<Vec<(i32, String)>> = std::sync::Mutex::new(Vec::new());
const MAX_MARKED: usize = 256;
const MAX_MARKED_BYTES: usize = 4096;

fn mark(code: i32, message: &str) {
    let mut m = MARKED.lock().unwrap_or_else(|e| e.into_inner());
    if m.len() >= MAX_MARKED {
        m.remove(0);
    }
    let mut end = message.len().min(MAX_MARKED_BYTES);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    m.push((code, message[..end].to_string()));
}

/// Marks an error as "could not test" (exit 125, `git bisect run`'s skip): the environment
/// cannot provide what the test needs (a package no archive has, an unwritable disk), which
/// says nothing about the thing under test. Returns the message.
pub fn could_not_test(message: String) -> String {
    mark(EXIT_COULD_NOT_TEST, &message);
    message
}

/// Marks an error as bad input (exit 2): a flag, file, name or combination the command
/// refuses. Returns the message.
pub fn bad_input(message: String) -> String {
    mark(EXIT_BAD_INPUT, &message);
    message
}

/// The one function that decides the exit code of a command that ended with `error`: the
/// class of the outermost marked message it holds (wrappers add context around a message,
/// so the longest contained one is the outermost), else 125 — the command ended before a
/// verdict, so nothing was learned about the thing under test.
pub fn exit_code_for(error: &str) -> i32 {
    let m = MARKED.lock().unwrap_or_else(|e| e.into_inner());
    m.iter()
        .filter(|(_, msg)| !msg.is_empty() && error.contains(msg.as_str()))
        .max_by_key(|(_, msg)| msg.len())
        .map_or(EXIT_COULD_NOT_TEST, |(code, _)| *code)
}

/// The workspace root (the directory holding the top-level Cargo.toml), found at run time:
/// a checkout copied with its `target/` (which cargo does not rebuild) must act on its own
/// files, never on those of the checkout the binary was first built in.
pub fn root() -> PathBuf {
    static ROOT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    ROOT.get_or_init(|| {
        let exe = std::env::current_exe().ok();
        let manifest = std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from);
        find_root(manifest.as_deref(), exe.as_deref()).unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .expect("xtask lives one level below the root")
                .to_path_buf()
        })
    })
    .clone()
}

/// `cargo run` sets CARGO_MANIFEST_DIR (the xtask package's directory) for the program it
/// runs; a binary started directly finds the workspace among its own ancestors
/// (`<root>/target/debug/xtask`).
fn find_root(manifest_dir: Option<&Path>, exe: Option<&Path>) -> Option<PathBuf> {
    let is_root = |d: &Path| d.join("Cargo.toml").is_file() && d.join("xtask/Cargo.toml").is_file();
    if let Some(parent) = manifest_dir.and_then(Path::parent) {
        if is_root(parent) {
            return Some(parent.to_path_buf());
        }
    }
    exe?.ancestors()
        .skip(1)
        .find(|d| is_root(d))
        .map(Path::to_path_buf)
}

/// `target/` of the workspace, honouring CARGO_TARGET_DIR like cargo does.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => {
            let d = PathBuf::from(d);
            if d.is_absolute() {
                d
            } else {
                root().join(d)
            }
        }
        _ => root().join("target"),
    }
}

pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

pub fn sha256_bytes(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

/// Streams a file through SHA-256; returns (hex digest, size).
pub fn sha256_file(path: &Path) -> Result<(String, u64)> {
    let mut f = std::fs::File::open(path).map_err(|e| format!("open {}: {e}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| format!("read {}: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        size += n as u64;
        h.update(&buf[..n]);
    }
    Ok((hex(&h.finalize()), size))
}

/// Hashes a list of labelled parts unambiguously (length-prefixed), for cache keys.
pub fn key_of(parts: &[(&str, &[u8])]) -> String {
    let mut h = Sha256::new();
    for (label, data) in parts {
        h.update((label.len() as u64).to_le_bytes());
        h.update(label.as_bytes());
        h.update((data.len() as u64).to_le_bytes());
        h.update(data);
    }
    hex(&h.finalize())
}

/// Parses "512M", "1G", "1GiB", "2048" (MiB when no unit, like QEMU's -m). Returns MiB.
pub fn parse_mib(s: &str) -> Result<u64> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        format!("invalid size {s:?}: expected a number with an optional unit, e.g. 512M or 2G")
    })?;
    let mult = match unit.to_ascii_lowercase().as_str() {
        "" | "m" | "mb" | "mib" => 1,
        "g" | "gb" | "gib" => 1024,
        _ => {
            return Err(format!(
                "invalid size {s:?}: unit must be M or G (e.g. 512M, 2G)"
            ))
        }
    };
    let mib = n
        .checked_mul(mult)
        .ok_or_else(|| format!("invalid size {s:?}: too large"))?;
    if !(128..=65536).contains(&mib) {
        return Err(format!(
            "invalid memory size {s:?}: must be between 128M and 64G"
        ));
    }
    Ok(mib)
}

/// UTC "YYYYMMDD-HHMMSS" for run directory names (no timezone database in a test VM host).
pub fn timestamp() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (y, mo, d) = civil_from_days((secs / 86400) as i64);
    let s = secs % 86400;
    format!(
        "{y:04}{mo:02}{d:02}-{:02}{:02}{:02}",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// RFC 3339 UTC time for JSON reports.
pub fn rfc3339_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (y, mo, d) = civil_from_days((secs / 86400) as i64);
    let s = secs % 86400;
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// Howard Hinnant's days-to-civil conversion.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719468;
    let era = z.div_euclid(146097);
    let doe = z.rem_euclid(146097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (
        if m <= 2 {
            era * 400 + yoe + 1
        } else {
            era * 400 + yoe
        },
        m,
        d,
    )
}

/// Quotes one argument for display as a copy-pastable POSIX shell word.
pub fn shell_quote(arg: &str) -> String {
    if !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
    {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

/// `argv` as one line a POSIX shell runs as that argv (every word quoted where needed).
pub fn shell_line(argv: &[String]) -> String {
    let words: Vec<String> = argv.iter().map(|a| shell_quote(a)).collect();
    words.join(" ")
}

pub fn shell_join<S: AsRef<str>>(args: &[S]) -> String {
    args.iter()
        .map(|a| shell_quote(a.as_ref()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A name usable as a directory component: alphanumerics and '-', at most 40 chars.
pub fn slug(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    while out.contains("--") {
        out = out.replace("--", "-");
    }
    let out = out.trim_matches('-');
    let out: String = out.chars().take(40).collect();
    if out.is_empty() {
        "run".into()
    } else {
        out.trim_end_matches('-').to_string()
    }
}

/// Writes a file atomically (temp file + rename) so readers never see a partial file.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| format!("{} has no parent directory", path.display()))?;
    std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().unwrap().to_string_lossy(),
        std::process::id()
    ));
    // A stale temporary (or a link planted in its place) is removed, then the file is
    // created new: never written through a symlink.
    let _ = std::fs::remove_file(&tmp);
    let result = write_new(&tmp, data)
        .map_err(|e| format!("write {}: {e}", path.display()))
        .and_then(|()| {
            std::fs::rename(&tmp, path).map_err(|e| format!("rename to {}: {e}", path.display()))
        });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp); // never leave a .tmp file behind
    }
    result
}

/// Creates `path` for writing: it must not exist, and a symlink there is not followed.
pub fn create_new(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// Creates `path` (see `create_new`) holding `data`.
fn write_new(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    create_new(path)?.write_all(data)
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Looks a program up in PATH.
pub fn which(prog: &str) -> Option<PathBuf> {
    if prog.contains('/') {
        let p = PathBuf::from(prog);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH")
        .unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The class of an error travels with its message: a swallowed probe does not change
    /// the code of a later, unrelated error; a wrapper keeps its inner class unless marked.
    #[test]
    fn an_error_exits_with_the_class_of_its_outermost_marked_message() {
        let _probe = bad_input("probe-7c1: not there".into());
        assert_eq!(
            exit_code_for("apt-get update failed: Temporary failure"),
            125
        );
        let inner = bad_input("--kernel /x-7c1: no such file".into());
        assert_eq!(exit_code_for(&format!("building images: {inner}")), 2);
        let outer = could_not_test(format!("fetching for {inner}: offline"));
        assert_eq!(exit_code_for(&format!("vm-e2e: {outer}")), 125);
        assert_eq!(exit_code_for(""), 125);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_mib("512M").unwrap(), 512);
        assert_eq!(parse_mib("2G").unwrap(), 2048);
        assert_eq!(parse_mib("1GiB").unwrap(), 1024);
        assert_eq!(parse_mib("1024").unwrap(), 1024);
        assert!(parse_mib("1T").unwrap_err().contains("unit"));
        assert!(parse_mib("abc").unwrap_err().contains("invalid size"));
        assert!(parse_mib("16M").unwrap_err().contains("between"));
        assert!(parse_mib("99999999999999999999G").is_err());
    }

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20778), (2026, 11, 21));
        assert_eq!(civil_from_days(11016), (2000, 2, 29));
    }

    #[test]
    fn quoting_and_slugs() {
        assert_eq!(shell_join(&["sh", "-c", "exit 7"]), "sh -c 'exit 7'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(slug("cat /proc/version"), "cat-proc-version");
        assert_eq!(slug("///"), "run");
    }

    #[test]
    fn a_failed_atomic_write_leaves_no_temp_file() {
        let dir = std::env::temp_dir().join(format!("xtask-wa-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("target-is-a-dir")).unwrap();
        // The rename onto a non-empty directory fails after the temp file was written.
        std::fs::write(dir.join("target-is-a-dir/x"), b"").unwrap();
        assert!(write_atomic(&dir.join("target-is-a-dir"), b"data").is_err());
        let names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["target-is-a-dir"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn keys_are_unambiguous() {
        assert_ne!(key_of(&[("a", b"bc")]), key_of(&[("ab", b"c")]));
        assert_ne!(key_of(&[("a", b"b"), ("c", b"")]), key_of(&[("a", b"bc")]));
        assert_eq!(key_of(&[("a", b"b")]), key_of(&[("a", b"b")]));
    }
}
