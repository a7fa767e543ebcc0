//! Image inputs when the archive moves, against a local file:// Debian-style archive (signed
//! with a throwaway key) holding fake packages and a fake kernel series, and a 127.0.0.1
//! server posing as the snapshot archive. No network: nothing here depends on the state of
//! Debian's archive today.
//!
//! Each step uses a fresh per-checkout target directory (nothing built is reused) and says
//! which shared download cache it starts from:
//! (a) the locked version is in the archive → used, recorded as `archive`;
//! (e) the shared cache holds it → used with the archive gone;
//! (f) a damaged cached file is detected and fetched again;
//! (d) the locked version left the archive, the snapshot server has it → `snapshot`;
//! (b) it is nowhere → the newest same-suite build, one warning naming it and the upgrade
//!     command, a different kernel part and tools layer; remembered, so the next run needs
//!     no archive;
//! (c) the same with --locked → exit 125 with the one clear error.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::*;

const SUITE: &str = "fake";

fn sh(cmd: &mut Command) -> Output {
    let o = cmd.output().unwrap();
    assert!(
        o.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

fn sha(path: &Path, tool: &str) -> String {
    let o = sh(Command::new(tool).arg(path));
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// A Debian-style archive: pool/ holds every .deb ever published; the index lists `listed`.
struct Archive {
    dir: PathBuf,
    gnupg: PathBuf,
    keyring: PathBuf,
}

impl Drop for Archive {
    /// gpg starts an agent per home directory: it must not outlive the test.
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .env("GNUPGHOME", &self.gnupg)
            .args(["--kill", "gpg-agent"])
            .output();
    }
}

impl Archive {
    fn new(base: &Path) -> Archive {
        let dir = base.join("archive");
        let gnupg = base.join("gnupg");
        std::fs::create_dir_all(dir.join("pool/main")).unwrap();
        std::fs::create_dir_all(&gnupg).unwrap();
        let gpg = |args: &[&str]| {
            sh(Command::new("gpg")
                .env("GNUPGHOME", &gnupg)
                .args([
                    "--batch",
                    "--quiet",
                    "--pinentry-mode",
                    "loopback",
                    "--passphrase",
                    "",
                ])
                .args(args))
        };
        gpg(&[
            "--quick-gen-key",
            "ublk-vm test <test@invalid>",
            "ed25519",
            "sign",
            "never",
        ]);
        let keyring = base.join("key.gpg");
        let key = gpg(&["--export"]);
        std::fs::write(&keyring, key.stdout).unwrap();
        Archive {
            dir,
            gnupg,
            keyring,
        }
    }

    /// Builds NAME_VERSION_amd64.deb holding `files` (path, content) into pool/main.
    fn deb(&self, name: &str, version: &str, files: &[(&str, &[u8])]) -> PathBuf {
        let stage = self.dir.join(format!("../stage-{name}-{version}"));
        let _ = std::fs::remove_dir_all(&stage);
        std::fs::create_dir_all(stage.join("DEBIAN")).unwrap();
        std::fs::write(
            stage.join("DEBIAN/control"),
            format!("Package: {name}\nVersion: {version}\nArchitecture: amd64\nMaintainer: t <t@invalid>\nDescription: fake\n"),
        )
        .unwrap();
        for (path, content) in files {
            let p = stage.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }
        let out = self
            .dir
            .join(format!("pool/main/{name}_{version}_amd64.deb"));
        sh(Command::new("dpkg-deb")
            .args(["--build", "--root-owner-group", "-Zgzip"])
            .arg(&stage)
            .arg(&out));
        std::fs::remove_dir_all(&stage).unwrap();
        out
    }

    /// Writes (and signs) an index listing exactly `debs`.
    fn publish(&self, debs: &[&Path]) {
        let mut packages = String::new();
        for d in debs {
            let file = d.file_name().unwrap().to_string_lossy().into_owned();
            let mut f = file.trim_end_matches("_amd64.deb").splitn(2, '_');
            let (name, version) = (f.next().unwrap(), f.next().unwrap());
            let size = std::fs::metadata(d).unwrap().len();
            packages += &format!(
                "Package: {name}\nVersion: {version}\nArchitecture: amd64\nMaintainer: t <t@invalid>\n\
Filename: pool/main/{file}\nSize: {size}\nSHA256: {}\nDescription: fake\n\n",
                sha(d, "sha256sum")
            );
        }
        let bin = self.dir.join(format!("dists/{SUITE}/main/binary-amd64"));
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::write(bin.join("Packages"), &packages).unwrap();
        let release = format!(
            "Suite: {SUITE}\nCodename: {SUITE}\nDate: Wed, 02 Dec 2026 00:00:00 UTC\nArchitectures: amd64\nComponents: main\nSHA256:\n {} {} main/binary-amd64/Packages\n",
            sha(&bin.join("Packages"), "sha256sum"),
            packages.len()
        );
        let dists = self.dir.join(format!("dists/{SUITE}"));
        std::fs::write(dists.join("Release"), release).unwrap();
        let _ = std::fs::remove_file(dists.join("InRelease"));
        sh(Command::new("gpg")
            .env("GNUPGHOME", &self.gnupg)
            .args(["--batch", "--quiet", "--yes", "--clearsign", "-o"])
            .arg(dists.join("InRelease"))
            .arg(dists.join("Release")));
    }
}

fn kernel_deb(a: &Archive, patch: u32) -> PathBuf {
    let rel = format!("6.9.{patch}+fake-amd64");
    let boot = format!("boot/vmlinuz-{rel}");
    let builtin = format!("lib/modules/{rel}/modules.builtin");
    let content = format!("not a real kernel {patch}").into_bytes();
    a.deb(
        &format!("linux-image-{rel}"),
        &format!("6.9.{patch}-1"),
        &[(boot.as_str(), content.as_slice()), (builtin.as_str(), b"")],
    )
}

fn tool_deb(a: &Archive, version: &str) -> PathBuf {
    let script = format!("#!/bin/sh\necho faketool {version}\n");
    a.deb(
        "faketool",
        version,
        &[("usr/bin/faketool", script.as_bytes())],
    )
}

const RECIPE: &str = "version: 1
kernels:
  - {name: debian-fake, suite: fake, package: \"linux-image-6.9.*-amd64\", lock: kernel-fake.lock}
modules: []
boot_modules: []
cmdline: console=ttyS0
init: init
tools:
  suite: fake
  packages: [faketool]
  lock: tools.lock
guest_binaries:
  - { package: vm-agent, bin: vm-agent }
";

/// A 127.0.0.1 HTTP server serving `dir` (the snapshot archive's `/file/<sha1>`), counting
/// the requests it answered.
fn serve(dir: PathBuf) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = hits.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(1000) {
            let Ok(mut s) = stream else { continue };
            let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
            let mut reader = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) <= 2 {
                    break;
                }
            }
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let file = dir.join(path.trim_start_matches('/'));
            let reply = match std::fs::read(&file) {
                Ok(body) if !path.contains("..") => {
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    [head.into_bytes(), body].concat()
                }
                _ => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_vec(),
            };
            let _ = s.write_all(&reply);
        }
    });
    (url, hits)
}

