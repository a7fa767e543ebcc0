//! Guest image assembly: kernel part + initramfs.
//!
//! The initramfs is two concatenated newc archives: a base archive (busybox and its applet
//! links, /init, the modules with a modules.dep) and a guest archive (the workspace's static
//! guest binaries). Each is cached under its own input hash, so rebuilding the agent only
//! rewrites the small guest archive; the kernel part is never touched by it.

pub mod apt;
pub mod cache;
pub mod closure;
pub mod cpio;
pub mod debian;
pub mod elf;
pub mod extra;
pub mod fetch;
pub mod kernel;
pub mod recipe;
pub mod resolve;
pub mod store;
pub mod tools;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::host::{deps, procs};
use crate::util::{key_of, root, sha256_bytes, sha256_file, Result};
use cpio::CpioWriter;
use kernel::{Kernel, Source};
use recipe::Recipe;
use store::{FileSum, HasFiles};

/// Bumped when the initramfs layout changes.
const FORMAT: u32 = 1;
/// Host triple of the guest binaries (the only one installable here).
pub const GUEST_TRIPLE: &str = "x86_64-unknown-linux-gnu";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ImageManifest {
    pub format: u32,
    /// sha256 over (boot kernel sha256, initrd sha256, cmdline): what was booted, exactly.
    pub image_hash: String,
    pub kernel_key: String,
    pub kernel_release: String,
    pub kernel_source: String,
    pub boot_kind: String,
    pub cmdline: String,
    pub guest_binaries: BTreeMap<String, String>,
    pub files: BTreeMap<String, FileSum>,
}

impl HasFiles for ImageManifest {
    fn files(&self) -> &BTreeMap<String, FileSum> {
        &self.files
    }
    fn files_mut(&mut self) -> &mut BTreeMap<String, FileSum> {
        &mut self.files
    }
}

pub struct Image {
    pub kernel: Kernel,
    pub dir: PathBuf,
    pub manifest: ImageManifest,
    /// The verified base archive the initrd starts with.
    pub base: PathBuf,
    verified: store::Verified,
}

impl Image {
    pub fn initrd(&self) -> PathBuf {
        self.dir.join("initrd.cpio")
    }
    pub fn hash(&self) -> &str {
        &self.manifest.image_hash
    }

    /// Before every boot: every file QEMU reads (kernel, initrd) and both manifests (the
    /// command line comes from one) still hold what was verified.
    pub fn recheck(&self) -> Result<()> {
        self.kernel
            .verified
            .recheck()
            .and_then(|()| self.verified.recheck())
            .map_err(|e| {
                format!("the guest image is damaged: {e}; `cargo xtask vm-build` rebuilds it")
            })
    }
}

/// The image hash covers the kernel, the initrd and the command line: a manifest whose
/// command line or sums were edited no longer matches it and is never booted.
fn consistent(
    m: &ImageManifest,
    kernel_sum: &str,
    cmdline: &str,
) -> std::result::Result<(), String> {
    let initrd = &m
        .files
        .get("initrd.cpio")
        .ok_or("the manifest lists no initrd.cpio")?
        .sha256;
    if m.cmdline != cmdline {
        return Err(format!(
            "its command line {:?} is not the recipe's",
            m.cmdline
        ));
    }
    if image_hash(kernel_sum, initrd, &m.cmdline) != m.image_hash {
        return Err("its image_hash does not cover its kernel, initrd and command line".into());
    }
    Ok(())
}

fn image_hash(kernel_sum: &str, initrd_sum: &str, cmdline: &str) -> String {
    key_of(&[
        ("kernel", kernel_sum.as_bytes()),
        ("initrd", initrd_sum.as_bytes()),
        ("cmdline", cmdline.as_bytes()),
    ])
}

/// What the initramfs is made of (everything but the kernel part).
struct Inputs {
    busybox: Vec<u8>,
    init: Vec<u8>,
    recipe_text: Vec<u8>,
    /// (binary name, bytes) of each static guest binary.
    guest: Vec<(String, Vec<u8>)>,
}

fn inputs(recipe: &Recipe) -> Result<Inputs> {
    let read =
        |p: &std::path::Path| std::fs::read(p).map_err(|e| format!("read {}: {e}", p.display()));
    let mut guest = Vec::new();
    for (name, path) in build_guest_binaries(recipe)? {
        guest.push((name, read(&path)?));
    }
    Ok(Inputs {
        busybox: read(&deps::busybox()?)?,
        init: read(&Recipe::dir().join(&recipe.init))?,
        recipe_text: read(&Recipe::path())?,
        guest,
    })
}

