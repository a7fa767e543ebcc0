//! blkio's command line as types. The binary parses these; xtask builds its guest command
//! lines from them (`Cmd::to_argv`), so the two cannot disagree: a round-trip test parses
//! what `to_argv` writes. The defaults live here, once.

use clap::{Args, Parser, Subcommand};
use ublk::util::parse_size;

use crate::engine;
use crate::plan::{self, Pattern};

/// Requests in flight unless `--qd` says otherwise.
pub const DEFAULT_QD: usize = 32;
/// A command's hard limit unless `--timeout` says otherwise.
pub const DEFAULT_TIMEOUT_S: u64 = 300;

#[derive(Parser, Debug, Clone, PartialEq)]
#[command(
    name = "blkio",
    version,
    about = "Verifiable block I/O for ublk tests (O_DIRECT, io_uring)"
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Args, Clone, Debug, PartialEq)]
pub struct Common {
    /// Block device (or file)
    #[arg(long)]
    pub dev: String,
    /// Requests in flight
    #[arg(long, default_value_t = DEFAULT_QD, value_parser = parse_qd)]
    pub qd: usize,
    /// Hard limit for the whole command; in-flight requests at the limit are reported as a hang
    #[arg(long, default_value_t = DEFAULT_TIMEOUT_S)]
    pub timeout: u64,
}

#[derive(Args, Clone, Debug, PartialEq)]
pub struct PlanArgs {
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[arg(long, value_enum, default_value_t = Pattern::Scattered)]
    pub pattern: Pattern,
    /// Bytes to write (0: no byte limit)
    #[arg(long, value_parser = parse_size, default_value = "0")]
    pub bytes: u64,
    /// Number of writes (0: no count limit)
    #[arg(long, default_value_t = 0)]
    pub count: u64,
    /// Device bytes the writes spread over [default: the device size]
    #[arg(long, value_parser = parse_size)]
    pub span: Option<u64>,
    #[arg(long, default_value_t = plan::DEFAULT_MIN, value_parser = parse_size)]
    pub min: u64,
    #[arg(long, default_value_t = plan::DEFAULT_MAX, value_parser = parse_size)]
    pub max: u64,
    /// Scattered: also re-write ranges overlapping earlier writes
    #[arg(long)]
    pub overlap: bool,
}

fn parse_qd(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=engine::MAX_QD).contains(&n) => Ok(n),
        _ => Err(format!(
            "{s:?} is not a queue depth in 1..={}",
            engine::MAX_QD
        )),
    }
}

