//! Host side of the agent protocol: one reader thread demultiplexes frames to per-request
//! channels and logs every frame to the run's transcript. All waits take a deadline.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use vm_agent::{encode_argv, encode_put_file, Frame, Kind, CHUNK};

use crate::util::Result;

/// What a request's channel delivers.
#[derive(Debug)]
pub enum Event {
    Frame(Frame),
    /// The stream ended or broke (QEMU died, guest crashed, agent exited).
    Lost(String),
}

#[derive(Default)]
struct Routes {
    by_id: HashMap<u32, Sender<Event>>,
    lost: Option<String>,
}

pub struct Agent {
    writer: Mutex<UnixStream>,
    routes: Arc<Mutex<Routes>>,
    transcript: Arc<Mutex<Transcript>>,
    next_id: AtomicU32,
    ready: Mutex<Receiver<Event>>,
}

/// Human-readable log of every frame, with time since connect.
pub struct Transcript {
    file: File,
    path: PathBuf,
    start: Instant,
}

impl Transcript {
    fn log(&mut self, dir: &str, f: &Frame) {
        let preview: String = String::from_utf8_lossy(&f.payload[..f.payload.len().min(96)])
            .chars()
            .flat_map(|c| c.escape_debug())
            .collect();
        let more = if f.payload.len() > 96 { "..." } else { "" };
        let r = writeln!(
            self.file,
            "{:9.3} {dir} {:?} id={} len={} \"{preview}{more}\"",
            self.start.elapsed().as_secs_f64(),
            f.kind,
            f.id,
            f.payload.len()
        );
        crate::runs::record(&self.path, r);
    }

    pub fn note(&mut self, msg: &str) {
        let r = writeln!(
            self.file,
            "{:9.3} -- {msg}",
            self.start.elapsed().as_secs_f64()
        );
        crate::runs::record(&self.path, r);
    }
}

impl Agent {
    /// Wraps a connected stream and starts the reader thread.
    pub fn new(stream: UnixStream, transcript: File, transcript_path: &Path) -> Result<Agent> {
        stream
            .set_write_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        let mut reader = stream
            .try_clone()
            .map_err(|e| format!("clone agent socket: {e}"))?;
        let routes = Arc::new(Mutex::new(Routes::default()));
        let transcript = Arc::new(Mutex::new(Transcript {
            file: transcript,
            path: transcript_path.to_path_buf(),
            start: Instant::now(),
        }));
        let (ready_tx, ready) = mpsc::channel();
        let (r, t) = (routes.clone(), transcript.clone());
        thread::spawn(move || {
            let why = loop {
                match Frame::read_from(&mut reader) {
                    Ok(Some(f)) => {
                        t.lock().unwrap().log("<-", &f);
                        if f.kind == Kind::Ready {
                            let _ = ready_tx.send(Event::Frame(f));
                            continue;
                        }
                        let routes = r.lock().unwrap();
                        if let Some(tx) = routes.by_id.get(&f.id) {
                            let _ = tx.send(Event::Frame(f));
                        }
                    }
                    Ok(None) => break "the agent connection closed".to_string(),
                    Err(e) => break format!("the agent connection broke: {e}"),
                }
            };
            t.lock().unwrap().note(&why);
            let mut routes = r.lock().unwrap();
            for tx in routes.by_id.values() {
                let _ = tx.send(Event::Lost(why.clone()));
            }
            let _ = ready_tx.send(Event::Lost(why.clone()));
            routes.lost = Some(why);
        });
        Ok(Agent {
            writer: Mutex::new(stream),
            routes,
            transcript,
            next_id: AtomicU32::new(1),
            ready: Mutex::new(ready),
        })
    }

    pub fn note(&self, msg: &str) {
        self.transcript.lock().unwrap().note(msg);
    }

    /// Why the connection ended, once it has.
    pub fn lost(&self) -> Option<String> {
        self.routes.lock().unwrap().lost.clone()
    }

    fn send(&self, f: Frame) -> Result<()> {
        self.transcript.lock().unwrap().log("->", &f);
        let mut w = self.writer.lock().unwrap();
        f.write_to(&mut *w)
            .map_err(|e| format!("send {:?} to the agent: {e}", f.kind))
    }

    /// Registers a new request id; its channel gets every frame for it, then Lost if the link dies.
    fn open(&self) -> (u32, Receiver<Event>) {
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let (tx, rx) = mpsc::channel();
        let mut routes = self.routes.lock().unwrap();
        if let Some(why) = &routes.lost {
            let _ = tx.send(Event::Lost(why.clone()));
        }
        routes.by_id.insert(id, tx);
        (id, rx)
    }

    pub fn close(&self, id: u32) {
        self.routes.lock().unwrap().by_id.remove(&id);
    }

