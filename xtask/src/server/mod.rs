//! Server profiles: how the platform runs one ublk server in the guest (format in
//! vm-images/servers/README.md). A profile says where the binary comes from, the argv that
//! adds a device (a template), how the platform learns the device is ready, how to stop the
//! server, whether it stores data, and what else it supports. Scenarios stay server-neutral:
//! what a scenario needs (`Capability`) is checked against what a profile claims, and a
//! scenario a server cannot run is a `skip` with the reason.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::input::{self, key_position, located};

pub mod build;
pub mod device;
pub mod fleet;
mod signal;

use crate::util::{root, Result};
pub use signal::Sig;

/// The built-in profiles' folder.
pub const DIR: &str = "vm-images/servers";
/// The server every scenario runs against unless told otherwise.
pub const DEFAULT: &str = "ublk-mem";

/// What a scenario may need from a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Capability {
    /// Reads return what was written (memory or a backing file): data verification works.
    StoresData,
    /// `start: {fault: ...}` (ublk-mem's stall-tag syntax).
    FaultInjection,
    /// SIGUSR1 writes a `ublk::contract::StateDump` to the `{state_file}` it was given.
    StateDump,
    /// `start: {trace: true}` (ublk/TRACE.md).
    Trace,
    Discard,
    WriteZeroes,
    Flush,
    /// User recovery: a `recovery:` section (how to add a recoverable device, how a new server
    /// takes over a dead one's device). Not listed under `capabilities`: the section says it.
    Recovery,
    /// Planned server replacement (QUIESCE_DEV): the `recovery:` section's `quiesce` command.
    Quiesce,
}

