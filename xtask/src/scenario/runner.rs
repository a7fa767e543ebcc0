//! `Runner`: one scenario run's VM — its servers (`server::fleet::Fleet`, which the runner
//! derefs to), its background jobs (`Job`), the device defaults its start steps fill from, the
//! splats it expects. The step kinds are `steps.rs`'s methods on it, user recovery
//! `recovery.rs`'s. A step either passes or says why not (`StepError`); a verdict is `run.rs`'s
//! job.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use super::model;
use crate::server::fleet::Fleet;
use crate::server::Profile;
use crate::vm::freeze::FreezeFrame;
pub use crate::vm::job::{Job, JobError as StepError};
use crate::vm::Vm;

pub struct Runner<'a> {
    /// The VM and the servers it runs.
    pub fleet: Fleet<'a>,
    /// The device defaults a start step's own values override (a scenario's `device:`).
    pub device: model::DeviceSpec,
    /// Kernel-log substrings that are not splats (a scenario's `expect_splats`).
    pub expect_splats: &'a [String],
    pub seed: u64,
    pub jobs: HashMap<String, Job>,
    /// The freeze-frame an `expect_timeout` step took (a hang that was expected).
    pub freeze: Option<FreezeFrame>,
}

impl<'a> std::ops::Deref for Runner<'a> {
    type Target = Fleet<'a>;
    fn deref(&self) -> &Fleet<'a> {
        &self.fleet
    }
}

impl<'a> std::ops::DerefMut for Runner<'a> {
    fn deref_mut(&mut self) -> &mut Fleet<'a> {
        &mut self.fleet
    }
}

impl<'a> Runner<'a> {
    pub fn new(server: &'a Profile, vm: Vm, dir: &Path, seed: u64) -> Runner<'a> {
        Runner {
            fleet: Fleet::new(server, vm, dir),
            device: model::DeviceSpec::default(),
            expect_splats: &[],
            seed,
            jobs: HashMap::new(),
            freeze: None,
        }
    }

    /// The `start` step: its values over the scenario's `device:`, then the fleet's start.
    pub fn start_step(
        &mut self,
        s: &model::Start,
        deadline: Instant,
        log_name: &str,
    ) -> Result<(), StepError> {
        let start = crate::server::fleet::Start {
            name: s.name.clone(),
            params: self.device.params(s),
            fault: s.fault.as_ref().map(|f| f.0.clone()),
            trace: s.trace,
            recovery: s.recovery,
        };
        self.fleet.start(&start, deadline, log_name)
    }

    /// Kernel splats in the guest's log that the scenario does not expect.
    pub fn splats(&self) -> Vec<String> {
        self.fleet.splats(self.expect_splats)
    }

    /// Server output and traces, then the background jobs' output, while the agent answers.
    pub fn save_artifacts(&mut self) {
        self.fleet.save_artifacts();
        for job in self.jobs.values_mut() {
            job.pump(Instant::now() + Duration::from_millis(100), |_, _| false);
        }
    }
}

/// What a step's log says went wrong (`reason::of`: its telling lines, else its last `n`).
pub fn reason_of(path: &Path, n: usize) -> String {
    crate::reason::of_file(path, n)
}
