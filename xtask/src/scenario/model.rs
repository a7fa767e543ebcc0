//! The scenario file format (documented in scenarios/README.md). Parsing is strict: unknown
//! fields, wrong types, bad sizes, unknown step kinds and missing timeouts are errors that
//! name file:line:column; cross-references (devices, background jobs) are checked after
//! parsing and name the step's line.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};

pub use blkio::plan::Pattern;

use crate::input::{self, key_position, located};
use crate::server::{Capability, RecoveryMode, Sig};
use crate::util::Result;

/// Limits that keep a scenario bounded whatever its author writes.
pub const MAX_TIMEOUT_S: u64 = 3600;
pub const MAX_STEPS: usize = 200;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    pub description: String,
    /// Hard limit for the whole scenario (boot included), seconds.
    pub timeout: Secs,
    #[serde(default)]
    pub vm: VmSpec,
    /// Defaults for every `start` step.
    #[serde(default)]
    pub device: DeviceSpec,
    /// Kernel log lines matching any of these substrings are expected, not failures.
    #[serde(default)]
    pub expect_splats: Vec<String>,
    /// Server this scenario runs against unless `--server` says otherwise (default ublk-mem).
    pub server: Option<String>,
    /// Groups it belongs to: `vm-e2e GROUP` runs every scenario tagged GROUP (e.g.
    /// `freeze-frame`: stalled-tag and stopped-server).
    #[serde(default)]
    pub tags: Vec<String>,
    /// What the server (and the kernel) must support beyond what the steps imply (see `needs`).
    #[serde(default)]
    pub requires: Requires,
    pub steps: Vec<Step>,
    /// The file it was read from.
    #[serde(skip)]
    pub source: PathBuf,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmSpec {
    pub cpus: Option<u32>,
    pub memory: Option<String>,
    /// debian | host | PATH (the command line's --kernel wins).
    pub kernel: Option<String>,
    /// Programs from the guest tools layer this scenario uses (e.g. fio); the layer is
    /// attached only when this is non-empty.
    #[serde(default)]
    pub tools: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DeviceSpec {
    pub size: Option<Size>,
    pub queues: Option<u16>,
    pub depth: Option<u16>,
    pub block_size: Option<u32>,
}

impl DeviceSpec {
    /// What a start step asks for: its own values over these, else the defaults.
    pub fn params(&self, s: &Start) -> DeviceParams {
        DeviceParams {
            size_bytes: s.size.or(self.size).map_or(256 << 20, |v| v.0),
            queues: s.queues.or(self.queues).unwrap_or(1),
            depth: s.depth.or(self.depth).unwrap_or(64),
            block_size: s.block_size.or(self.block_size).unwrap_or(4096),
        }
    }
}

/// A step: exactly one kind, a timeout in seconds, an optional label.
#[derive(Debug, Clone)]
pub struct Step {
    pub label: Option<String>,
    pub timeout: Secs,
    pub kind: Kind,
}

/// The step kinds, one row each: its YAML key, its variant and options type, what `KEY:` with
/// no options means (`None`: options required), and a minimal use (the options, with the
/// steps it needs before it) that the docs' tidy test parses. The enum, `KINDS` (which the docs
/// are checked against), `Kind::name`, the YAML fields and "exactly one kind per step" all come
/// from this table; `needs`, the checker and the runner match every kind explicitly, so the
/// compiler asks for a new kind's arm in each.
macro_rules! step_kinds {
    ($( $key:ident => $variant:ident($ty:ty), bare: $bare:expr, example: ($pre:literal, $body:literal); )*) => {
        #[derive(Debug, Clone)]
        pub enum Kind {
            $( $variant($ty), )*
        }

        /// Every step kind, in the order the docs list them.
        pub const KINDS: &[&str] = &[ $( stringify!($key), )* ];

        impl Kind {
            pub fn name(&self) -> &'static str {
                match self {
                    $( Kind::$variant(_) => stringify!($key), )*
                }
            }

            /// (steps it needs before it, its options) for a minimal scenario using `kind`.
            #[cfg(test)]
            pub fn example(kind: &str) -> Option<(&'static str, &'static str)> {
                match kind {
                    $( stringify!($key) => Some(($pre, $body)), )*
                    _ => None,
                }
            }
        }

        $( impl KindBody for $ty {
            fn bare() -> Option<Self> {
                $bare
            }
        } )*

        #[derive(Debug, Clone, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct StepRaw {
            /// Required: every step is bounded.
            timeout: Secs,
            #[serde(default)]
            label: Option<String>,
            $( #[serde(default, deserialize_with = "body")]
            $key: Option<$ty>, )*
        }

        impl StepRaw {
            /// The kinds this step names (a valid step names exactly one).
            fn kinds(self) -> Vec<Kind> {
                let mut v = Vec::new();
                $( v.extend(self.$key.map(Kind::$variant)); )*
                v
            }
        }
    };
}