impl Capability {
    pub fn name(self) -> &'static str {
        match self {
            Capability::StoresData => "stores-data",
            Capability::FaultInjection => "fault-injection",
            Capability::StateDump => "state-dump",
            Capability::Trace => "trace",
            Capability::Discard => "discard",
            Capability::WriteZeroes => "write-zeroes",
            Capability::Flush => "flush",
            Capability::Recovery => "recovery",
            Capability::Quiesce => "quiesce",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub name: String,
    pub description: String,
    #[serde(with = "serde_yaml::with::singleton_map")]
    pub binary: Binary,
    pub add: Add,
    #[serde(with = "serde_yaml::with::singleton_map")]
    pub stop: Stop,
    pub storage: Storage,
    #[serde(default)]
    pub capabilities: Vec<Capability>,
    /// Extra argv for optional features, each with its capability.
    #[serde(default)]
    pub options: Options,
    /// User recovery, if the server has it.
    pub recovery: Option<Recovery>,
    /// The server's own state dump, taken into every freeze-frame.
    #[serde(default, with = "serde_yaml::with::singleton_map")]
    pub dump: Option<Dump>,
    #[serde(skip)]
    pub source: PathBuf,
    /// The host file copied into the guest's /bin, once `prepare` found or built it.
    #[serde(skip)]
    pub host_binary: Option<PathBuf>,
    /// A dynamically linked binary's shared-library closure (loader included), copied into
    /// the guest at the same paths.
    #[serde(skip)]
    pub host_libs: Vec<PathBuf>,
}

/// Where the server's binary comes from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum Binary {
    /// One of the image's guest binaries (vm-images/recipe.yaml).
    Builtin(String),
    /// A static binary on the host (relative paths are relative to the profile), copied into
    /// the guest's /bin before the first step.
    Path(PathBuf),
    /// A crate from the Rust registry at an exact version, built static on first use and
    /// cached (`server/build.rs`), then copied in like a path.
    Crate(build::CrateSpec),
    /// A program of a locked kernel's ublk selftests (`kublk`), built static from its
    /// linux-source like `vm-selftests` builds it, then copied in like a path.
    Selftests(SelftestsBinary),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelftestsBinary {
    /// The locked kernel whose suite it comes from, e.g. debian-7.2.
    pub kernel: String,
    /// kublk (or metadata_size).
    pub bin: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Add {
    /// The command that adds one device; `{size}`, `{queues}`, `{depth}`, `{block_size}`,
    /// `{dev_id}`, `{backing_file}` (storage: file) are filled in.
    pub argv: Vec<String>,
    pub mode: Mode,
    #[serde(with = "serde_yaml::with::singleton_map")]
    pub ready: Ready,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The server keeps running in the foreground; it is stopped by `stop`.
    Foreground,
    /// `add` exits 0 once the device is up and the server runs on in the background.
    Daemon,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ready {
    /// The first stdout line is a `ublk::contract::Ready` JSON object.
    Json,
    /// The first stdout line is the block device path, /dev/ublkbN.
    Path,
    /// Nothing useful on the output: the device is the one with `{dev_id}` if argv passes it,
    /// else the one device this server added (new in the kernel's list since the command
    /// started), found live through /dev/ublk-control (GET_DEV_INFO), whose server pid the
    /// kernel knows.
    Kernel,
    /// The first line of stdout or stderr this regex matches says the device is ready; a
    /// named group `dev` (a path /dev/ublkbN) or `dev_id` (a number) says which, else it is
    /// found from the kernel as for `kernel`. E.g. `{line: 'Device created: (?P<dev>\S+)'}`.
    Line(String),
}

impl Ready {
    pub fn name(&self) -> String {
        match self {
            Ready::Json => "json".into(),
            Ready::Path => "path".into(),
            Ready::Kernel => "kernel".into(),
            Ready::Line(re) => format!("line matching {re:?}"),
        }
    }

    /// The compiled `line` regex (checked when the profile loads).
    pub fn regex(&self) -> Option<regex::Regex> {
        match self {
            Ready::Line(re) => regex::Regex::new(re).ok(),
            _ => None,
        }
    }
}

/// How the platform asks a server for its own state dump when a run hangs (a Go server's
/// SIGQUIT goroutine dump, a C server's SIGUSR1 handler, or a command); what the server (or
/// the command) prints in the next seconds lands in the freeze-frame as `dump-NAME.txt`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum Dump {
    Signal(Sig),
    /// Run in the guest (a template like `stop.command`).
    Command(Vec<String>),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum Stop {
    /// A signal to the server process (its whole process group in foreground mode).
    Signal(Sig),
    /// The server's own command (e.g. `[rublk, del, -n, "{dev_id}"]`).
    Command(Vec<String>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    Memory,
    /// A backing file: the platform creates `{backing_file}` (tmpfs, the device's size).
    File,
    /// Reads return zeroes or garbage (a null target): no data verification.
    None,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Options {
    /// With fault-injection: e.g. [--fault, "{fault}"].
    pub fault: Option<Vec<String>>,
    /// With trace: e.g. [--trace, "{trace}"].
    pub trace: Option<Vec<String>>,
    /// With state-dump: e.g. [--state-file, "{state_file}"].
    pub state_file: Option<Vec<String>>,
}

/// How a server does user recovery (the kernel's USER_RECOVERY; see ublk/src/recovery.rs).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recovery {
    /// Per mode it supports (reissue, requeue, fail-io: the kernel's USER_RECOVERY_REISSUE,
    /// plain USER_RECOVERY, USER_RECOVERY_FAIL_IO), the argv appended to add.argv when a start
    /// step asks for that mode.
    pub add: std::collections::BTreeMap<RecoveryMode, Vec<String>>,
    /// A new server process taking over device `{dev_id}` after its server died: like `add`
    /// (argv, mode, ready).
    pub recover: Add,
    /// Optional: asks the running server to hand over (QUIESCE_DEV); it must exit 0 in time,
    /// and the server must then exit by itself.
    pub quiesce: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RecoveryMode {
    Reissue,
    Requeue,
    FailIo,
}

impl Recovery {
    /// The modes the server supports.
    pub fn modes(&self) -> Vec<RecoveryMode> {
        self.add.keys().copied().collect()
    }
}

impl RecoveryMode {
    pub fn name(self) -> &'static str {
        match self {
            RecoveryMode::Reissue => "reissue",
            RecoveryMode::Requeue => "requeue",
            RecoveryMode::FailIo => "fail-io",
        }
    }

    /// The kernel features a device in this mode needs (GET_FEATURES names).
    pub fn kernel_features(self) -> &'static [&'static str] {
        match self {
            RecoveryMode::Reissue => &["USER_RECOVERY", "USER_RECOVERY_REISSUE"],
            RecoveryMode::Requeue => &["USER_RECOVERY"],
            RecoveryMode::FailIo => &["USER_RECOVERY", "USER_RECOVERY_FAIL_IO"],
        }
    }
}

/// Values for an argv template.
#[derive(Debug, Clone, Default)]
pub struct Vars {
    pub size: u64,
    pub queues: u16,
    pub depth: u16,
    pub block_size: u32,
    pub dev_id: u32,
    pub backing_file: String,
    pub fault: String,
    pub trace: String,
    pub state_file: String,
    pub recovery: String,
}

const PLACEHOLDERS: [&str; 10] = [
    "size",
    "queues",
    "depth",
    "block_size",
    "dev_id",
    "backing_file",
    "fault",
    "trace",
    "state_file",
    "recovery",
];

impl Vars {
    fn get(&self, key: &str) -> Option<String> {
        Some(match key {
            "size" => self.size.to_string(),
            "queues" => self.queues.to_string(),
            "depth" => self.depth.to_string(),
            "block_size" => self.block_size.to_string(),
            "dev_id" => self.dev_id.to_string(),
            "backing_file" => self.backing_file.clone(),
            "fault" => self.fault.clone(),
            "trace" => self.trace.clone(),
            "state_file" => self.state_file.clone(),
            "recovery" => self.recovery.clone(),
            _ => return None,
        })
    }

    /// The template with every `{name}` replaced and `{{`/`}}` made `{`/`}` (names were
    /// checked when the profile loaded).
    pub fn render(&self, template: &[String]) -> Vec<String> {
        template
            .iter()
            .map(|arg| {
                let mut out = String::new();
                for piece in pieces(arg).unwrap_or_default() {
                    match piece {
                        Piece::Text(t) => out.push_str(&t),
                        Piece::Var(k) => out.push_str(&self.get(&k).unwrap_or_default()),
                    }
                }
                out
            })
            .collect()
    }
}

enum Piece {
    Text(String),
    Var(String),
}

/// An argv template split into text and `{name}` placeholders; `{{` and `}}` are a literal
/// brace. An unclosed `{` or a lone `}` is an error.
fn pieces(arg: &str) -> std::result::Result<Vec<Piece>, String> {
    let mut out = Vec::new();
    let mut text = String::new();
    let mut chars = arg.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, chars.peek()) {
            ('{', Some('{')) | ('}', Some('}')) => {
                chars.next();
                text.push(c);
            }
            ('{', _) => {
                let mut key = String::new();
                let mut closed = false;
                for c in chars.by_ref() {
                    if c == '}' {
                        closed = true;
                        break;
                    }
                    key.push(c);
                }
                if !closed {
                    return Err(format!(
                        "{arg:?}: an unclosed {{ (write {{{{ for a literal brace)"
                    ));
                }
                out.push(Piece::Text(std::mem::take(&mut text)));
                out.push(Piece::Var(key));
            }
            ('}', _) => {
                return Err(format!(
                    "{arg:?}: a lone }} (write }}}} for a literal brace)"
                ));
            }
            (c, _) => text.push(c),
        }
    }
    out.push(Piece::Text(text));
    Ok(out)
}

/// Largest server binary copied into a guest.
const MAX_BINARY_BYTES: u64 = 512 << 20;

impl Profile {
    /// A built-in profile by name, or a profile file by path.
    pub fn resolve(name_or_path: &str) -> Result<Profile> {
        let p = Path::new(name_or_path);
        if name_or_path.ends_with(".yaml") || name_or_path.contains('/') {
            return Profile::load(p);
        }
        let builtin = root().join(DIR).join(format!("{name_or_path}.yaml"));
        if builtin.is_file() {
            return Profile::load(&builtin);
        }
        Err(crate::util::bad_input(format!(
            "no server named {name_or_path:?}; built in: {} (or give a profile's path)",
            builtin_names().join(", ")
        )))
    }