/// Builds (or reuses) the image for `source`. Verifies every cached file it returns, the base
/// archive included (even when the image that contains it is cached).
pub fn build(source: &Source) -> Result<Image> {
    // One process at a time installs packages and builds: parallel test runs share the cache.
    let _lock = store::lock(Duration::from_secs(1800))?;
    deps::ensure(deps::needs(source))?;
    let recipe = Recipe::load()?;
    let kernel = prepare_kernel(source, &recipe)?;
    let input = inputs(&recipe)?;
    let kernel_sum = kernel
        .manifest
        .files
        .get("kernel")
        .ok_or("kernel manifest lacks the kernel file")?
        .sha256
        .clone();
    let base_key = key_of(&[
        ("format", &FORMAT.to_le_bytes()),
        ("kernel", kernel.manifest.key.as_bytes()),
        ("busybox", sha256_bytes(&input.busybox).as_bytes()),
        ("init", &input.init),
        ("recipe", &input.recipe_text),
    ]);
    let base = base_archive(&base_key, &kernel, &input.busybox, &input.init)?;
    let guest_sums: BTreeMap<String, String> = input
        .guest
        .iter()
        .map(|(n, d)| (n.clone(), sha256_bytes(d)))
        .collect();
    let guest_list = serde_json::to_vec(&guest_sums).expect("a map serialises");
    // The kernel trace's probes, generated from their one definition (`ublk::ktrace`).
    let ktrace = ublk::ktrace::tracefs::install_script();
    let key = key_of(&[
        ("base", base_key.as_bytes()),
        ("guest", &guest_list),
        ("ktrace", ktrace.as_bytes()),
    ]);
    let check = |m: &ImageManifest| consistent(m, &kernel_sum, &recipe.cmdline);
    let (dir, manifest, verified) =
        store::cached_dir(&store::dir().join("images"), &key, "image", check, |tmp| {
            let mut initrd =
                std::fs::read(&base).map_err(|e| format!("read {}: {e}", base.display()))?;
            let mut w = CpioWriter::new(Vec::new());
            for (name, data) in &input.guest {
                w.file(&format!("bin/{name}"), 0o755, data)
                    .map_err(|e| e.to_string())?;
            }
            w.file(
                ublk::ktrace::tracefs::INSTALL_PATH,
                0o644,
                ktrace.as_bytes(),
            )
            .map_err(|e| e.to_string())?;
            initrd.extend(w.finish().map_err(|e| e.to_string())?);
            std::fs::write(tmp.join("initrd.cpio"), &initrd)
                .map_err(|e| format!("write initrd: {e}"))?;
            Ok(ImageManifest {
                format: FORMAT,
                image_hash: image_hash(&kernel_sum, &sha256_bytes(&initrd), &recipe.cmdline),
                kernel_key: kernel.manifest.key.clone(),
                kernel_release: kernel.manifest.release.clone(),
                kernel_source: kernel.manifest.source.clone(),
                boot_kind: kernel.manifest.boot_kind.clone(),
                cmdline: recipe.cmdline.clone(),
                guest_binaries: guest_sums.clone(),
                files: BTreeMap::new(),
            })
        })?;
    Ok(Image {
        kernel,
        dir,
        manifest,
        base,
        verified,
    })
}

