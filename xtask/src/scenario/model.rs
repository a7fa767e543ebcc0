//! The scenario file format (documented in scenarios/README.md). Parsing is strict: unknown
//! fields, wrong types, bad sizes, unknown step kinds and missing timeouts are errors that
//! name file:line:column; cross-references (devices, background jobs) are checked after
//! parsing and name the step's line.

use std::path::Path;

use serde::{Deserialize, Deserializer};

use crate::recipe::yaml_error;
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
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmSpec {
    pub cpus: Option<u32>,
    pub memory: Option<String>,
    /// debian | host | PATH (the command line's --kernel wins).
    pub kernel: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DeviceSpec {
    pub size: Option<Size>,
    pub queues: Option<u16>,
    pub depth: Option<u16>,
    pub block_size: Option<u32>,
}

/// A step: exactly one kind, a timeout in seconds, an optional label.
#[derive(Debug, Clone)]
pub struct Step {
    pub label: Option<String>,
    pub timeout: Secs,
    pub kind: Kind,
}

#[derive(Debug, Clone)]
pub enum Kind {
    Start(Start),
    Io(Io),
    Shell(Shell),
    Signal(Signal),
    ExpectTimeout(ExpectTimeout),
    Wait(Wait),
    Reset(Reset),
    Check(Check),
}

impl Kind {
    pub fn name(&self) -> &'static str {
        match self {
            Kind::Start(_) => "start",
            Kind::Io(_) => "io",
            Kind::Shell(_) => "shell",
            Kind::Signal(_) => "signal",
            Kind::ExpectTimeout(_) => "expect_timeout",
            Kind::Wait(_) => "wait",
            Kind::Reset(_) => "reset",
            Kind::Check(_) => "check",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct StepRaw {
    /// Required: every step is bounded.
    timeout: Secs,
    #[serde(default)]
    label: Option<String>,
    start: Option<Start>,
    io: Option<Io>,
    shell: Option<Shell>,
    signal: Option<Signal>,
    expect_timeout: Option<ExpectTimeout>,
    wait: Option<Wait>,
    reset: Option<Reset>,
    check: Option<Check>,
}

impl<'de> Deserialize<'de> for Step {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Step, D::Error> {
        let r = StepRaw::deserialize(d)?;
        let mut kinds: Vec<Kind> = Vec::new();
        kinds.extend(r.start.map(Kind::Start));
        kinds.extend(r.io.map(Kind::Io));
        kinds.extend(r.shell.map(Kind::Shell));
        kinds.extend(r.signal.map(Kind::Signal));
        kinds.extend(r.expect_timeout.map(Kind::ExpectTimeout));
        kinds.extend(r.wait.map(Kind::Wait));
        kinds.extend(r.reset.map(Kind::Reset));
        kinds.extend(r.check.map(Kind::Check));
        if kinds.len() != 1 {
            let found: Vec<&str> = kinds.iter().map(|k| k.name()).collect();
            return Err(serde::de::Error::custom(format!(
                "a step needs exactly one kind (start, io, shell, signal, expect_timeout, wait, reset, check); found {}",
                if found.is_empty() { "none".to_string() } else { found.join(" and ") }
            )));
        }
        Ok(Step {
            label: r.label,
            timeout: r.timeout,
            kind: kinds.pop().unwrap(),
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pattern {
    Sequential,
    Scattered,
    Random,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Sig {
    Term,
    Int,
    Kill,
    Stop,
    Cont,
    Usr1,
}

impl Sig {
    pub fn number(self) -> i32 {
        match self {
            Sig::Term => libc::SIGTERM,
            Sig::Int => libc::SIGINT,
            Sig::Kill => libc::SIGKILL,
            Sig::Stop => libc::SIGSTOP,
            Sig::Cont => libc::SIGCONT,
            Sig::Usr1 => libc::SIGUSR1,
        }
    }
    /// Whether the daemon is expected to exit after this signal.
    pub fn ends_daemon(self) -> bool {
        matches!(self, Sig::Term | Sig::Int | Sig::Kill)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signal {
    #[serde(default = "default_device")]
    pub device: String,
    pub signal: Sig,
    /// For TERM/INT: the daemon's exit status (default 0). KILL always ends it by signal.
    pub expect_exit: Option<i32>,
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
        let v = u64::deserialize(d)?;
        if v == 0 || v > MAX_TIMEOUT_S {
            return Err(serde::de::Error::custom(format!(
                "timeout {v} s is out of range (1..={MAX_TIMEOUT_S} seconds)"
            )));
        }
        Ok(Secs(v))
    }
}

/// A byte size written like "64MiB", "4KiB", "1G" or a plain number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl Size {
    pub fn arg(self) -> String {
        self.0.to_string()
    }
}

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
        let ok = s.strip_prefix("stall-tag=").and_then(|rest| {
            let p: Vec<&str> = rest.split(':').collect();
            let [q, t, after] = p[..] else { return None };
            let after = after.strip_prefix("after=")?;
            (q.parse::<u16>().is_ok() && t.parse::<u16>().is_ok() && after.parse::<u64>().is_ok())
                .then_some(())
        });
        match ok {
            Some(()) => Ok(FaultSpec(s)),
            None => Err(serde::de::Error::custom(format!(
                "bad fault {s:?}: expected stall-tag=Q:T:after=N"
            ))),
        }
    }
}

impl Scenario {
    /// Parses and validates a scenario file's text.
    pub fn parse(text: &str, path: &Path) -> Result<Scenario> {
        let s: Scenario = serde_yaml::from_str(text).map_err(|e| yaml_error(path, &e))?;
        s.validate(text, path)?;
        Ok(s)
    }

    pub fn load(path: &Path) -> Result<Scenario> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        Scenario::parse(&text, path)
    }

    fn validate(&self, text: &str, path: &Path) -> Result<()> {
        let at = |i: usize, msg: String| {
            let (line, col) = step_position(text, i).unwrap_or((1, 1));
            Err(format!(
                "{}:{line}:{col}: steps[{i}]: {msg}",
                path.display()
            ))
        };
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(format!(
                "{}: name {:?} must be non-empty letters, digits, '-' or '_'",
                path.display(),
                self.name
            ));
        }
        if self.steps.is_empty() || self.steps.len() > MAX_STEPS {
            return Err(format!(
                "{}: a scenario needs 1..={MAX_STEPS} steps",
                path.display()
            ));
        }
        let mut devices: Vec<&str> = Vec::new();
        let mut jobs: Vec<&str> = Vec::new();
        for (i, step) in self.steps.iter().enumerate() {
            if step.timeout.0 > self.timeout.0 {
                return at(
                    i,
                    format!(
                        "timeout {} s exceeds the scenario's timeout {} s",
                        step.timeout.0, self.timeout.0
                    ),
                );
            }
            let io_checks = |io: &Io, devices: &Vec<&str>| -> std::result::Result<(), String> {
                if !devices.contains(&io.device.as_str()) {
                    return Err(format!(
                        "io: device `{}` is not started by an earlier step",
                        io.device
                    ));
                }
                if io.write && io.bytes.is_none() && io.count.is_none() {
                    return Err("io: a write needs `bytes` or `count`".into());
                }
                if !io.write && !io.verify {
                    return Err("io: nothing to do (write and verify are both false)".into());
                }
                Ok(())
            };
            match &step.kind {
                Kind::Start(s) => {
                    if devices.contains(&s.name.as_str()) {
                        return at(i, format!("start: device `{}` is already started", s.name));
                    }
                    devices.push(&s.name);
                }
                Kind::Io(io) => {
                    io_checks(io, &devices).or_else(|m| at(i, m))?;
                    if let Some(j) = &io.background {
                        jobs.push(j);
                    }
                }
                Kind::Shell(sh) => {
                    if let Some(j) = &sh.background {
                        jobs.push(j);
                    }
                }
                Kind::Signal(sg) => {
                    if !devices.contains(&sg.device.as_str()) {
                        return at(
                            i,
                            format!(
                                "signal: device `{}` is not started by an earlier step",
                                sg.device
                            ),
                        );
                    }
                    if sg.signal.ends_daemon() {
                        devices.retain(|d| *d != sg.device);
                    }
                }
                Kind::ExpectTimeout(e) => match (&e.shell, &e.io) {
                    (Some(_), None) => {}
                    (None, Some(io)) => io_checks(io, &devices).or_else(|m| at(i, m))?,
                    _ => {
                        return at(
                            i,
                            "expect_timeout needs exactly one of `shell` or `io`".into(),
                        )
                    }
                },
                Kind::Wait(w) => {
                    if !jobs.contains(&w.job.as_str()) {
                        return at(
                            i,
                            format!("wait: no earlier background job named `{}`", w.job),
                        );
                    }
                }
                Kind::Reset(_) => devices.clear(),
                Kind::Check(_) => {}
            }
        }
        Ok(())
    }
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