    pub fn load(path: &Path) -> Result<Profile> {
        Profile::parse(&input::read(path)?, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Profile> {
        let mut p: Profile = input::parse(text, path)?;
        p.source = path.to_path_buf();
        p.check()
            .map_err(|(keys, m)| located(path, key_position(text, &keys), &m))?;
        Ok(p)
    }

    pub fn has(&self, c: Capability) -> bool {
        match c {
            Capability::StoresData => {
                self.storage != Storage::None || self.capabilities.contains(&c)
            }
            Capability::Recovery => self.recovery.is_some(),
            Capability::Quiesce => self.recovery.as_ref().is_some_and(|r| r.quiesce.is_some()),
            c => self.capabilities.contains(&c),
        }
    }

    /// Copies the server's host binary (a path or a crate build, found by `prepare`) into the
    /// guest's /bin, and a dynamic binary's shared libraries to the same paths. Bounded.
    pub fn install(&self, vm: &crate::vm::Vm, deadline: std::time::Instant) -> Result<()> {
        let Some(host) = &self.host_binary else {
            return Ok(());
        };
        let what = format!("server {} binary {}", self.name, host.display());
        let name = host
            .file_name()
            .ok_or_else(|| format!("{what}: no file name"))?;
        let mut files = vec![(host.clone(), format!("/bin/{}", name.to_string_lossy()))];
        files.extend(
            self.host_libs
                .iter()
                .map(|l| (l.clone(), l.display().to_string())),
        );
        for (from, to) in files {
            let data =
                std::fs::read(&from).map_err(|e| format!("{what}: {}: {e}", from.display()))?;
            let dir = Path::new(&to)
                .parent()
                .map(|d| d.display().to_string())
                .unwrap_or_default();
            vm.agent
                .run_capture(&["mkdir", "-p", &dir], deadline)
                .map_err(|e| format!("{what}: mkdir {dir} in the guest: {e}"))?;
            vm.agent
                .put_file(&to, 0o755, &data, deadline)
                .map_err(|e| {
                    format!(
                        "{what}: copying {} to the guest's {to}: {e}",
                        from.display()
                    )
                })?;
        }
        Ok(())
    }

    /// What the server offers beyond the basics, by name.
    pub fn extras(&self) -> Vec<String> {
        let mut caps: Vec<String> = self.capabilities.iter().map(|c| c.name().into()).collect();
        if let Some(r) = &self.recovery {
            let modes: Vec<&str> = r.modes().iter().map(|m| m.name()).collect();
            caps.push(format!("recovery ({})", modes.join(", ")));
            if r.quiesce.is_some() {
                caps.push("quiesce".into());
            }
        }
        caps
    }

    /// A few lines for `servers`: name and description, then how it runs.
    pub fn describe(&self) -> String {
        let mode = match self.add.mode {
            Mode::Foreground => "runs in the foreground",
            Mode::Daemon => "daemonizes",
        };
        let storage = match self.storage {
            Storage::Memory => "stores data in memory",
            Storage::File => "stores data in a backing file",
            Storage::None => "stores no data (reads are not verified)",
        };
        let stop = match &self.stop {
            Stop::Signal(sig) => format!("SIG{}", sig.name()),
            Stop::Command(c) => format!("`{}`", c.join(" ")),
        };
        let dump = match &self.dump {
            None => "none".to_string(),
            Some(Dump::Signal(sig)) => format!("SIG{}", sig.name()),
            Some(Dump::Command(c)) => format!("`{}`", c.join(" ")),
        };
        let extras = self.extras();
        let lines = [
            format!("{}: {}", self.name, self.description),
            format!("    add:     `{}`", self.add.argv.join(" ")),
            format!(
                "    runs:    {mode}, {storage}; ready: {}",
                self.add.ready.name()
            ),
            format!("    stop:    {stop}; state dump on a hang: {dump}"),
            format!(
                "    extras:  {}",
                if extras.is_empty() {
                    "none".to_string()
                } else {
                    extras.join(", ")
                }
            ),
        ];
        crate::text::term_lines(&lines.join("\n"))
    }

    /// Finds (or builds) the host binary to copy into the guest, and checks it can run there.
    /// Built-in binaries must be guest binaries of the recipe.
    pub fn prepare(&mut self, recipe: &crate::image::recipe::Recipe) -> Result<()> {
        let path = match &self.binary {
            Binary::Builtin(b) => {
                if !recipe.guest_binaries.iter().any(|g| &g.bin == b) {
                    return Err(format!(
                        "{}: binary {{builtin: {b}}} is not a guest binary of vm-images/recipe.yaml",
                        self.source.display()
                    ));
                }
                return Ok(());
            }
            Binary::Path(p) if p.is_absolute() => p.clone(),
            Binary::Path(p) => self.source.parent().unwrap_or(Path::new(".")).join(p),
            Binary::Crate(spec) => build::crate_binary(spec)?,
            Binary::Selftests(b) => {
                let suite = crate::selftests::suite::for_kernel(&b.kernel)?;
                let path = suite.root().join(&b.bin);
                if b.bin.contains('/') || !path.is_file() {
                    return Err(format!(
                        "{}: the {} selftests build has no program {:?} (it has kublk, metadata_size)",
                        self.source.display(),
                        b.kernel,
                        b.bin
                    ));
                }
                path
            }
        };
        let what = format!("server {}: binary {}", self.name, path.display());
        let data =
            input::read_bytes(&path, MAX_BINARY_BYTES).map_err(|e| format!("{what}: {e}"))?;
        if !crate::image::elf::is_static(&data).map_err(|e| format!("{what}: {e}"))? {
            self.host_libs = shared_closure(&path).map_err(|e| format!("{what}: {e}"))?;
        }
        self.host_binary = Some(path);
        Ok(())
    }

    /// Semantic checks, with the keys that locate each error.
    fn check(&self) -> std::result::Result<(), (Vec<&'static str>, String)> {
        let name_ok = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
        if self.name.is_empty() || !self.name.chars().all(name_ok) {
            return Err((
                vec!["name"],
                format!("name {:?} must be letters, digits, '-' or '_'", self.name),
            ));
        }
        let mut templates: Vec<(&'static str, &Vec<String>)> = vec![("add", &self.add.argv)];
        if let Stop::Command(c) = &self.stop {
            if c.is_empty() {
                return Err((
                    vec!["stop"],
                    "stop.command needs at least the program".into(),
                ));
            }
            templates.push(("stop", c));
        }
        for (opt, cap) in [
            (&self.options.fault, Capability::FaultInjection),
            (&self.options.trace, Capability::Trace),
            (&self.options.state_file, Capability::StateDump),
        ] {
            match opt {
                Some(t) => templates.push(("options", t)),
                None if self.capabilities.contains(&cap) => {
                    let m = format!("capability {} needs its argv under options", cap.name());
                    return Err((vec!["capabilities"], m));
                }
                None => {}
            }
        }
        if let Some(Dump::Command(c)) = &self.dump {
            if c.is_empty() {
                return Err((
                    vec!["dump"],
                    "dump.command needs at least the program".into(),
                ));
            }
            templates.push(("dump", c));
        }
        if let Some(r) = &self.recovery {
            templates.extend(r.add.values().map(|a| ("recovery", a)));
            templates.push(("recovery", &r.recover.argv));
            templates.extend(r.quiesce.iter().map(|q| ("recovery", q)));
        }
        for (key, t) in templates {
            for arg in t {
                check_placeholders(arg).map_err(|m| (vec![key], m))?;
                if arg.contains("{backing_file}") && self.storage != Storage::File {
                    return Err((vec![key], "{backing_file} needs `storage: file`".into()));
                }
            }
        }
        check_start(&self.add, false).map_err(|(k, m)| (vec!["add", k], m))?;
        self.check_recovery()?;
        if let Binary::Crate(spec) = &self.binary {
            spec.check().map_err(|m| (vec!["binary"], m))?;
        }
        Ok(())
    }
}

impl Profile {
    /// Recovery is the `recovery:` section's to declare, and its commands are complete.
    fn check_recovery(&self) -> std::result::Result<(), (Vec<&'static str>, String)> {
        for c in [Capability::Recovery, Capability::Quiesce] {
            if self.capabilities.contains(&c) {
                let m = format!(
                    "{} is declared by a `recovery:` section, not under capabilities",
                    c.name()
                );
                return Err((vec!["capabilities"], m));
            }
        }
        let Some(r) = &self.recovery else {
            return Ok(());
        };
        let at = |k: &'static str| vec!["recovery", k];
        if r.add.is_empty() {
            let m = "recovery.add needs the argv of at least one mode: reissue, requeue, fail-io";
            return Err((at("add"), m.into()));
        }
        if r.quiesce.as_ref().is_some_and(|q| q.is_empty()) {
            return Err((
                at("quiesce"),
                "recovery.quiesce needs at least the program".into(),
            ));
        }
        check_start(&r.recover, true)
            .map_err(|(_, m)| (at("recover"), format!("recovery.recover: {m}")))
    }
}

/// The rules an add (or a recover) command obeys, with the key that locates a violation. A
/// recover command must name the device it takes over (`{dev_id}`).
fn check_start(add: &Add, recover: bool) -> std::result::Result<(), (&'static str, String)> {
    if add.argv.is_empty() || add.argv[0].is_empty() {
        return Err(("argv", "argv needs at least the program".into()));
    }
    if recover && !add.uses_dev_id() {
        let m = "a recover command takes over one device: argv must pass {dev_id}";
        return Err(("argv", m.into()));
    }
    if let Ready::Line(re) = &add.ready {
        let r = regex::Regex::new(re).map_err(|e| ("ready", format!("ready.line: {e}")))?;
        let names: Vec<&str> = r.capture_names().flatten().collect();
        if names.iter().any(|n| *n != "dev" && *n != "dev_id") {
            let m = format!("ready.line: named groups may be `dev` (a /dev/ublkbN path) or `dev_id` (a number), not {names:?}");
            return Err(("ready", m));
        }
    }
    if add.mode == Mode::Daemon && !matches!(add.ready, Ready::Kernel | Ready::Line(_)) {
        let m = "mode: daemon needs ready: kernel or ready: {line: REGEX} (a daemon's output ends when the command exits)";
        return Err(("mode", m.into()));
    }
    Ok(())
}

impl Add {
    /// Does the command pass the device id the platform chose?
    pub fn uses_dev_id(&self) -> bool {
        self.argv.iter().any(|a| a.contains("{dev_id}"))
    }
}

/// The shared libraries (and the loader) a dynamic binary needs, as the host's loader resolves
/// them (`ldd`, bounded). A library the host cannot find is an error naming it.
fn shared_closure(bin: &Path) -> Result<Vec<PathBuf>> {
    let out = crate::host::procs::run_ok(
        std::process::Command::new("ldd").arg(bin),
        std::time::Duration::from_secs(30),
        "ldd",
    )?;
    let mut libs = Vec::new();
    for line in out.stdout.lines() {
        if line.contains("not found") {
            return Err(format!("needs a library the host lacks: {}", line.trim()));
        }
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x..)" or "/lib64/ld-linux-x86-64.so.2 (0x..)"
        if let Some(p) = line.split_whitespace().find(|w| w.starts_with('/')) {
            libs.push(PathBuf::from(p));
        }
    }
    if libs.is_empty() {
        return Err(format!("ldd found no libraries: {}", out.stdout.trim()));
    }
    Ok(libs)
}

fn check_placeholders(arg: &str) -> std::result::Result<(), String> {
    for piece in pieces(arg)? {
        if let Piece::Var(key) = piece {
            if !PLACEHOLDERS.contains(&key.as_str()) {
                return Err(format!(
                    "{arg:?}: unknown placeholder {{{key}}}; known: {} (and {{{{ }}}} for literal braces)",
                    PLACEHOLDERS.map(|p| format!("{{{p}}}")).join(" ")
                ));
            }
        }
    }
    Ok(())
}

/// Names of the built-in profiles.
pub fn builtin_names() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(root().join(DIR))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let p = e.path();
            (p.extension()? == "yaml")
                .then(|| p.file_stem().map(|s| s.to_string_lossy().into_owned()))?
        })
        .collect();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_profiles_load() {
        for name in builtin_names() {
            let p = Profile::resolve(&name).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(p.name, name);
        }
        let m = Profile::resolve(DEFAULT).unwrap();
        assert!(m.has(Capability::StoresData) && m.has(Capability::FaultInjection));
        assert!(Profile::resolve("no-such")
            .unwrap_err()
            .contains("built in: "));
    }

