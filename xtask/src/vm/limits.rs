//! One limits policy for every command that boots VMs. Every limit is written for KVM — a
//! scenario's and each step's `timeout`, the selftest suite's `settings` limit, vm-run's and
//! vm-perf's defaults — and multiplied by one scale: `TCG_SCALE` under TCG, 1 under KVM, or
//! `--timeout-scale F` on any command. Seconds given on the command line (`vm-run --timeout`,
//! `vm-selftests --timeout`, `vm-perf --cell-limit`) are taken as given. Every command prints
//! its scale in its header and records it in its reports; reproduce lines carry it.

use super::qemu::Accel;

/// Software emulation: how much longer every limit is than under KVM (measured: the whole
/// suite passes under TCG on 2 cores at 1x; 2x leaves room for a loaded CI runner).
pub const TCG_SCALE: f64 = 2.0;

/// The scale every limit of one command is multiplied by, and where it came from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
    pub scale: f64,
    /// `--timeout-scale` was given (else: the accelerator's default).
    pub from_flag: bool,
    pub accel: Accel,
}

impl Limits {
    pub fn new(accel: Accel, flag: Option<f64>) -> Limits {
        let scale = flag.unwrap_or(match accel {
            Accel::Kvm => 1.0,
            Accel::Tcg => TCG_SCALE,
        });
        assert!(SCALES.contains(&scale), "checked by parse_scale");
        Limits {
            scale,
            from_flag: flag.is_some(),
            accel,
        }
    }

    /// A limit written for KVM, under this policy (whole seconds, rounded up).
    pub fn secs(&self, kvm_s: u64) -> u64 {
        (kvm_s as f64 * self.scale).ceil() as u64
    }

    /// "limits x2 (TCG)" — for headers.
    pub fn describe(&self) -> String {
        let why = match self.from_flag {
            true => "--timeout-scale".to_string(),
            false => self.accel.name().to_uppercase(),
        };
        format!("limits x{} ({why})", self.scale)
    }

    /// The flag that reproduces this scale anywhere (KVM's default differs from TCG's).
    pub fn flag(&self) -> [String; 2] {
        ["--timeout-scale".into(), self.scale.to_string()]
    }
}

/// What `--timeout-scale` accepts.
pub const SCALES: std::ops::RangeInclusive<f64> = 0.1..=100.0;

/// `--timeout-scale F`, for every command's clap definition.
pub fn parse_scale(s: &str) -> std::result::Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if SCALES.contains(&f) => Ok(f),
        _ => Err(format!(
            "--timeout-scale wants a number from 0.1 to 100, got `{s}`"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_scale_per_accelerator_unless_the_flag_says_otherwise() {
        let tcg = Limits::new(Accel::Tcg, None);
        assert_eq!((tcg.scale, tcg.secs(20)), (TCG_SCALE, 40));
        assert_eq!(tcg.describe(), "limits x2 (TCG)");
        let kvm = Limits::new(Accel::Kvm, None);
        assert_eq!(
            (kvm.secs(20), kvm.describe().as_str()),
            (20, "limits x1 (KVM)")
        );
        let mine = Limits::new(Accel::Kvm, Some(1.5));
        assert_eq!(mine.secs(7), 11, "rounded up");
        assert_eq!(mine.describe(), "limits x1.5 (--timeout-scale)");
        assert_eq!(mine.flag(), ["--timeout-scale".to_string(), "1.5".into()]);
        assert!(parse_scale("0").is_err() && parse_scale("x").is_err());
        assert_eq!(parse_scale("3"), Ok(3.0));
    }
}