#[derive(Subcommand, Debug, Clone, PartialEq)]
pub enum Cmd {
    /// Write the seeded plan and save the reference model (for `verify`)
    Write {
        #[command(flatten)]
        c: Common,
        #[command(flatten)]
        p: PlanArgs,
        /// Where to save the reference model [default: /tmp/blkio-DEVNAME.model]
        #[arg(long)]
        model: Option<String>,
        /// Move the submitting thread across all CPUs so every ublk queue gets requests
        #[arg(long)]
        spread: bool,
        /// A failed write (e.g. EIO while a crashed server is being replaced) does not end the
        /// run: the model lets its blocks hold old or new content; acknowledged writes stay exact
        #[arg(long)]
        allow_errors: bool,
    },
    /// Read back and check against the saved model; with --full also every unwritten block
    /// (zeroes) and the md5 of the whole span against the model
    Verify {
        #[command(flatten)]
        c: Common,
        #[arg(long)]
        model: Option<String>,
        #[arg(long)]
        full: bool,
        /// Only check this range (default: the model's whole span)
        #[arg(long, value_parser = parse_size)]
        offset: Option<u64>,
        #[arg(long, value_parser = parse_size, requires = "offset")]
        len: Option<u64>,
    },
    /// Check that a byte range reads back as zeroes (after discard / write-zeroes)
    Zeroes {
        #[command(flatten)]
        c: Common,
        #[arg(long, value_parser = parse_size)]
        offset: u64,
        #[arg(long, value_parser = parse_size)]
        len: u64,
    },
    /// Discard a byte range (BLKDISCARD), or zero it (BLKZEROOUT: write-zeroes) with --zeroout
    Discard {
        #[arg(long)]
        dev: String,
        #[arg(long, value_parser = parse_size)]
        offset: u64,
        #[arg(long, value_parser = parse_size)]
        len: u64,
        #[arg(long)]
        zeroout: bool,
    },
    /// Random 4 KiB (or --bs) reads or writes for --seconds; prints IOPS
    Bench {
        #[command(flatten)]
        c: Common,
        #[arg(long, value_enum, default_value_t = Rw::Randread)]
        rw: Rw,
        #[arg(long, default_value = "4KiB", value_parser = parse_size)]
        bs: u64,
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Rw {
    Randread,
    Randwrite,
}

impl Common {
    /// `dev` with the default depth and limit.
    pub fn new(dev: &str) -> Common {
        Common {
            dev: dev.to_string(),
            qd: DEFAULT_QD,
            timeout: DEFAULT_TIMEOUT_S,
        }
    }

    /// When a command given these options must have ended.
    pub fn deadline(&self) -> std::time::Instant {
        std::time::Instant::now() + std::time::Duration::from_secs(self.timeout)
    }

    fn push(&self, v: &mut Vec<String>) {
        v.extend(["--dev".into(), self.dev.clone()]);
        v.extend(["--qd".into(), self.qd.to_string()]);
        v.extend(["--timeout".into(), self.timeout.to_string()]);
    }
}

impl Default for PlanArgs {
    /// The defaults the command line has.
    fn default() -> PlanArgs {
        PlanArgs {
            seed: 1,
            pattern: Pattern::Scattered,
            bytes: 0,
            count: 0,
            span: None,
            min: plan::DEFAULT_MIN,
            max: plan::DEFAULT_MAX,
            overlap: false,
        }
    }
}

impl PlanArgs {
    fn push(&self, v: &mut Vec<String>) {
        v.extend(["--seed".into(), self.seed.to_string()]);
        v.extend(["--pattern".into(), self.pattern.name().into()]);
        v.extend(["--bytes".into(), self.bytes.to_string()]);
        v.extend(["--count".into(), self.count.to_string()]);
        if let Some(s) = self.span {
            v.extend(["--span".into(), s.to_string()]);
        }
        v.extend(["--min".into(), self.min.to_string()]);
        v.extend(["--max".into(), self.max.to_string()]);
        flag(v, "--overlap", self.overlap);
    }
}

fn flag(v: &mut Vec<String>, name: &str, on: bool) {
    if on {
        v.push(name.to_string());
    }
}

fn opt(v: &mut Vec<String>, name: &str, value: &Option<impl ToString>) {
    if let Some(x) = value {
        v.extend([name.to_string(), x.to_string()]);
    }
}

impl Rw {
    pub fn name(self) -> &'static str {
        match self {
            Rw::Randread => "randread",
            Rw::Randwrite => "randwrite",
        }
    }
}

impl Cmd {
    /// The argv that runs this command: `blkio SUBCOMMAND --flag value ...`, every value
    /// explicit (a default changed later cannot change what a caller asked for).
    pub fn to_argv(&self) -> Vec<String> {
        let mut v = vec!["blkio".to_string()];
        match self {
            Cmd::Write {
                c,
                p,
                model,
                spread,
                allow_errors,
            } => {
                v.push("write".into());
                c.push(&mut v);
                p.push(&mut v);
                opt(&mut v, "--model", model);
                flag(&mut v, "--spread", *spread);
                flag(&mut v, "--allow-errors", *allow_errors);
            }
            Cmd::Verify {
                c,
                model,
                full,
                offset,
                len,
            } => {
                v.push("verify".into());
                c.push(&mut v);
                opt(&mut v, "--model", model);
                flag(&mut v, "--full", *full);
                opt(&mut v, "--offset", offset);
                opt(&mut v, "--len", len);
            }
            Cmd::Zeroes { c, offset, len } => {
                v.push("zeroes".into());
                c.push(&mut v);
                values(&mut v, &[("--offset", offset), ("--len", len)]);
            }
            Cmd::Discard {
                dev,
                offset,
                len,
                zeroout,
            } => {
                v.extend(["discard".into(), "--dev".into(), dev.clone()]);
                values(&mut v, &[("--offset", offset), ("--len", len)]);
                flag(&mut v, "--zeroout", *zeroout);
            }
            Cmd::Bench {
                c,
                rw,
                bs,
                seconds,
                seed,
            } => {
                v.push("bench".into());
                c.push(&mut v);
                v.extend(["--rw".into(), rw.name().into()]);
                values(
                    &mut v,
                    &[("--bs", bs), ("--seconds", seconds), ("--seed", seed)],
                );
            }
        }
        v
    }
}

/// `--name value` for each pair.
fn values(v: &mut Vec<String>, pairs: &[(&str, &u64)]) {
    for (name, value) in pairs {
        v.extend([name.to_string(), value.to_string()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(cmd: Cmd) {
        let argv = cmd.to_argv();
        let parsed = Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
        assert_eq!(parsed.cmd, cmd, "{argv:?}");
    }

    #[test]
    fn what_to_argv_writes_parses_back_to_the_same_command() {
        let c = Common::new("/dev/ublkb0");
        round_trip(Cmd::Write {
            c: c.clone(),
            p: PlanArgs::default(),
            model: None,
            spread: false,
            allow_errors: false,
        });
        round_trip(Cmd::Write {
            c: Common {
                qd: 7,
                timeout: 9,
                ..c.clone()
            },
            p: PlanArgs {
                seed: 42,
                pattern: Pattern::Random,
                bytes: 8 << 20,
                count: 100,
                span: Some(1 << 30),
                min: 4096,
                max: 1 << 20,
                overlap: true,
            },
            model: Some("/tmp/m".into()),
            spread: true,
            allow_errors: true,
        });
        for pattern in [Pattern::Sequential, Pattern::Scattered, Pattern::Random] {
            let p = PlanArgs {
                pattern,
                ..PlanArgs::default()
            };
            round_trip(Cmd::Write {
                c: c.clone(),
                p,
                model: None,
                spread: false,
                allow_errors: false,
            });
        }
        round_trip(Cmd::Verify {
            c: c.clone(),
            model: None,
            full: true,
            offset: Some(4096),
            len: Some(8192),
        });
        round_trip(Cmd::Zeroes {
            c: c.clone(),
            offset: 0,
            len: 4096,
        });
        round_trip(Cmd::Discard {
            dev: "/dev/x".into(),
            offset: 0,
            len: 4096,
            zeroout: true,
        });
        round_trip(Cmd::Bench {
            c,
            rw: Rw::Randwrite,
            bs: 4096,
            seconds: 2,
            seed: 3,
        });
    }

    #[test]
    fn the_defaults_are_the_command_lines() {
        let parsed = Cli::try_parse_from(["blkio", "write", "--dev", "/d"]).unwrap();
        let want = Cmd::Write {
            c: Common::new("/d"),
            p: PlanArgs::default(),
            model: None,
            spread: false,
            allow_errors: false,
        };
        assert_eq!(parsed.cmd, want);
    }
}