    /// Sends HELLO and waits for READY; returns its `key=value` text.
    pub fn hello(&self, deadline: Instant) -> Result<String> {
        self.send(Frame::new(Kind::Hello, 0, Vec::new()))?;
        match self
            .ready
            .lock()
            .unwrap()
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            Ok(Event::Frame(f)) => Ok(String::from_utf8_lossy(&f.payload).into_owned()),
            Ok(Event::Lost(why)) => Err(why),
            Err(_) => Err("the agent did not answer HELLO in time".into()),
        }
    }

    /// Starts a command; returns its request id and event channel.
    pub fn exec<S: AsRef<[u8]>>(&self, argv: &[S]) -> Result<(u32, Receiver<Event>)> {
        assert!(!argv.is_empty(), "exec needs a command");
        let (id, rx) = self.open();
        self.send(Frame::new(Kind::Exec, id, encode_argv(argv)))?;
        Ok((id, rx))
    }

    /// Feeds the command's stdin; an empty slice closes it.
    pub fn stdin(&self, id: u32, data: &[u8]) -> Result<()> {
        for chunk in data.chunks(CHUNK) {
            self.send(Frame::new(Kind::PutData, id, chunk.to_vec()))?;
        }
        if data.is_empty() {
            self.send(Frame::new(Kind::PutData, id, Vec::new()))?;
        }
        Ok(())
    }

    pub fn signal(&self, id: u32, sig: i32) -> Result<()> {
        self.send(Frame::new(Kind::Signal, id, sig.to_le_bytes().to_vec()))
    }

    /// Runs a command to completion, collecting its output (for short probes like dmesg).
    pub fn run_capture(&self, argv: &[&str], deadline: Instant) -> Result<(i32, Vec<u8>, Vec<u8>)> {
        let (id, rx) = self.exec(argv)?;
        self.stdin(id, &[])?;
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let result = loop {
            match wait(&rx, deadline) {
                Some(Event::Frame(f)) => match f.kind {
                    Kind::Stdout => out.extend(f.payload),
                    Kind::Stderr => err.extend(f.payload),
                    Kind::Exit => break Ok((f.payload_i32().unwrap_or(-1), out, err)),
                    Kind::Error => break Err(String::from_utf8_lossy(&f.payload).into_owned()),
                    _ => {}
                },
                Some(Event::Lost(why)) => break Err(why),
                None => {
                    let _ = self.signal(id, libc::SIGKILL);
                    break Err(format!("{} did not finish in time", argv.join(" ")));
                }
            }
        };
        self.close(id);
        result
    }

    /// Copies a guest file to the host, up to `limit` bytes.
    pub fn get_file(&self, path: &str, limit: usize, deadline: Instant) -> Result<Vec<u8>> {
        let (id, rx) = self.open();
        self.send(Frame::new(Kind::GetFile, id, path.as_bytes().to_vec()))?;
        let mut data = Vec::new();
        let result = loop {
            match wait(&rx, deadline) {
                Some(Event::Frame(f)) => match f.kind {
                    Kind::FileData if data.len() + f.payload.len() > limit => {
                        break Err(format!("{path} is larger than {limit} bytes"))
                    }
                    Kind::FileData => data.extend(f.payload),
                    Kind::Exit => break Ok(std::mem::take(&mut data)),
                    Kind::Error => break Err(String::from_utf8_lossy(&f.payload).into_owned()),
                    _ => {}
                },
                Some(Event::Lost(why)) => break Err(why),
                None => break Err(format!("copying {path} out did not finish in time")),
            }
        };
        self.close(id);
        result
    }

    /// Writes a guest file (created or truncated, with `mode`).
    pub fn put_file(&self, path: &str, mode: u32, data: &[u8], deadline: Instant) -> Result<()> {
        let (id, rx) = self.open();
        self.send(Frame::new(Kind::PutFile, id, encode_put_file(mode, path)))?;
        for chunk in data.chunks(CHUNK) {
            self.send(Frame::new(Kind::PutData, id, chunk.to_vec()))?;
        }
        self.send(Frame::new(Kind::PutData, id, Vec::new()))?;
        let result = loop {
            match wait(&rx, deadline) {
                Some(Event::Frame(f)) if f.kind == Kind::Exit => break Ok(()),
                Some(Event::Frame(f)) if f.kind == Kind::Error => {
                    break Err(String::from_utf8_lossy(&f.payload).into_owned())
                }
                Some(Event::Frame(_)) => {}
                Some(Event::Lost(why)) => break Err(why),
                None => break Err(format!("copying {path} in did not finish in time")),
            }
        };
        self.close(id);
        result
    }
}

/// Next event before `deadline`, or None on timeout.
pub fn wait(rx: &Receiver<Event>, deadline: Instant) -> Option<Event> {
    match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        Ok(e) => Some(e),
        Err(RecvTimeoutError::Timeout) => None,
        Err(RecvTimeoutError::Disconnected) => Some(Event::Lost("agent reader stopped".into())),
    }
}