    fn err(text: &str) -> String {
        Profile::parse(text, Path::new("p.yaml")).unwrap_err()
    }

    const GOOD: &str = "name: s\ndescription: d\nbinary: {path: ./s}\nadd:\n  argv: [s, add, -n, '{dev_id}', -f, '{backing_file}']\n  mode: daemon\n  ready: kernel\nstop: {command: [s, del, -n, '{dev_id}']}\nstorage: file\n";

    #[test]
    fn recovery_sections_give_their_capabilities_and_are_checked() {
        let rec = "recovery:\n  add: {reissue: [-i, '1'], fail-io: [-e, '1']}\n  recover: {argv: [s, recover, -n, '{dev_id}'], mode: daemon, ready: kernel}\n";
        let p = Profile::parse(&format!("{GOOD}{rec}"), Path::new("p.yaml")).unwrap();
        assert!(p.has(Capability::Recovery) && !p.has(Capability::Quiesce));
        let r = p.recovery.as_ref().unwrap();
        assert_eq!(r.modes(), [RecoveryMode::Reissue, RecoveryMode::FailIo]);
        assert!(
            p.extras()
                .contains(&"recovery (reissue, fail-io)".to_string()),
            "{:?}",
            p.extras()
        );
        let with_q = format!("{GOOD}{rec}  quiesce: [s, quiesce, -n, '{{dev_id}}']\n");
        assert!(Profile::parse(&with_q, Path::new("p.yaml"))
            .unwrap()
            .has(Capability::Quiesce));
        let e = err(&format!("{GOOD}recovery:\n  add: {{}}\n  recover: {{argv: [s], mode: foreground, ready: json}}\n"));
        assert!(
            e.contains("p.yaml:") && e.contains("at least one mode"),
            "{e}"
        );
        let e = err(&format!("{GOOD}recovery:\n  add: {{reissue: []}}\n  recover: {{argv: [s], mode: daemon, ready: kernel}}\n"));
        assert!(
            e.contains("recovery.recover: a recover command takes over one device: argv must pass {dev_id}"),
            "{e}"
        );
        let e = err(&format!("{GOOD}capabilities: [recovery]\n"));
        assert!(e.contains("declared by a `recovery:` section"), "{e}");
        let e = err(&format!("{GOOD}recovery:\n  add: {{retry: []}}\n  recover: {{argv: [s], mode: foreground, ready: json}}\n"));
        assert!(e.contains("retry"), "{e}");
    }