step_kinds! {
    start => Start(Start), bare: None, example: ("", "{}");
    stop => Stop(StopStep), bare: None, example: ("  - {start: {}, timeout: 1}\n", "{}");
    io => Io(Io), bare: None, example: ("  - {start: {}, timeout: 1}\n", "{bytes: 4KiB}");
    shell => Shell(Shell), bare: None, example: ("", "{run: 'true'}");
    signal => Signal(Signal), bare: None, example: ("  - {start: {}, timeout: 1}\n", "{signal: TERM}");
    recover => Recover(Recover), bare: None, example: ("  - {start: {recovery: reissue}, timeout: 1}\n  - {signal: {signal: KILL}, timeout: 1}\n", "{}");
    quiesce => Quiesce(Quiesce), bare: None, example: ("  - {start: {recovery: reissue}, timeout: 1}\n", "{}");
    expect_timeout => ExpectTimeout(ExpectTimeout), bare: None, example: ("  - {start: {}, timeout: 1}\n", "{shell: 'sleep 9'}");
    wait => Wait(Wait), bare: None, example: ("  - {start: {}, timeout: 1}\n  - {shell: {run: x, background: j}, timeout: 1}\n", "{job: j, expect: pass}");
    wait_until => WaitUntil(WaitUntil), bare: None, example: ("  - {start: {}, timeout: 1}\n", "{run: 'test -b $DEV_d0', every_ms: 50}");
    reset => Reset(Reset), bare: Some(Reset {}), example: ("", "{}");
    check => Check(Check), bare: Some(Check {}), example: ("", "{}");
}

/// What `KIND:` with no options (YAML null) means for a kind: its options' defaults, or None
/// when the kind needs options.
trait KindBody: Sized {
    fn bare() -> Option<Self>;
}

/// A kind's options; `check:` (null) is `check: {}` for the kinds that allow it.
fn body<'de, D: Deserializer<'de>, T: KindBody + Deserialize<'de>>(
    d: D,
) -> std::result::Result<Option<T>, D::Error> {
    match Option::<T>::deserialize(d)? {
        Some(t) => Ok(Some(t)),
        None => T::bare()
            .map(Some)
            .ok_or_else(|| serde::de::Error::custom("this step kind needs its options ({...})")),
    }
}