struct World {
    base: PathBuf,
    recipe: PathBuf,
    archive_url: String,
    keyring: PathBuf,
    snapshot_url: String,
    step: std::cell::Cell<u32>,
}

impl World {
    /// `cargo xtask ARGS` with a fresh target directory and the shared cache `cache`.
    fn xtask(&self, args: &[&str], cache: &str) -> Output {
        self.step.set(self.step.get() + 1);
        let target = self.base.join(format!("target-{}", self.step.get()));
        let mut c = xtask();
        c.args(args)
            .env("UBLK_VM_RECIPE", &self.recipe)
            .env("UBLK_VM_DEBIAN_MIRROR", &self.archive_url)
            .env("UBLK_VM_DEBIAN_KEYRING", &self.keyring)
            .env("UBLK_VM_SNAPSHOT_URL", &self.snapshot_url)
            .env("UBLK_VM_CACHE", self.base.join(cache))
            .env("CARGO_TARGET_DIR", &target)
            .env_remove("UBLK_VM_LOCKED")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        finish(c.spawn().unwrap(), Duration::from_secs(300))
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The kernel part and tools layer keys `cache fetch` printed.
fn keys(o: &Output) -> (String, String) {
    let out = String::from_utf8_lossy(&o.stdout);
    let find = |prefix: &str| {
        out.lines()
            .find_map(|l| l.split(prefix).nth(1))
            .map(|r| r.split_whitespace().next().unwrap().to_string())
            .unwrap_or_else(|| panic!("no {prefix:?} in {out}"))
    };
    (find("kernel part "), find("tools layer: "))
}

#[test]
fn image_inputs_survive_the_archive_moving() {
    for tool in ["gpg", "dpkg-deb", "apt-get", "mke2fs"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            panic!("this test needs {tool} (.ci/run installs it)");
        }
    }
    let base = std::env::temp_dir().join(format!("xtask-archive-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(base.join("recipe")).unwrap();
    let apt_before = etc_apt_digest();
    let a = Archive::new(&base);
    let (k1, t1) = (kernel_deb(&a, 1), tool_deb(&a, "1.0-1"));
    a.publish(&[&k1, &t1]);
    std::fs::write(base.join("recipe/recipe.yaml"), RECIPE).unwrap();
    std::fs::write(base.join("recipe/init"), "#!/bin/sh\n").unwrap();
    let snapshot_dir = base.join("snapshot");
    let (snapshot_url, hits) = serve(snapshot_dir.clone());
    let w = World {
        recipe: base.join("recipe/recipe.yaml"),
        archive_url: format!("file://{}", a.dir.display()),
        keyring: a.keyring.clone(),
        snapshot_url: "http://127.0.0.1:1".into(),
        base: base.clone(),
        step: std::cell::Cell::new(0),
    };
    // The locks, written by the lock commands themselves (with sha1 and snapshot time).
    let o = w.xtask(&["locks", "--upgrade"], "cache-lock");
    assert!(o.status.success(), "{}", text(&o));
    let lock = std::fs::read_to_string(base.join("recipe/kernel-fake.lock")).unwrap();
    assert!(
        lock.contains("linux-image-6.9.1+fake-amd64") && lock.contains("sha1: "),
        "{lock}"
    );
    assert!(lock.contains("pool: pool/main/linux-image-6.9.1"), "{lock}");
    let tools_lock = std::fs::read_to_string(base.join("recipe/tools.lock")).unwrap();
    assert!(
        tools_lock.contains("version: 1.0-1") && tools_lock.contains("snapshot: "),
        "{tools_lock}"
    );
    let fetch = ["cache", "fetch"];

    // (a) In the archive: used, recorded as `archive`.
    let o = w.xtask(&fetch, "cache-a");
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        t.contains("kernel debian-fake: 1 packages as locked in") && t.contains("(1 from archive)"),
        "{t}"
    );
    assert!(t.contains("tools layer: 1 packages as locked"), "{t}");
    assert!(!t.contains("warning"), "{t}");
    let exact = keys(&o);

    // (e) In the shared cache: no archive needed at all.
    std::fs::rename(&a.dir, base.join("archive-away")).unwrap();
    let o = w.xtask(&fetch, "cache-a");
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        t.contains("(1 from cache)") && !t.contains("downloading"),
        "{t}"
    );
    assert_eq!(keys(&o), exact, "the same packages make the same parts");
    std::fs::rename(base.join("archive-away"), &a.dir).unwrap();

    // (f) A damaged cached file is found and fetched again.
    let sum = sha(&k1, "sha256sum");
    let cached = base.join(format!("cache-a/debs/{sum}.deb"));
    let mut bytes = std::fs::read(&cached).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&cached, bytes).unwrap();
    let o = w.xtask(&fetch, "cache-a");
    let t = text(&o);
    assert!(o.status.success() && t.contains("is damaged"), "{t}");
    assert!(
        t.contains("kernel debian-fake: 1 packages as locked in") && t.contains("(1 from archive)"),
        "{t}"
    );
    assert_eq!(sha(&cached, "sha256sum"), sum);