    #[test]
    fn a_daemonizing_file_backed_server_parses() {
        let p = Profile::parse(GOOD, Path::new("/x/p.yaml")).unwrap();
        assert!(matches!(&p.binary, Binary::Path(b) if b == Path::new("./s")));
        let v = Vars {
            dev_id: 3,
            backing_file: "/run/f".into(),
            ..Default::default()
        };
        assert_eq!(
            v.render(&p.add.argv),
            ["s", "add", "-n", "3", "-f", "/run/f"]
        );
        assert!(p.has(Capability::StoresData) && !p.has(Capability::StateDump));
    }

    #[test]
    fn profile_errors_are_located() {
        let e = err(&GOOD.replace("mode: daemon", "mode: demon"));
        assert!(
            e.starts_with("p.yaml:6:9: add.mode: unknown variant `demon`"),
            "{e}"
        );
        let e = err(&GOOD.replace("'{dev_id}', -f", "'{devid}', -f"));
        assert!(
            e.starts_with("p.yaml:4:1: ") && e.contains("unknown placeholder {devid}"),
            "{e}"
        );
        let e = err(&GOOD.replace("storage: file", "storage: memory"));
        assert!(e.contains("{backing_file} needs `storage: file`"), "{e}");
        let e = err(&GOOD.replace("ready: kernel", "ready: json"));
        assert!(
            e.starts_with("p.yaml:6:3: mode: daemon needs ready: kernel"),
            "{e}"
        );
        let e = err(&format!("{GOOD}capabilities: [trace]\n"));
        assert!(
            e.contains("capability trace needs its argv under options"),
            "{e}"
        );
        let e = err(&format!("{GOOD}capabilities: [teleport]\n"));
        assert!(e.contains("unknown variant `teleport`"), "{e}");
    }