/// The cached base archive (busybox, /init, /etc, modules).
fn base_archive(key: &str, kernel: &Kernel, busybox: &[u8], init: &[u8]) -> Result<PathBuf> {
    let bases = store::dir().join("bases");
    let path = bases.join(format!("{key}.cpio"));
    let sum_path = bases.join(format!("{key}.sha256"));
    if let (Ok(want), Ok((have, _))) = (std::fs::read_to_string(&sum_path), sha256_file(&path)) {
        if want.trim() == have {
            return Ok(path);
        }
        eprintln!(
            "xtask: cached base archive {} is damaged; rebuilding it",
            path.display()
        );
    }
    if !elf::is_static(busybox)? {
        return Err("the host busybox is dynamically linked; install busybox-static (apt-get install busybox-static)".into());
    }
    let applets = procs::run_ok(
        Command::new(deps::busybox()?).arg("--list"),
        Duration::from_secs(10),
        "busybox --list",
    )?
    .stdout;
    let e = |e: std::io::Error| e.to_string();
    let mut w = CpioWriter::new(Vec::new());
    for d in ["dev", "proc", "sys", "tmp", "run", "root", "etc", "usr"] {
        w.dir(d, 0o755).map_err(e)?;
    }
    w.file("bin/busybox", 0o755, busybox).map_err(e)?;
    for a in applets
        .split_whitespace()
        .filter(|a| *a != "busybox" && !a.contains('/'))
    {
        w.symlink(&format!("bin/{a}"), "busybox").map_err(e)?;
    }
    for (link, target) in [
        ("sbin", "bin"),
        ("usr/bin", "../bin"),
        ("usr/sbin", "../bin"),
    ] {
        w.symlink(link, target).map_err(e)?;
    }
    w.file("init", 0o755, init).map_err(e)?;
    w.file(
        "etc/boot-modules",
        0o644,
        kernel.manifest.load_at_boot.join("\n").as_bytes(),
    )
    .map_err(e)?;
    w.file("etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\n")
        .map_err(e)?;
    w.file("etc/group", 0o644, b"root:x:0:\n").map_err(e)?;
    let moddir = format!("lib/modules/{}", kernel.manifest.release);
    w.dir(&moddir, 0o755).map_err(e)?;
    for m in &kernel.manifest.modules {
        let data = std::fs::read(kernel.dir.join("modules").join(&m.path))
            .map_err(|err| format!("read module {}: {err}", m.path))?;
        w.file(&format!("{moddir}/{}", m.path), 0o644, &data)
            .map_err(e)?;
    }
    w.file(
        &format!("{moddir}/modules.dep"),
        0o644,
        kernel.modules_dep().as_bytes(),
    )
    .map_err(e)?;
    let bytes = w.finish().map_err(e)?;
    crate::util::write_atomic(&path, &bytes)?;
    crate::util::write_atomic(&sum_path, sha256_bytes(&bytes).as_bytes())?;
    Ok(path)
}

/// Builds the recipe's guest binaries statically (crt-static) in their own target dir, so the
/// host build's cache is untouched. Returns (binary name, path).
pub fn build_guest_binaries(recipe: &Recipe) -> Result<Vec<(String, PathBuf)>> {
    let target = crate::util::target_dir().join("guest");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root())
        .args([
            "build",
            "--release",
            "--target",
            GUEST_TRIPLE,
            "--target-dir",
        ])
        .arg(&target)
        // An explicit --target keeps these flags off build scripts and proc macros.
        .env("CARGO_ENCODED_RUSTFLAGS", "-Ctarget-feature=+crt-static")
        .env_remove("RUSTFLAGS");
    for b in &recipe.guest_binaries {
        cmd.args(["-p", &b.package, "--bin", &b.bin]);
    }
    let spinner = crate::ui::spinner("building static guest binaries (cargo build --release)");
    let t = Instant::now();
    let out = procs::run(
        &mut cmd,
        Duration::from_secs(1800),
        "cargo build (guest binaries)",
    );
    spinner.finish_and_clear();
    let out = out?;
    if !out.status.success() {
        return Err(format!(
            "building the guest binaries failed:\n{}",
            procs::tail(&out.stderr, 40)
        ));
    }
    if t.elapsed() > Duration::from_secs(2) {
        eprintln!(
            "xtask: guest binaries built in {:.1} s",
            t.elapsed().as_secs_f64()
        );
    }
    let mut bins = Vec::new();
    for b in &recipe.guest_binaries {
        let p = target.join(GUEST_TRIPLE).join("release").join(&b.bin);
        let head = std::fs::read(&p).map_err(|e| format!("read {}: {e}", p.display()))?;
        if !elf::is_static(&head)? {
            return Err(format!(
                "{} is not statically linked; the guest has no libc",
                p.display()
            ));
        }
        bins.push((b.bin.clone(), p));
    }
    Ok(bins)
}

pub fn describe(image: &Image) -> String {
    format!(
        "image {} | kernel {} ({}, {})",
        &image.hash()[..16],
        image.manifest.kernel_release,
        image
            .manifest
            .kernel_source
            .split_whitespace()
            .next()
            .unwrap_or("?"),
        image.manifest.boot_kind,
    )
}
/// Returns the verified kernel part for `source`, building it if needed.
pub fn prepare_kernel(source: &Source, recipe: &Recipe) -> Result<Kernel> {
    match source {
        Source::Debian(name) => debian::prepare(name, recipe),
        Source::Host => kernel::prepare_host(recipe),
        Source::Path(p) => kernel::prepare_path(p, recipe),
    }
}