    // The archive moves on: 6.9.1 and faketool 1.0-1 leave it.
    let (k2, t2) = (kernel_deb(&a, 2), tool_deb(&a, "1.0-2"));
    a.publish(&[&k2, &t2]);
    let (old_k, old_t) = (base.join("old-k.deb"), base.join("old-t.deb"));
    std::fs::rename(&k1, &old_k).unwrap();
    std::fs::rename(&t1, &old_t).unwrap();

    // (d) The snapshot archive has them, by sha1.
    std::fs::create_dir_all(snapshot_dir.join("file")).unwrap();
    for d in [&old_k, &old_t] {
        std::fs::copy(d, snapshot_dir.join("file").join(sha(d, "sha1sum"))).unwrap();
    }
    let w2 = World {
        snapshot_url: snapshot_url.clone(),
        step: std::cell::Cell::new(100),
        ..w
    };
    let o = w2.xtask(&fetch, "cache-d");
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        t.contains("kernel debian-fake: 1 packages as locked in")
            && t.contains("(1 from snapshot)"),
        "{t}"
    );
    assert!(!t.contains("warning"), "{t}");
    assert_eq!(keys(&o), exact);
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 2);
    std::fs::remove_dir_all(snapshot_dir.join("file")).unwrap();

    // (c) Nowhere, and --locked: one clear error, exit 125, nothing prepared.
    let o = w2.xtask(&["cache", "fetch", "--locked"], "cache-c");
    let t = text(&o);
    assert_eq!(o.status.code(), Some(125), "{t}");
    assert!(
        t.contains("linux-image-6.9.1+fake-amd64=6.9.1-1 (locked in")
            && t.contains("--locked forbids"),
        "{t}"
    );
    assert!(
        t.contains("cargo xtask kernel-lock --upgrade debian-fake"),
        "{t}"
    );
    assert!(!t.contains("kernel part"), "{t}");
    // Snapshot unreachable: tried once, costs little.
    let w3 = World {
        snapshot_url: "http://127.0.0.1:1".into(),
        step: std::cell::Cell::new(200),
        ..w2
    };
    let t0 = Instant::now();
    let o = w3.xtask(&["cache", "fetch", "--locked", "--no-tools"], "cache-c");
    assert_eq!(o.status.code(), Some(125), "{}", text(&o));
    assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", t0.elapsed());

    // (b) Nowhere: the newest of the same series, said once per part, a different image.
    let o = w3.xtask(&fetch, "cache-b");
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    let recipe_dir = base.join("recipe");
    let warn = format!("warning: kernel debian-fake: 1 of 1 packages newer than {}/kernel-fake.lock (linux-image-6.9.1+fake-amd64=6.9.1-1 → linux-image-6.9.2+fake-amd64 6.9.2-1); run cargo xtask kernel-lock --upgrade debian-fake", recipe_dir.display());
    assert_eq!(t.matches(&warn).count(), 1, "{t}");
    let tools_warn = format!("warning: tools layer: 1 of 1 packages newer than {}/tools.lock (faketool 1.0-1 → 1.0-2); run cargo xtask tools-lock --upgrade", recipe_dir.display());
    assert_eq!(t.matches(&tools_warn).count(), 1, "{t}");
    let newer = keys(&o);
    assert_ne!(newer.0, exact.0, "a newer kernel is another kernel part");
    assert_ne!(newer.1, exact.1, "a newer tool is another tools layer");
    // Remembered: the next run resolves the same way with no archive at all.
    std::fs::rename(&a.dir, base.join("archive-away")).unwrap();
    let o = w3.xtask(&fetch, "cache-b");
    let t = text(&o);
    assert!(o.status.success() && t.contains(&warn), "{t}");
    assert_eq!(keys(&o), newer);
    // Offline (no archive, no snapshot) with an empty cache: could not fetch (125), and the
    // message says so rather than advising a re-lock (the locks are fine).
    let o = w3.xtask(&fetch, "cache-offline");
    let t = text(&o);
    assert_eq!(o.status.code(), Some(125), "{t}");
    assert!(t.contains("could not fetch"), "{t}");
    assert!(
        !t.contains("--upgrade"),
        "a re-lock cannot help offline: {t}"
    );
    assert_eq!(
        etc_apt_digest(),
        apt_before,
        "the host's /etc/apt must not change"
    );
    let _ = std::fs::remove_dir_all(&base);
}