    const FOREIGN: &str = "name: go\ndescription: d\nbinary: {path: ./go}\nadd:\n  argv: [go, serve, --size, '{size}']\n  mode: foreground\n  ready: {line: 'Device created: (?P<dev>/dev/ublkb[0-9]+)'}\nstop: {signal: TERM}\nstorage: memory\n";

    #[test]
    fn a_server_that_prints_its_own_ready_line_and_picks_its_own_id_needs_no_wrapper() {
        let p = Profile::parse(FOREIGN, Path::new("p.yaml")).unwrap();
        assert!(
            !p.add.uses_dev_id(),
            "the kernel's new device is the one it added"
        );
        let re = p.add.ready.regex().unwrap();
        let c = re
            .captures("2026/12/03 Device created: /dev/ublkb7")
            .unwrap();
        assert_eq!(&c["dev"], "/dev/ublkb7");
        let daemon = FOREIGN.replace("mode: foreground", "mode: daemon");
        assert!(
            Profile::parse(&daemon, Path::new("p.yaml")).is_ok(),
            "a daemon may say it too"
        );
        let kernel = FOREIGN.replace(
            "ready: {line: 'Device created: (?P<dev>/dev/ublkb[0-9]+)'}",
            "ready: kernel",
        );
        assert!(
            Profile::parse(&kernel, Path::new("p.yaml")).is_ok(),
            "ready: kernel without {{dev_id}}"
        );
        let e = err(&FOREIGN.replace("(?P<dev>", "(?P<device>"));
        assert!(
            e.contains("named groups may be `dev`") && e.contains("device"),
            "{e}"
        );
        let e = err(&FOREIGN.replace("[0-9]+)'", "[0-9]+'"));
        assert!(e.starts_with("p.yaml:") && e.contains("ready.line"), "{e}");
    }

