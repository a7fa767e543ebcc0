//! User recovery in a scenario, for any server whose profile has a `recovery:` section: a
//! crash at a seeded moment (`signal` with `delay_ms`), a planned hand-over (`quiesce`), and a
//! new server taking the device over (`recover`).

use std::time::{Duration, Instant};

use super::model;
use super::runner::{reason_of, Runner, StepError};
use crate::server::fleet::Daemon;
use crate::server::Sig;

impl Runner<'_> {
    /// The seeded wait before a signal (and, with `in_flight`, until the device has writes
    /// in flight), then a log line with what the block layer had in flight: whether a crash
    /// hit requests (the kernel re-issues, requeues or fails them).
    pub(super) fn before_signal(
        &self,
        sg: &model::Signal,
        step: usize,
        deadline: Instant,
    ) -> Result<(), StepError> {
        if sg.delay_ms.is_none() && !sg.in_flight {
            return Ok(());
        }
        let [min, max] = sg.delay_ms.unwrap_or([0, 0]);
        let mut rng = ublk::rng::Rng::new(self.seed ^ (step as u64 + 1).wrapping_mul(0x9e37_79b9));
        let delay_ms = min + rng.below(max - min + 1);
        std::thread::sleep(Duration::from_millis(delay_ms));
        let name = self
            .daemon(&sg.device)?
            .bdev
            .trim_start_matches("/dev/")
            .to_string();
        let inflight = match sg.in_flight {
            true => self.await_inflight(&name, deadline)?,
            false => self.inflight(&name),
        };
        self.log(&format!(
            "SIG{} to {} after {delay_ms} ms (seeded); in flight at the block layer just before: {inflight}",
            sg.signal.name(),
            sg.device
        ));
        Ok(())
    }

    /// `R reads, W writes` from /sys/block/NAME/inflight.
    fn inflight(&self, name: &str) -> String {
        self.poll_inflight(name, 1, Instant::now() + Duration::from_secs(2))
            .unwrap_or_else(|e| format!("unknown ({e})"))
    }

    /// Polls (in the guest, every few ms) until NAME has writes in flight.
    fn await_inflight(&self, name: &str, deadline: Instant) -> Result<String, StepError> {
        let polls = 2000; // ~10 s of 5 ms polls, and never past the step's deadline
        self.poll_inflight(name, polls, deadline).map_err(|e| {
            StepError::Fail(format!(
                "{name} never had requests in flight ({e}): nothing for the signal to hit"
            ))
        })
    }

    fn poll_inflight(&self, name: &str, polls: u32, deadline: Instant) -> Result<String, String> {
        let script = format!(
            "i=0; while [ $i -lt {polls} ]; do read r w < /sys/block/{name}/inflight || exit 2; \
             if [ \"$w\" -gt 0 ] || [ {polls} -eq 1 ]; then echo \"$r reads, $w writes\"; exit 0; fi; \
             i=$((i + 1)); usleep 5000; done; exit 1"
        );
        match self.vm.agent.run_capture(&["sh", "-c", &script], deadline) {
            Ok((0, out, _)) => Ok(String::from_utf8_lossy(&out).trim().to_string()),
            Ok((1, _, _)) => Err(format!("idle for {polls} polls")),
            Ok((st, _, err)) => Err(format!(
                "exit {st}: {}",
                String::from_utf8_lossy(&err).trim()
            )),
            Err(e) => Err(e),
        }
    }

    /// A failed takeover, with whether the kernel still answers control commands for the
    /// device: a dead server's device may be held by the kernel until its requests time out
    /// (6.12 aborts a queue whose every tag the server held only at the request timeout).
    fn with_control_state(&self, e: StepError, dev_id: u32) -> StepError {
        let StepError::Fail(why) = e else {
            return e;
        };
        let probe = ["ublk-mem", "list", "--json"];
        let limit = Instant::now() + Duration::from_secs(5);
        match self.vm.agent.run_capture(&probe, limit) {
            Ok((0, _, _)) => StepError::Fail(why),
            _ => StepError::Fail(format!(
                "{why}; ublk{dev_id}'s control commands got no answer within 5 s after it (the kernel still holds the dead server's device)"
            )),
        }
    }

    /// The `signal` step.
    pub(super) fn signal(
        &mut self,
        sg: &model::Signal,
        step: usize,
        deadline: Instant,
    ) -> Result<(), StepError> {
        self.before_signal(sg, step, deadline)?;
        self.send(&sg.device, sg.signal.number())?;
        if !sg.signal.ends_daemon() {
            return Ok(());
        }
        let status = self.await_end(&sg.device, deadline, &format!("SIG{}", sg.signal.name()))?;
        let want = match sg.signal {
            Sig::Kill => 128 + libc::SIGKILL,
            _ => sg.expect_exit.unwrap_or(0),
        };
        match status {
            // A daemonized server is not our child: its exit status is unknowable.
            None => Ok(()),
            Some(st) if st == want => Ok(()),
            Some(st) => Err(StepError::Fail(format!(
                "daemon `{}` exited {st} after SIG{}, expected {want}",
                sg.device,
                sg.signal.name()
            ))),
        }
    }

    /// The `quiesce` step: the profile's hand-over command must succeed, then the server must
    /// exit by itself (status 0), leaving its device to `recover`.
    pub(super) fn quiesce(
        &mut self,
        q: &model::Quiesce,
        deadline: Instant,
        log_name: &str,
    ) -> Result<(), StepError> {
        let template = self
            .server
            .recovery
            .as_ref()
            .and_then(|r| r.quiesce.clone())
            .expect("needs() asked for the quiesce capability");
        let argv = self.daemon(&q.device)?.vars.render(&template);
        let mut job = self.exec(&argv, log_name)?;
        let status = self.finish_job(&mut job, deadline, &argv.join(" "))?;
        if status != 0 {
            let log = reason_of(&self.dir.join("steps").join(log_name), 6);
            let m = format!("`{}` exited {status}: {log}", argv.join(" "));
            return Err(StepError::Fail(m));
        }
        match self.await_end(&q.device, deadline, "quiesce")? {
            Some(st) if st != 0 => Err(StepError::Fail(format!(
                "server `{}` exited {st} after the quiesce, expected 0",
                q.device
            ))),
            _ => Ok(()),
        }
    }

    /// The `recover` step: the profile's recover command for the device; its new server
    /// replaces the dead one (same device id, same name for later steps).
    pub(super) fn recover(
        &mut self,
        r: &model::Recover,
        deadline: Instant,
        log_name: &str,
    ) -> Result<(), StepError> {
        let how = self
            .server
            .recovery
            .as_ref()
            .map(|r| r.recover.clone())
            .expect("needs() asked for the recovery capability");
        let old = self
            .daemons
            .get(&r.device)
            .ok_or_else(|| StepError::Fail(format!("device `{}` was never started", r.device)))?;
        if old.running() {
            return Err(StepError::Fail(format!(
                "device `{}`: its server (pid {}) still runs; recover follows a KILL or a quiesce",
                r.device, old.pid
            )));
        }
        let vars = old.vars.clone();
        let mut argv = vars.render(&how.argv);
        if let Some(t) = &self.server.options.state_file {
            argv.extend(vars.render(t));
        }
        let started = Instant::now();
        // Only a device the kernel runs with USER_RECOVERY is ever released for a new server
        // (asking the kernel about any other one can block behind its teardown): for those,
        // the recover command itself says what is wrong.
        let recoverable = self
            .device_features
            .get(&r.device)
            .is_some_and(|f| f.iter().any(|x| x == "USER_RECOVERY"));
        if recoverable {
            self.await_released(vars.dev_id, deadline)?;
        }
        let mut job = self.exec(&argv, log_name)?;
        let ready = self.ready(&how, &mut job, &argv, vars.dev_id, &[], deadline, log_name);
        let (dev_id, pid, _) = ready.map_err(|e| self.with_control_state(e, vars.dev_id))?;
        if dev_id != vars.dev_id {
            let m = format!(
                "`{}` brought up ublk{dev_id}, not ublk{}",
                argv.join(" "),
                vars.dev_id
            );
            return Err(StepError::Fail(m));
        }
        self.log(&format!(
            "device {} (ublk{dev_id}) recovered by a new server (pid {pid}) in {} ms",
            r.device,
            started.elapsed().as_millis()
        ));
        let state_file = old.state_file.clone();
        let daemon = Daemon {
            job,
            mode: how.mode,
            pid,
            bdev: format!("/dev/ublkb{dev_id}"),
            vars,
            state_file,
            trace: None,
            ended: false,
        };
        self.daemons.insert(r.device.clone(), daemon);
        Ok(())
    }
}
