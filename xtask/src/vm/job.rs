//! A command running in the guest (`Job`): its output streamed into a log file, its end
//! (exit status, or the agent lost) pumped under a deadline; `JobError` is why one did not
//! succeed. Scenario steps, the server fleet and vm-perf all run guest commands this way.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::mpsc::Receiver;
use std::time::Instant;

use vm_agent::Kind as Frame;

use crate::runs;
use crate::vm::agent::{wait, Event};

/// A command running in the guest, with its output going to a log file.
pub struct Job {
    pub id: u32,
    rx: Receiver<Event>,
    log: File,
    pub log_path: PathBuf,
    pub status: Option<i32>,
    pub lost: Option<String>,
}

impl Job {
    /// A job of the agent's exec `id`, its events on `rx`, its output into `log` at `log_path`.
    pub fn new(id: u32, rx: Receiver<Event>, log: File, log_path: PathBuf) -> Job {
        Job {
            id,
            rx,
            log,
            log_path,
            status: None,
            lost: None,
        }
    }

    /// Pumps events until `deadline`, or until `until` (shown each output chunk, with
    /// `Stream::Stdout` or `Stream::Stderr`) says stop. Returns true once the job has ended.
    pub fn pump(
        &mut self,
        deadline: Instant,
        mut until: impl FnMut(Stream, &[u8]) -> bool,
    ) -> bool {
        if self.status.is_some() || self.lost.is_some() {
            return true;
        }
        loop {
            match wait(&self.rx, deadline) {
                Some(Event::Frame(f)) => match f.kind {
                    Frame::Stdout | Frame::Stderr => {
                        runs::record(&self.log_path, self.log.write_all(&f.payload));
                        let stream = match f.kind {
                            Frame::Stdout => Stream::Stdout,
                            _ => Stream::Stderr,
                        };
                        if until(stream, &f.payload) {
                            return false;
                        }
                    }
                    Frame::Exit => {
                        self.status = Some(vm_agent::exit_code(f.payload_i32().unwrap_or(-1)));
                        return true;
                    }
                    Frame::Error => {
                        self.lost = Some(String::from_utf8_lossy(&f.payload).into_owned());
                        return true;
                    }
                    _ => {}
                },
                Some(Event::Lost(why)) => {
                    self.lost = Some(why);
                    return true;
                }
                None => return false,
            }
        }
    }
}

/// Which output of a guest command a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Why a guest command — and the step or server operation it stood for — did not succeed:
/// a wrong result, a hang (its deadline passed), or the VM itself failing.
pub enum JobError {
    Fail(String),
    Hang(String),
    Infra(String),
}