fn extra_deb(a: &Archive, version: &str) -> PathBuf {
    let script = format!("#!/bin/sh\necho fakeextra {version}\n");
    a.deb(
        "fakeextra",
        version,
        &[("usr/bin/fakeextra", script.as_bytes())],
    )
}

/// A project's own guest packages (`--package`, `--package-lock`), against the same kind of
/// archive: resolved on top of the tools layer into the project's lock file; that file used as
/// it is (also with --locked); --locked refusing a missing lock, an unpinned request and a
/// lock of other packages; a locked package gone from every source replaced by the newest
/// build, said in one warning that names the project's lock.
#[test]
fn a_projects_own_packages_are_locked_in_its_own_file() {
    let base = std::env::temp_dir().join(format!("xtask-extras-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(base.join("recipe")).unwrap();
    let a = Archive::new(&base);
    let (k1, t1, e1) = (
        kernel_deb(&a, 1),
        tool_deb(&a, "1.0-1"),
        extra_deb(&a, "2.0-1"),
    );
    a.publish(&[&k1, &t1, &e1]);
    std::fs::write(base.join("recipe/recipe.yaml"), RECIPE).unwrap();
    std::fs::write(base.join("recipe/init"), "#!/bin/sh\n").unwrap();
    let w = World {
        recipe: base.join("recipe/recipe.yaml"),
        archive_url: format!("file://{}", a.dir.display()),
        keyring: a.keyring.clone(),
        snapshot_url: "http://127.0.0.1:1".into(),
        base: base.clone(),
        step: std::cell::Cell::new(0),
    };
    let o = w.xtask(&["locks", "--upgrade"], "cache-lock");
    assert!(o.status.success(), "{}", text(&o));
    let lock = base.join("project/ublk-vm.lock");
    let lock_s = lock.to_str().unwrap();
    let fetch = |extra: &[&str], cache: &str| {
        let mut args = vec!["cache", "fetch", "--kernel", "debian-fake", "--no-tools"];
        args.extend(extra);
        w.xtask(&args, cache)
    };
    // Written by the first run, holding only what the tools layer lacks.
    let o = fetch(
        &["--package", "fakeextra", "--package-lock", lock_s],
        "cache-1",
    );
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        t.contains(&format!("wrote {lock_s}: 1 packages and 0 libraries")),
        "{t}"
    );
    assert!(t.contains("tools layer with project packages: "), "{t}");
    let written = std::fs::read_to_string(&lock).unwrap();
    assert!(
        written.contains("package: fakeextra") && written.contains("version: 2.0-1"),
        "{written}"
    );
    assert!(
        !written.contains("faketool"),
        "the tools layer's own package: {written}"
    );
    // Used as it is: nothing resolved, also with --locked, also with the lock alone.
    for extra in [
        vec![
            "--package",
            "fakeextra",
            "--package-lock",
            lock_s,
            "--locked",
        ],
        vec!["--package-lock", lock_s, "--locked"],
    ] {
        let o = fetch(&extra, "cache-1");
        let t = text(&o);
        assert!(o.status.success(), "{extra:?}: {t}");
        assert!(
            !t.contains("resolving") && !t.contains("wrote"),
            "{extra:?}: {t}"
        );
        assert!(
            t.contains("project packages: 2 packages as locked in"),
            "{t}"
        );
    }
    // --locked refuses what is not a lock, exit 125 with one line.
    let missing = base.join("project/none.lock");
    let missing_s = missing.to_str().unwrap();
    for (extra, want) in [
        (
            vec!["--package", "fakeextra", "--locked"],
            "--package needs --package-lock FILE",
        ),
        (
            vec![
                "--package",
                "fakeextra",
                "--package-lock",
                missing_s,
                "--locked",
            ],
            "does not exist; run once without --locked",
        ),
        (
            vec![
                "--package",
                "fakeextra,faketool",
                "--package-lock",
                lock_s,
                "--locked",
            ],
            "locks fakeextra, but the run asks for fakeextra faketool",
        ),
    ] {
        let o = fetch(&extra, "cache-1");
        let t = text(&o);
        assert_eq!(o.status.code(), Some(125), "{extra:?}: {t}");
        assert!(t.contains(want), "{extra:?}: want {want:?}: {t}");
    }
    assert!(!missing.exists());
    // A lock file that is not there and no packages: bad input.
    let o = fetch(&["--package-lock", missing_s], "cache-1");
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    // The archive moves on and the cache is new: the newest build, said once, naming the lock.
    let e2 = extra_deb(&a, "2.0-2");
    a.publish(&[&k1, &t1, &e2]);
    std::fs::remove_file(&e1).unwrap();
    let o = fetch(&["--package-lock", lock_s], "cache-2");
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    let warn = format!(
        "warning: project packages: 1 of 2 packages newer than {lock_s} (fakeextra 2.0-1 → 2.0-2)"
    );
    assert_eq!(t.matches(&warn).count(), 1, "{t}");
    let _ = std::fs::remove_dir_all(&base);
}

/// A checkout copied with its target/ (which cargo does not rebuild) acts on its own files.
#[test]
fn a_copied_checkout_reads_its_own_files() {
    let base = std::env::temp_dir().join(format!("xtask-copy-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let copy = base.join("clone");
    for d in ["xtask", "scenarios", "target/debug"] {
        std::fs::create_dir_all(copy.join(d)).unwrap();
    }
    std::fs::copy(root().join("Cargo.toml"), copy.join("Cargo.toml")).unwrap();
    std::fs::copy(
        root().join("xtask/Cargo.toml"),
        copy.join("xtask/Cargo.toml"),
    )
    .unwrap();
    std::fs::write(copy.join("scenarios/broken.yaml"), "name: [unclosed\n").unwrap();
    let exe = copy.join("target/debug/xtask");
    std::fs::copy(env!("CARGO_BIN_EXE_xtask"), &exe).unwrap();
    let run = |exe: &Path, dir: &Path| {
        let mut c = Command::new(exe);
        c.args(["scenario", "check"])
            .current_dir(dir)
            .env_remove("CARGO_MANIFEST_DIR");
        c.output().unwrap()
    };
    // Ours passes; the copy's (its own scenarios/) fails, naming its own file.
    let ours = run(Path::new(env!("CARGO_BIN_EXE_xtask")), &root());
    assert!(
        ours.status.success(),
        "{}",
        String::from_utf8_lossy(&ours.stderr)
    );
    let theirs = run(&exe, &base);
    let err = String::from_utf8_lossy(&theirs.stderr);
    assert!(
        !theirs.status.success(),
        "the copy read the original's scenarios: {err}"
    );
    assert!(
        err.contains(&copy.join("scenarios/broken.yaml").display().to_string())
            || err.contains("broken.yaml"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&base);
}

/// Bad input exits 2 before anything is fetched: a moving series under --locked, a bad size.
#[test]
fn contradictions_and_bad_sizes_are_bad_input() {
    let o = xtask()
        .args([
            "cache",
            "fetch",
            "--kernel",
            "debian-newest",
            "--no-tools",
            "--locked",
        ])
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(
        e.contains("debian-newest is a moving series") && e.contains("--locked cannot pin"),
        "{e}"
    );
    let o = xtask()
        .args(["cache", "prune", "--max", "lots"])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
