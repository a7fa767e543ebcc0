//! The step kinds of a scenario, each against the running VM (methods of `runner::Runner`):
//! one `match` over `model::Kind`, one method per kind.

use std::time::{Duration, Instant};

use super::model::{self, Expect, Kind, Name, Step};
use super::runner::{reason_of, Runner, StepError};
use crate::vm::freeze;

impl Runner<'_> {
    /// `sh -c` with `$DEV_<name>` (the block device of each running daemon) exported.
    fn shell_argv(&self, script: &str) -> Vec<String> {
        let mut exports: Vec<String> = self
            .daemons
            .iter()
            .filter(|(_, d)| d.running())
            .map(|(n, d)| format!("export DEV_{}={};", n.replace('-', "_"), d.bdev))
            .collect();
        exports.sort();
        vec![
            "sh".into(),
            "-c".into(),
            format!("{}\n{script}", exports.join(" ")),
        ]
    }

    /// `blkio write` and/or `blkio verify` for an io step, built from blkio's own types
    /// (`blkio::cli`): every value explicit, the defaults blkio's.
    fn io_argv(&self, io: &model::Io) -> Result<Vec<String>, StepError> {
        use blkio::cli::{Cmd, Common, PlanArgs};
        let d = self
            .daemons
            .get(&io.device)
            .ok_or_else(|| StepError::Fail(format!("device `{}` is not running", io.device)))?;
        let c = Common {
            qd: io.qd.map_or(blkio::cli::DEFAULT_QD, |q| q as usize),
            ..Common::new(&d.bdev)
        };
        let mut cmds = Vec::new();
        if io.write {
            let defaults = PlanArgs::default();
            let p = PlanArgs {
                seed: io.seed.unwrap_or(self.seed),
                pattern: io.pattern,
                bytes: io.bytes.map_or(defaults.bytes, |b| b.0),
                count: io.count.unwrap_or(defaults.count),
                min: io.min.map_or(defaults.min, |m| m.0),
                max: io.max.map_or(defaults.max, |m| m.0),
                overlap: io.overlap,
                ..defaults
            };
            cmds.push(Cmd::Write {
                c: c.clone(),
                p,
                model: None,
                spread: io.spread,
                allow_errors: io.allow_errors,
            });
        }
        if io.verify {
            cmds.push(Cmd::Verify {
                c,
                model: None,
                full: io.full,
                offset: None,
                len: None,
            });
        }
        let lines: Vec<String> = cmds
            .iter()
            .map(|cmd| crate::util::shell_line(&cmd.to_argv()))
            .collect();
        Ok(vec!["sh".into(), "-c".into(), lines.join(" && ")])
    }

    pub fn step(&mut self, i: usize, step: &Step, deadline: Instant) -> Result<(), StepError> {
        let log_name = format!("{i:02}-{}.log", step.kind.name());
        match &step.kind {
            Kind::Start(s) => self.start_step(s, deadline, &log_name),
            Kind::Stop(st) => self.stop(&st.device, deadline, &log_name),
            Kind::Io(io) => self.io(io, deadline, &log_name),
            Kind::Shell(sh) => self.shell(sh, deadline, &log_name),
            Kind::Wait(w) => self.wait(w, deadline),
            Kind::WaitUntil(w) => self.wait_until(w, deadline, &log_name),
            Kind::Signal(sg) => self.signal(sg, i, deadline),
            Kind::Recover(r) => self.recover(r, deadline, &log_name),
            Kind::Quiesce(q) => self.quiesce(q, deadline, &log_name),
            Kind::ExpectTimeout(e) => self.expect_timeout(i, e, deadline, &log_name),
            Kind::Reset(_) => self.reset(deadline, &log_name),
            Kind::Check(_) => self.check(deadline, &log_name),
        }
    }

    fn io(&mut self, io: &model::Io, deadline: Instant, log_name: &str) -> Result<(), StepError> {
        let argv = self.io_argv(io)?;
        let mut job = self.exec(&argv, log_name)?;
        if let Some(name) = &io.background {
            self.jobs.insert(name.clone(), job);
            return Ok(());
        }
        let status = self.finish_job(&mut job, deadline, "io")?;
        if status != 0 {
            return Err(StepError::Fail(format!(
                "io failed with status {status}: {}",
                reason_of(&self.dir.join("steps").join(log_name), 6)
            )));
        }
        if io.spread && io.write {
            self.check_every_queue_served(&io.device)?;
        }
        Ok(())
    }

    fn shell(
        &mut self,
        sh: &model::Shell,
        deadline: Instant,
        log_name: &str,
    ) -> Result<(), StepError> {
        let mut job = self.exec(&self.shell_argv(&sh.run), log_name)?;
        if let Some(name) = &sh.background {
            self.jobs.insert(name.clone(), job);
            return Ok(());
        }
        let status = self.finish_job(&mut job, deadline, "shell command")?;
        if status != sh.expect_status {
            return Err(StepError::Fail(format!(
                "`{}` exited {status}, expected {}: {}",
                sh.run,
                sh.expect_status,
                reason_of(&self.dir.join("steps").join(log_name), 6)
            )));
        }
        Ok(())
    }

    /// Runs the condition every `every_ms` until it exits 0; bounded by the step's deadline
    /// (each try too). Its log holds the last try's output.
    fn wait_until(
        &mut self,
        w: &model::WaitUntil,
        deadline: Instant,
        log_name: &str,
    ) -> Result<(), StepError> {
        assert!(
            model::EVERY_MS.contains(&w.every_ms),
            "checked when the file loaded"
        );
        let every = Duration::from_millis(w.every_ms);
        let argv = self.shell_argv(&w.run);
        let mut tries = 0u64;
        let last = loop {
            tries += 1;
            let mut job = self.exec(&argv, log_name)?;
            match self.finish_job(&mut job, deadline, "the wait_until condition") {
                Ok(0) => return Ok(()),
                Ok(status) => {
                    if Instant::now() + every >= deadline {
                        break format!("it last exited {status}");
                    }
                    std::thread::sleep(every);
                }
                Err(StepError::Hang(_)) => break "its last try was still running".to_string(),
                Err(e) => return Err(e),
            }
        };
        Err(StepError::Hang(format!(
            "`{}` did not succeed within the step's timeout ({tries} tries every {} ms; {last}): {}",
            w.run,
            w.every_ms,
            reason_of(&self.dir.join("steps").join(log_name), 4)
        )))
    }

    fn wait(&mut self, w: &model::Wait, deadline: Instant) -> Result<(), StepError> {
        let mut job = self
            .jobs
            .remove(&w.job)
            .ok_or_else(|| StepError::Fail(format!("no background job `{}`", w.job)))?;
        let status = self.finish_job(&mut job, deadline, &format!("background job `{}`", w.job))?;
        match (w.expect, status) {
            (Expect::Pass, 0) => Ok(()),
            (Expect::Fail, s) if s != 0 => Ok(()),
            (e, s) => Err(StepError::Fail(format!(
                "background job `{}` exited {s}, expected {e:?}",
                w.job
            ))),
        }
    }

    fn expect_timeout(
        &mut self,
        i: usize,
        e: &model::ExpectTimeout,
        deadline: Instant,
        log_name: &str,
    ) -> Result<(), StepError> {
        let argv = match (&e.shell, &e.io) {
            (Some(sh), _) => self.shell_argv(sh),
            (None, Some(io)) => self.io_argv(io)?,
            (None, None) => unreachable!("validated"),
        };
        let mut job = self.exec(&argv, log_name)?;
        if job.pump(deadline, |_, _| false) {
            return Err(match (&job.lost, job.status) {
                (Some(why), _) => StepError::Infra(why.clone()),
                (None, status) => StepError::Fail(format!(
                    "expected a hang, but the command exited {}: {}",
                    status.expect("an ended job has a status or a loss"),
                    reason_of(&self.dir.join("steps").join(log_name), 6)
                )),
            });
        }
        let ff_dir = self.dir.join(format!("freeze-frame-{i:02}"));
        let ff = self.freeze_frame(&ff_dir, &format!("steps[{i}] hung as expected"));
        let _ = self.vm.agent.signal(job.id, libc::SIGKILL);
        let mut missing = Vec::new();
        for n in &e.must_name {
            match n {
                Name::StuckTag if ff.stuck_tags.is_empty() => missing.push("a stuck tag"),
                Name::BlockedTask if ff.blocked_tasks.is_empty() => missing.push("a blocked task"),
                _ => {}
            }
        }
        let dir = ff.dir.clone();
        self.freeze = Some(ff);
        if !missing.is_empty() {
            return Err(StepError::Fail(format!(
                "the freeze-frame names no {}; see {}",
                missing.join(" and no "),
                dir.join("summary.txt").display()
            )));
        }
        Ok(())
    }

    /// No splat so far, and exactly one ublk block device per running daemon.
    fn check(&mut self, deadline: Instant, log_name: &str) -> Result<(), StepError> {
        let found = self.splats();
        if let Some(first) = found.first() {
            return Err(StepError::Fail(format!("kernel splat: {first}")));
        }
        let live = self.daemons.values().filter(|d| d.running()).count();
        let listing = "ls /dev/ublkb* /dev/ublkc* 2>/dev/null; true";
        let mut job = self.exec(&["sh".into(), "-c".into(), listing.into()], log_name)?;
        self.finish_job(&mut job, deadline, "device listing")?;
        let listing =
            std::fs::read_to_string(self.dir.join("steps").join(log_name)).unwrap_or_default();
        let devices = listing
            .lines()
            .filter(|l| l.starts_with("/dev/ublkb"))
            .count();
        if devices != live {
            return Err(StepError::Fail(format!(
                "{devices} ublk block device(s) present but {live} daemon(s) running: leftovers ({})",
                listing.trim().replace('\n', " ")
            )));
        }
        Ok(())
    }

    /// `spread` promises requests on every queue: the server's own counters must show it. The
    /// kernel keeps no per-queue count, so a server without a state dump is not checked (the
    /// steps log says so).
    fn check_every_queue_served(&self, device: &str) -> Result<(), StepError> {
        let d = &self.daemons[device];
        if d.state_file.is_none() {
            self.log(&format!(
                "spread: per-queue counts of `{device}` not checked: server {} has no state dump",
                self.server.name
            ));
            return Ok(());
        }
        let (v, _) = freeze::daemon_state(&self.vm, &d.as_ref(device))
            .ok_or_else(|| StepError::Fail(format!("daemon `{device}` did not answer SIGUSR1")))?;
        let idle: Vec<String> = v
            .queues
            .iter()
            .filter(|q| q.completions == 0)
            .map(|q| q.q_id.to_string())
            .collect();
        if !idle.is_empty() {
            return Err(StepError::Fail(format!(
                "spread I/O left queue(s) {} of `{device}` without a single request",
                idle.join(", ")
            )));
        }
        Ok(())
    }
}