    #[test]
    fn doubled_braces_are_literal_braces() {
        let v = Vars {
            size: 4096,
            dev_id: 2,
            ..Default::default()
        };
        let t = |s: &str| v.render(&[s.to_string()]).remove(0);
        assert_eq!(t("{{x}}"), "{x}");
        assert_eq!(t("{{{size}}}"), "{4096}");
        assert_eq!(
            t("awk '{{print $1}}' /sys/block/ublkb{dev_id}/inflight"),
            "awk '{print $1}' /sys/block/ublkb2/inflight"
        );
        let ok = FOREIGN.replace("'{size}']", "'{size}', '--json={{}}']");
        assert!(Profile::parse(&ok, Path::new("p.yaml")).is_ok());
        let e = err(&FOREIGN.replace("'{size}']", "'{nope}']"));
        assert!(e.contains("unknown placeholder {nope}"), "{e}");
    }

    #[test]
    fn a_dump_hook_is_a_signal_or_a_command() {
        let sig = Profile::parse(
            &format!("{FOREIGN}dump: {{signal: QUIT}}\n"),
            Path::new("p.yaml"),
        )
        .unwrap();
        assert!(matches!(sig.dump, Some(Dump::Signal(s)) if s.name() == "QUIT"));
        let cmd = format!("{FOREIGN}dump: {{command: [go-ctl, dump, '{{dev_id}}']}}\n");
        let cmd = Profile::parse(&cmd, Path::new("p.yaml")).unwrap();
        assert!(matches!(&cmd.dump, Some(Dump::Command(c)) if c.len() == 3));
        assert!(
            cmd.describe().contains("go-ctl dump {dev_id}"),
            "{}",
            cmd.describe()
        );
        let e = err(&format!("{FOREIGN}dump: {{command: []}}\n"));
        assert!(e.contains("dump.command needs at least the program"), "{e}");
        let e = err(&format!("{FOREIGN}dump: {{signal: WINCH}}\n"));
        assert!(e.contains("WINCH"), "{e}");
        assert!(Profile::parse(FOREIGN, Path::new("p.yaml"))
            .unwrap()
            .dump
            .is_none());
    }
}