impl<'de> Deserialize<'de> for Step {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Step, D::Error> {
        let r = StepRaw::deserialize(d)?;
        let (label, timeout) = (r.label.clone(), r.timeout);
        let mut kinds = r.kinds();
        if kinds.len() != 1 {
            let found: Vec<&str> = kinds.iter().map(|k| k.name()).collect();
            return Err(serde::de::Error::custom(format!(
                "a step needs exactly one kind ({}); found {}",
                KINDS.join(", "),
                if found.is_empty() {
                    "none".to_string()
                } else {
                    found.join(" and ")
                }
            )));
        }
        Ok(Step {
            label,
            timeout,
            kind: kinds.pop().expect("exactly one"),
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Start {
    /// Name other steps use for this device.
    #[serde(default = "default_device")]
    pub name: String,
    pub size: Option<Size>,
    pub queues: Option<u16>,
    pub depth: Option<u16>,
    pub block_size: Option<u32>,
    /// ublk-mem fault injection, e.g. stall-tag=0:0:after=20
    pub fault: Option<FaultSpec>,
    /// Record the tag trace (saved with the run's artifacts).
    #[serde(default)]
    pub trace: bool,
    /// User recovery: the device outlives its server (reissue, requeue or fail-io); a
    /// `recover` step gives it a new one.
    pub recovery: Option<RecoveryMode>,
}

impl Start {
    /// A start with every value from the scenario's `device:` defaults.
    pub fn named(name: &str) -> Start {
        Start {
            name: name.to_string(),
            size: None,
            queues: None,
            depth: None,
            block_size: None,
            fault: None,
            trace: false,
            recovery: None,
        }
    }
}

/// Ends a server the way its profile says (a signal, or its own command); it must exit in
/// time (a foreground server with status 0) and take its device with it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StopStep {
    #[serde(default = "default_device")]
    pub device: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Io {
    #[serde(default = "default_device")]
    pub device: String,
    #[serde(default = "yes")]
    pub write: bool,
    #[serde(default = "yes")]
    pub verify: bool,
    /// Verify every block of the device (unwritten ones must be zero) and its md5.
    #[serde(default)]
    pub full: bool,
    #[serde(default = "default_pattern")]
    pub pattern: Pattern,
    /// Default: the scenario run's seed.
    pub seed: Option<u64>,
    pub bytes: Option<Size>,
    pub count: Option<u64>,
    pub min: Option<Size>,
    pub max: Option<Size>,
    pub qd: Option<u32>,
    /// Scattered pattern: also re-write ranges overlapping earlier (possibly in-flight) writes.
    #[serde(default)]
    pub overlap: bool,
    /// Submit from every CPU so every ublk queue gets requests.
    #[serde(default)]
    pub spread: bool,
    /// A failed write does not fail the step (a crash with FAIL_IO or requeue recovery): its
    /// blocks may hold old or new content, acknowledged writes must still be exact.
    #[serde(default)]
    pub allow_errors: bool,
    /// Run in the background under this job name (see `wait`).
    pub background: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shell {
    /// Run with `sh -c` in the guest.
    pub run: String,
    #[serde(default)]
    pub expect_status: i32,
    pub background: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signal {
    #[serde(default = "default_device")]
    pub device: String,
    pub signal: Sig,
    /// For TERM/INT: the daemon's exit status (default 0). KILL always ends it by signal.
    pub expect_exit: Option<i32>,
    /// Wait a seeded random time in [min, max] milliseconds first (e.g. a crash at a random
    /// moment of a background writer); the step log names the delay and the requests the
    /// block layer had in flight just before the signal.
    pub delay_ms: Option<[u64; 2]>,
    /// After the delay, wait (within the step's timeout) until the block layer has writes in
    /// flight on the device, so the signal hits them (a crash under load, not between jobs).
    #[serde(default)]
    pub in_flight: bool,
}

/// A new server takes over a device whose server died or was quiesced (the profile's
/// `recovery.recover`); its requests go on.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recover {
    #[serde(default = "default_device")]
    pub device: String,
}

/// A planned hand-over (kernels with QUIESCE): the profile's `recovery.quiesce` command; the
/// server must then exit by itself with status 0, leaving the device to a `recover` step.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quiesce {
    #[serde(default = "default_device")]
    pub device: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Name {
    /// The freeze-frame identifies a stuck queue/tag (daemon dump or blk-mq debugfs).
    StuckTag,
    /// The freeze-frame lists at least one task blocked in D state.
    BlockedTask,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectTimeout {
    /// A command that must still be running when the step's timeout expires.
    pub shell: Option<String>,
    pub io: Option<Io>,
    /// What the freeze-frame taken at the timeout must name.
    #[serde(default)]
    pub must_name: Vec<Name>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Expect {
    Pass,
    Fail,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Wait {
    pub job: String,
    pub expect: Expect,
}

/// Polls a shell condition until it holds: `run` (as `shell` runs it) every `every_ms` until
/// it exits 0; still failing at the step's timeout is a hang (freeze-frame, the last output).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitUntil {
    pub run: String,
    #[serde(default = "default_every_ms")]
    pub every_ms: u64,
}

/// How often `wait_until` tries by default, and its bounds (a busy loop is not a poll; a
/// poll rarer than every 10 s is a `shell` step with a sleep).
pub const DEFAULT_EVERY_MS: u64 = 100;
pub const EVERY_MS: std::ops::RangeInclusive<u64> = 10..=10_000;

fn default_every_ms() -> u64 {
    DEFAULT_EVERY_MS
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reset {}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Check {}

fn default_device() -> String {
    "d0".into()
}
fn yes() -> bool {
    true
}
fn default_pattern() -> Pattern {
    Pattern::Scattered
}

/// Seconds, 1..=MAX_TIMEOUT_S.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Secs(pub u64);

impl<'de> Deserialize<'de> for Secs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Secs, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Secs;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                write!(f, "a whole number of seconds in 1..={MAX_TIMEOUT_S}")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> std::result::Result<Secs, E> {
                if v == 0 || v > MAX_TIMEOUT_S {
                    return Err(E::custom(format!(
                        "timeout {v} s is out of range (1..={MAX_TIMEOUT_S} seconds)"
                    )));
                }
                Ok(Secs(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> std::result::Result<Secs, E> {
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => Err(E::custom(format!(
                        "timeout {v} s is out of range (1..={MAX_TIMEOUT_S} seconds)"
                    ))),
                }
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> std::result::Result<Secs, E> {
                if v.fract() == 0.0 && v.abs() <= MAX_TIMEOUT_S as f64 {
                    // -0, 5.0: whole numbers written as floats.
                    return self.visit_i64(v as i64);
                }
                Err(E::custom(format!(
                    "timeout {v} is not a whole number of seconds in 1..={MAX_TIMEOUT_S}"
                )))
            }
        }
        d.deserialize_any(V)
    }
}

/// A byte size written like "64MiB", "4KiB", "1G" or a plain number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Size, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Size;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a size such as 64MiB, 4KiB or a number of bytes")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> std::result::Result<Size, E> {
                Ok(Size(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> std::result::Result<Size, E> {
                u64::try_from(v)
                    .map(Size)
                    .map_err(|_| E::custom(format!("invalid size {v}: must not be negative")))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> std::result::Result<Size, E> {
                if v.fract() == 0.0 && (0.0..9.0e15).contains(&v.abs()) {
                    return Ok(Size(v.abs() as u64)); // -0 or 4096.0
                }
                Err(E::custom(format!(
                    "invalid size {v}: a whole number of bytes or a size such as 64MiB"
                )))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<Size, E> {
                parse_size(v).map(Size).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

pub use ublk::util::parse_size;

/// ublk-mem's fault syntax, checked here so `scenario check` catches typos without a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultSpec(pub String);

impl<'de> Deserialize<'de> for FaultSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<FaultSpec, D::Error> {
        let s = String::deserialize(d)?;
        ublk::server::parse_fault(&s).map_err(serde::de::Error::custom)?;
        Ok(FaultSpec(s))
    }
}

impl FaultSpec {
    pub fn parsed(&self) -> (u16, ublk::core::Fault) {
        ublk::server::parse_fault(&self.0).expect("checked when deserialized")
    }
}

/// `requires:` — a list of server capabilities, or a map with `server:` capabilities,
/// `kernel:` ublk feature names (as GET_FEATURES reports them, e.g. QUIESCE) and
/// `kernel_version:` the oldest kernel release the scenario runs on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requires {
    pub server: Vec<Capability>,
    pub kernel: Vec<String>,
    pub kernel_version: Option<KernelVersion>,
}

/// A kernel version `X.Y` or `X.Y.Z`, compared numerically.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct KernelVersion(pub [u32; 3]);

impl KernelVersion {
    /// The version a release string starts with: `6.12.117+deb12-cloud-amd64` → 6.12.117,
    /// `7.2.0-rc3` → 7.2.0. None when it does not start with `X.Y`.
    pub fn of_release(release: &str) -> Option<KernelVersion> {
        let mut v = [0u32; 3];
        let mut parts = 0;
        for (i, part) in release.split('.').take(3).enumerate() {
            let digits: String = part.chars().take_while(char::is_ascii_digit).collect();
            v[i] = digits.parse().ok()?;
            parts = i + 1;
            if digits.len() != part.len() {
                break; // a suffix ends the version
            }
        }
        (parts >= 2).then_some(KernelVersion(v))
    }
}

impl std::fmt::Display for KernelVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [a, b, c] = self.0;
        match c {
            0 => write!(f, "{a}.{b}"),
            _ => write!(f, "{a}.{b}.{c}"),
        }
    }
}

impl<'de> Deserialize<'de> for KernelVersion {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<KernelVersion, D::Error> {
        let s = match serde_yaml::Value::deserialize(d)? {
            serde_yaml::Value::String(s) => s,
            // A bare 6.10 is the number 6.1: only a quoted version is unambiguous.
            serde_yaml::Value::Number(n) => {
                return Err(serde::de::Error::custom(format!(
                    "kernel_version {n} must be quoted (\"{n}\"): YAML reads 6.10 as the number 6.1"
                )))
            }
            _ => {
                return Err(serde::de::Error::custom(
                    "kernel_version must be a quoted version like \"6.15\"",
                ))
            }
        };
        let ok = s.split('.').count() <= 3
            && s.split('.')
                .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()));
        match KernelVersion::of_release(&s) {
            Some(v) if ok => Ok(v),
            _ => Err(serde::de::Error::custom(format!(
                "kernel_version {s:?} is not a version like \"6.15\" or \"6.12.40\""
            ))),
        }
    }
}

impl<'de> Deserialize<'de> for Requires {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Requires, D::Error> {
        use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer};
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Map {
            #[serde(default)]
            server: Vec<Capability>,
            #[serde(default)]
            kernel: Vec<String>,
            #[serde(default)]
            kernel_version: Option<KernelVersion>,
        }
        // A visitor, not an untagged enum: the inner error keeps its message and position.
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Requires;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list of server capabilities, or {server: [...], kernel: [...], kernel_version: \"X.Y\"}")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                a: A,
            ) -> std::result::Result<Requires, A::Error> {
                let server = Vec::deserialize(SeqAccessDeserializer::new(a))?;
                Ok(Requires {
                    server,
                    ..Requires::default()
                })
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                a: A,
            ) -> std::result::Result<Requires, A::Error> {
                let m = Map::deserialize(MapAccessDeserializer::new(a))?;
                Ok(Requires {
                    server: m.server,
                    kernel: m.kernel.iter().map(|k| k.to_ascii_uppercase()).collect(),
                    kernel_version: m.kernel_version,
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// Limits a scenario's VM shares with `vm-run`'s flags.
pub const MAX_CPUS: u32 = crate::vm::qemu::MAX_CPUS;

pub use crate::server::device::{
    DeviceOverride, DeviceParams, MAX_OVERRIDE_DEPTH, MAX_OVERRIDE_QUEUES,
};

impl Scenario {
    /// Parses and validates a scenario file's text.
    pub fn parse(text: &str, path: &Path) -> Result<Scenario> {
        let mut s: Scenario = input::parse(text, path)?;
        s.source = path.to_path_buf();
        Checker::new(&s, text, path).run()?;
        Ok(s)
    }

    pub fn load(path: &Path) -> Result<Scenario> {
        Scenario::parse(&input::read(path)?, path)
    }

    pub fn device_params(&self, s: &Start) -> DeviceParams {
        self.device.params(s)
    }

    /// What a server must support to run this scenario: `requires` plus what the steps imply
    /// (a fault, a trace, data verification, a SIGUSR1 state dump), each with why.
    pub fn needs(&self) -> Vec<(Capability, String)> {
        let mut v: Vec<(Capability, String)> = self
            .requires
            .server
            .iter()
            .map(|c| (*c, "requires".to_string()))
            .collect();
        for (i, step) in self.steps.iter().enumerate() {
            let at = format!("steps[{i}] {}", step.kind.name());
            let io_needs = |io: &Io| {
                io.verify
                    .then(|| (Capability::StoresData, format!("{at} verifies data")))
            };
            match &step.kind {
                Kind::Start(s) => {
                    v.extend(
                        s.fault
                            .as_ref()
                            .map(|_| (Capability::FaultInjection, format!("{at}.fault"))),
                    );
                    v.extend(s.trace.then(|| (Capability::Trace, format!("{at}.trace"))));
                    v.extend(
                        s.recovery
                            .map(|_| (Capability::Recovery, format!("{at}.recovery"))),
                    );
                }
                Kind::Recover(_) => v.push((Capability::Recovery, at.clone())),
                Kind::Quiesce(_) => v.push((Capability::Quiesce, at.clone())),
                Kind::Io(io) => v.extend(io_needs(io)),
                Kind::ExpectTimeout(ExpectTimeout { io: Some(io), .. }) => v.extend(io_needs(io)),
                Kind::Signal(sg) if sg.signal == Sig::Usr1 => v.push((
                    Capability::StateDump,
                    format!("{at} USR1 asks for a state dump"),
                )),
                // Every server can do these (no `_` arm: a new kind must say what it needs).
                Kind::Signal(_)
                | Kind::ExpectTimeout(ExpectTimeout { io: None, .. })
                | Kind::Stop(_)
                | Kind::Shell(_)
                | Kind::WaitUntil(_)
                | Kind::Wait(_)
                | Kind::Reset(_)
                | Kind::Check(_) => {}
            }
        }
        v
    }

    /// The recovery modes its start steps ask for.
    pub fn recovery_modes(&self) -> Vec<RecoveryMode> {
        let mut v: Vec<RecoveryMode> = self
            .steps
            .iter()
            .filter_map(|s| match &s.kind {
                Kind::Start(st) => st.recovery,
                _ => None,
            })
            .collect();
        v.dedup();
        v
    }

    /// The ublk features the kernel must offer: `requires.kernel` and what the steps imply
    /// (a recovery mode's flags, QUIESCE for a quiesce step).
    pub fn kernel_needs(&self) -> Vec<String> {
        let mut v = self.requires.kernel.clone();
        for m in self.recovery_modes() {
            v.extend(m.kernel_features().iter().map(|f| f.to_string()));
        }
        if self
            .steps
            .iter()
            .any(|s| matches!(s.kind, Kind::Quiesce(_)))
        {
            v.push("QUIESCE".into());
        }
        let mut seen = std::collections::HashSet::new();
        v.retain(|f| seen.insert(f.clone()));
        v
    }

    pub fn memory_mib(&self) -> u64 {
        let m = self.vm.memory.as_deref().map(crate::util::parse_mib);
        m.map_or(1024, |r| r.expect("validated"))
    }

    pub fn cpus(&self) -> u32 {
        self.vm.cpus.unwrap_or(2)
    }

    /// How to name this scenario on a command line: its name if `scenarios/<name>.yaml` is
    /// where it came from, else its path.
    pub fn cli_name(&self) -> String {
        let shipped = crate::util::root()
            .join("scenarios")
            .join(format!("{}.yaml", self.name));
        let same = std::fs::canonicalize(&self.source).ok() == std::fs::canonicalize(&shipped).ok();
        if same {
            self.name.clone()
        } else {
            self.source.display().to_string()
        }
    }
}

/// The checks that need the whole file: limits shared with the CLIs, cross-references.
struct Checker<'a> {
    sc: &'a Scenario,
    text: &'a str,
    path: &'a Path,
    /// Running devices by name, with their size.
    devices: Vec<(&'a str, u64)>,
    /// Devices started with recovery (by name).
    recoverable: Vec<&'a str>,
    /// Recoverable devices whose server ended (killed or quiesced), with their size.
    orphans: Vec<(&'a str, u64)>,
    jobs: Vec<&'a str>,
}

/// Most tags (groups) one scenario has.
pub const MAX_TAGS: usize = 8;

fn tag_ok(t: &str) -> bool {
    (1..=32).contains(&t.len())
        && t.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

impl<'a> Checker<'a> {
    fn new(sc: &'a Scenario, text: &'a str, path: &'a Path) -> Checker<'a> {
        Checker {
            sc,
            text,
            path,
            devices: Vec::new(),
            recoverable: Vec::new(),
            orphans: Vec::new(),
            jobs: Vec::new(),
        }
    }

    fn at_key(&self, keys: &[&str], msg: &str) -> String {
        located(self.path, key_position(self.text, keys), msg)
    }

    fn at_step(&self, i: usize, msg: &str) -> String {
        let pos =
            step_position(self.text, i).unwrap_or_else(|| key_position(self.text, &["steps"]));
        located(self.path, pos, &format!("steps[{i}]: {msg}"))
    }

    fn run(mut self) -> Result<()> {
        self.header()?;
        for (i, step) in self.sc.steps.iter().enumerate() {
            self.step(step).map_err(|m| self.at_step(i, &m))?;
        }
        Ok(())
    }

    fn header(&self) -> Result<()> {
        let sc = self.sc;
        let name_ok = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
        if sc.name.is_empty() || sc.name.len() > 64 || !sc.name.chars().all(name_ok) {
            let m = format!(
                "name {:?} must be 1..=64 letters, digits, '-' or '_'",
                sc.name
            );
            return Err(self.at_key(&["name"], &m));
        }
        if let Some(t) = sc.tags.iter().find(|t| !tag_ok(t)) {
            let m = format!("tag {t:?} must be 1..=32 lowercase letters, digits or '-'");
            return Err(self.at_key(&["tags"], &m));
        }
        if sc.tags.len() > MAX_TAGS {
            let m = format!("at most {MAX_TAGS} tags; this one has {}", sc.tags.len());
            return Err(self.at_key(&["tags"], &m));
        }
        if sc.steps.is_empty() || sc.steps.len() > MAX_STEPS {
            let m = format!(
                "a scenario needs 1..={MAX_STEPS} steps; this one has {}",
                sc.steps.len()
            );
            return Err(self.at_key(&["steps"], &m));
        }
        let known = |k: &String| ublk::sys::FEATURE_NAMES.iter().any(|(_, n)| n == k);
        if let Some(k) = sc.requires.kernel.iter().find(|k| !known(k)) {
            let names: Vec<&str> = ublk::sys::FEATURE_NAMES.iter().map(|(_, n)| *n).collect();
            let m = format!(
                "requires.kernel: unknown ublk feature {k:?}; known: {}",
                names.join(" ")
            );
            return Err(self.at_key(&["requires", "kernel"], &m));
        }
        if let Some(c) = sc.vm.cpus.filter(|c| !(1..=MAX_CPUS).contains(c)) {
            let m = format!("vm.cpus {c} is out of range (1..={MAX_CPUS})");
            return Err(self.at_key(&["vm", "cpus"], &m));
        }
        if let Some(Err(e)) = sc.vm.memory.as_deref().map(crate::util::parse_mib) {
            return Err(self.at_key(&["vm", "memory"], &format!("vm.memory: {e}")));
        }
        if let Err(e) = crate::image::tools::check_names(&sc.vm.tools) {
            return Err(self.at_key(&["vm", "tools"], &format!("vm.tools: {e}")));
        }
        server_options(sc.device_params(&Start::named("")), None)
            .map_err(|(key, e)| self.at_key(&["device", key], &format!("device.{key}: {e}")))
    }

    fn step(&mut self, step: &'a Step) -> std::result::Result<(), String> {
        if step.timeout.0 > self.sc.timeout.0 {
            return Err(format!(
                "timeout {} s exceeds the scenario's timeout {} s",
                step.timeout.0, self.sc.timeout.0
            ));
        }
        match &step.kind {
            Kind::Start(s) => self.start(s)?,
            Kind::Io(io) => {
                self.io(io)?;
                self.jobs.extend(io.background.as_deref());
            }
            Kind::Shell(sh) => self.jobs.extend(sh.background.as_deref()),
            Kind::Stop(st) => {
                if self.device(&st.device).is_none() {
                    return Err(format!(
                        "stop: device `{}` is not started by an earlier step",
                        st.device
                    ));
                }
                self.devices.retain(|(d, _)| *d != st.device);
            }
            Kind::Signal(sg) => self.signal(sg)?,
            Kind::Quiesce(q) => self.quiesce(q)?,
            Kind::Recover(r) => self.recover(r)?,
            Kind::ExpectTimeout(e) => match (&e.shell, &e.io) {
                (Some(_), None) => {}
                (None, Some(io)) => self.io(io)?,
                _ => return Err("expect_timeout needs exactly one of `shell` or `io`".into()),
            },
            Kind::Wait(w) => {
                if !self.jobs.contains(&w.job.as_str()) {
                    return Err(format!("wait: no earlier background job named `{}`", w.job));
                }
            }
            Kind::WaitUntil(w) => {
                if !EVERY_MS.contains(&w.every_ms) {
                    return Err(format!(
                        "wait_until: every_ms {} is outside {}..={}",
                        w.every_ms,
                        EVERY_MS.start(),
                        EVERY_MS.end()
                    ));
                }
            }
            Kind::Reset(_) => {
                self.devices.clear();
                self.orphans.clear();
            }
            Kind::Check(_) => {}
        }
        Ok(())
    }

    fn start(&mut self, s: &'a Start) -> std::result::Result<(), String> {
        if self.device(&s.name).is_some() {
            return Err(format!("start: device `{}` is already started", s.name));
        }
        let p = self.sc.device_params(s);
        server_options(p, s.fault.as_ref()).map_err(|(key, e)| format!("start: {key}: {e}"))?;
        self.devices.push((&s.name, p.size_bytes));
        self.recoverable.extend(s.recovery.map(|_| s.name.as_str()));
        Ok(())
    }

    fn quiesce(&mut self, q: &'a Quiesce) -> std::result::Result<(), String> {
        if !self.recoverable.contains(&q.device.as_str()) {
            return Err(format!(
                "quiesce: device `{}` is not started (with `recovery:`) by an earlier step",
                q.device
            ));
        }
        self.orphan(&q.device, "quiesce")
    }

    fn recover(&mut self, r: &'a Recover) -> std::result::Result<(), String> {
        let Some(at) = self.orphans.iter().position(|(d, _)| *d == r.device) else {
            return Err(format!(
                "recover: device `{}` has no dead server to replace (a KILL signal or a quiesce step on a device started with `recovery:` comes first)",
                r.device
            ));
        };
        self.devices.push(self.orphans.remove(at));
        Ok(())
    }

    fn signal(&mut self, sg: &'a Signal) -> std::result::Result<(), String> {
        if self.device(&sg.device).is_none() {
            return Err(format!(
                "signal: device `{}` is not started by an earlier step",
                sg.device
            ));
        }
        if let Some([min, max]) = sg.delay_ms {
            if min > max || max > 60_000 {
                return Err(format!(
                    "signal: delay_ms [{min}, {max}] must be [min, max] with min <= max <= 60000"
                ));
            }
        }
        let recoverable = self.recoverable.contains(&sg.device.as_str());
        match sg.signal {
            // A recoverable device outlives its killed server.
            Sig::Kill if recoverable => self.orphan(&sg.device, "signal")?,
            s if s.ends_daemon() => self.devices.retain(|(d, _)| *d != sg.device),
            _ => {}
        }
        Ok(())
    }

    /// The device's server is gone; the device waits for a `recover` step.
    fn orphan(&mut self, name: &str, what: &str) -> std::result::Result<(), String> {
        let Some(at) = self.devices.iter().position(|(d, _)| *d == name) else {
            return Err(format!("{what}: device `{name}` has no running server"));
        };
        let d = self.devices.remove(at);
        self.orphans.push(d);
        Ok(())
    }

    fn device(&self, name: &str) -> Option<u64> {
        self.devices
            .iter()
            .find(|(d, _)| *d == name)
            .map(|(_, s)| *s)
    }

    /// The same limits blkio's own flags have.
    fn io(&self, io: &Io) -> std::result::Result<(), String> {
        let Some(span) = self.device(&io.device) else {
            return Err(format!(
                "io: device `{}` is not started by an earlier step",
                io.device
            ));
        };
        if !io.write && !io.verify {
            return Err("io: nothing to do (write and verify are both false)".into());
        }
        if let Some(qd) = io
            .qd
            .filter(|q| !(1..=blkio::engine::MAX_QD).contains(&(*q as usize)))
        {
            return Err(format!(
                "io: qd {qd} is out of range (1..={})",
                blkio::engine::MAX_QD
            ));
        }
        if !io.write {
            return Ok(());
        }
        if io.bytes.is_none() && io.count.is_none() {
            return Err("io: a write needs `bytes` or `count`".into());
        }
        let spec = blkio::plan::PlanSpec {
            seed: 0,
            pattern: io.pattern,
            bytes: io.bytes.map_or(0, |b| b.0),
            count: io.count.unwrap_or(0),
            span,
            min: io.min.map_or(blkio::plan::DEFAULT_MIN, |m| m.0),
            max: io.max.map_or(blkio::plan::DEFAULT_MAX, |m| m.0),
            overlap: io.overlap,
        };
        spec.validate().map_err(|e| format!("io: {e}"))
    }
}

/// ublk-mem's own validation of a device, so `scenario check` rejects what it would; the
/// error names the scenario key (`block_size`), not ublk-mem's flag (`--block-size`).
fn server_options(
    p: DeviceParams,
    fault: Option<&FaultSpec>,
) -> std::result::Result<(), (&'static str, String)> {
    let r = ublk::server::Options {
        size: p.size_bytes,
        queues: p.queues,
        depth: p.depth,
        block_size: p.block_size,
        max_io_bytes: ublk::server::DEFAULT_MAX_IO_BYTES,
        id: None,
        trace: None,
        state_file: None,
        json: false,
        fault: fault.map(FaultSpec::parsed),
        copy_mode: Default::default(),
        io_mode: Default::default(),
        sched: Default::default(),
        recovery: None,
    }
    .validate();
    r.map_err(|e| {
        let keys = [
            ("--block-size", "block_size"),
            ("--size", "size"),
            ("--queues", "queues"),
            ("--depth", "depth"),
            ("--fault", "fault"),
        ];
        let (flag, key) = keys
            .iter()
            .find(|(f, _)| e.contains(f))
            .copied()
            .unwrap_or(("", "size"));
        let e = if flag.is_empty() {
            e
        } else {
            e.replace(&format!("{flag} "), "")
        };
        (key, e)
    })
}

/// (line, column) of the `-` that starts step `index` under `steps:` (1-based).
fn step_position(text: &str, index: usize) -> Option<(usize, usize)> {
    let mut lines = text
        .lines()
        .enumerate()
        .skip_while(|(_, l)| !l.trim_start().starts_with("steps:"));
    lines.next()?;
    let mut indent = None;
    let mut n = 0;
    for (ln, l) in lines {
        let trimmed = l.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let ind = l.len() - trimmed.len();
        if !trimmed.starts_with('-') {
            if indent.is_some_and(|i| ind <= i) && ind == 0 {
                return None; // left the steps list
            }
            continue;
        }
        let i = *indent.get_or_insert(ind);
        if ind == i {
            if n == index {
                return Some((ln + 1, ind + 1));
            }
            n += 1;
        }
    }
    None
}

#[cfg(test)]
#[path = "model_tests.rs"]
mod tests;
