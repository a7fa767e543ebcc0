//! vm-agent: runs in every test VM, started by `/init`, and serves the host over a
//! virtio-serial port (protocol in `PROTOCOL.md`). Deliberately small and synchronous:
//! one reader loop, one thread per request, one mutex around the port writer.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use vm_agent::{decode_argv, decode_put_file, Frame, Kind, CHUNK, PORT_NAME, PROTOCOL_VERSION};

/// How long to look for the port at boot (virtio-console is built in, so it is normally there at once).
const PORT_WAIT: Duration = Duration::from_secs(10);
/// After a command exits, how long its output pipes may stay open (held by a background child)
/// before `Exit` is sent anyway.
const OUTPUT_GRACE: Duration = Duration::from_millis(500);

type Writer = Arc<Mutex<File>>;

#[derive(Default)]
struct State {
    /// Process group of each running `Exec`, for `Signal`.
    pgids: HashMap<u32, i32>,
    /// Stdin feeder of each running `Exec`, fed by `PutData`; dropping it closes the stdin.
    stdins: HashMap<u32, mpsc::Sender<Vec<u8>>>,
    /// Files being written by `PutFile`.
    puts: HashMap<u32, File>,
}

fn main() {
    if let Err(e) = run() {
        eprintln!("vm-agent: fatal: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    // The agent must survive the memory pressure tests create; its children get the default back.
    let _ = std::fs::write("/proc/self/oom_score_adj", "-1000");
    let path = find_port()?;
    let port = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| format!("open {}: {e}", path.display()))?;
    let writer: Writer = Arc::new(Mutex::new(
        port.try_clone().map_err(|e| format!("dup port: {e}"))?,
    ));
    let state = Arc::new(Mutex::new(State::default()));
    eprintln!(
        "vm-agent: protocol {PROTOCOL_VERSION} on {}",
        path.display()
    );
    let mut reader = port;
    loop {
        match Frame::read_from(&mut reader) {
            Ok(Some(frame)) => handle(frame, &writer, &state),
            // No host connected: reads return 0 until one is. The host bounds all its waits; the
            // agent itself lives as long as the VM.
            Ok(None) => thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("protocol error, stream lost: {e}")),
        }
    }
}

/// Finds `/dev/vportNpM` whose sysfs name is PORT_NAME (no udev in the guest, so no symlink).
fn find_port() -> Result<PathBuf, String> {
    let deadline = Instant::now() + PORT_WAIT;
    loop {
        if let Ok(dir) = std::fs::read_dir("/sys/class/virtio-ports") {
            for entry in dir.flatten() {
                let name = std::fs::read_to_string(entry.path().join("name")).unwrap_or_default();
                if name.trim() == PORT_NAME {
                    return Ok(PathBuf::from("/dev").join(entry.file_name()));
                }
            }
        }
        if Instant::now() > deadline {
            return Err(format!(
                "no virtio-serial port named {PORT_NAME} after {PORT_WAIT:?}"
            ));
        }
        thread::sleep(Duration::from_millis(20));
    }
}

fn send(writer: &Writer, frame: Frame) {
    let mut w = writer.lock().unwrap();
    if let Err(e) = frame.write_to(&mut *w) {
        eprintln!(
            "vm-agent: write {:?} for request {}: {e}",
            frame.kind, frame.id
        );
    }
}

fn handle(frame: Frame, writer: &Writer, state: &Arc<Mutex<State>>) {
    let id = frame.id;
    match frame.kind {
        Kind::Hello => send(writer, Frame::new(Kind::Ready, 0, ready_text())),
        Kind::Exec => match decode_argv(&frame.payload) {
            // Spawned here, in the reader loop, so the child's stdin is registered before the
            // next frame (its PutData) is read.
            Ok(argv) => exec(id, argv, writer, state),
            Err(e) => send(writer, Frame::new(Kind::Error, id, e)),
        },
        Kind::Signal => {
            let pgid = state.lock().unwrap().pgids.get(&id).copied();
            match (pgid, frame.payload_i32()) {
                // SAFETY: plain syscall; a stale pgid at worst signals nothing (ESRCH).
                (Some(pgid), Some(sig)) => unsafe {
                    libc::kill(-pgid, sig);
                },
                _ => eprintln!("vm-agent: signal for unknown request {id} ignored"),
            }
        }
        Kind::GetFile => {
            let w = writer.clone();
            thread::spawn(move || get_file(id, &frame.payload, &w));
        }
        Kind::PutFile => match decode_put_file(&frame.payload).and_then(|(mode, path)| {
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(mode)
                .open(&path)
                .map_err(|e| format!("create {path}: {e}"))
        }) {
            Ok(f) => {
                state.lock().unwrap().puts.insert(id, f);
            }
            Err(e) => send(writer, Frame::new(Kind::Error, id, e)),
        },
        Kind::PutData => put_data(id, &frame.payload, writer, state),
        other => eprintln!("vm-agent: unexpected {other:?} frame from host ignored"),
    }
}

fn put_data(id: u32, data: &[u8], writer: &Writer, state: &Arc<Mutex<State>>) {
    let mut st = state.lock().unwrap();
    if let Some(mut f) = st.puts.remove(&id) {
        if data.is_empty() {
            drop(st);
            match f.sync_all() {
                Ok(()) => send(writer, Frame::exit(id, 0)),
                Err(e) => send(writer, Frame::new(Kind::Error, id, format!("sync: {e}"))),
            }
        } else if let Err(e) = f.write_all(data) {
            drop(st);
            send(writer, Frame::new(Kind::Error, id, format!("write: {e}")));
        } else {
            st.puts.insert(id, f);
        }
    } else if data.is_empty() {
        st.stdins.remove(&id); // drop = EOF on the command's stdin
    } else if let Some(feeder) = st.stdins.get(&id) {
        let _ = feeder.send(data.to_vec());
    }
}

fn ready_text() -> String {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let uptime = std::fs::read_to_string("/proc/uptime").unwrap_or_default();
    format!(
        "protocol={PROTOCOL_VERSION}\nrelease={}\nuptime={}\n",
        release.trim(),
        uptime.split_whitespace().next().unwrap_or("?")
    )
}

fn get_file(id: u32, payload: &[u8], writer: &Writer) {
    let path = OsStr::from_bytes(payload);
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) => {
            return send(
                writer,
                Frame::new(
                    Kind::Error,
                    id,
                    format!("open {}: {e}", path.to_string_lossy()),
                ),
            )
        }
    };
    let mut buf = vec![0u8; CHUNK];
    loop {
        match f.read(&mut buf) {
            Ok(0) => return send(writer, Frame::exit(id, 0)),
            Ok(n) => send(writer, Frame::new(Kind::FileData, id, buf[..n].to_vec())),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return send(writer, Frame::new(Kind::Error, id, format!("read: {e}"))),
        }
    }
}

fn spawn(argv: &[Vec<u8>]) -> std::io::Result<Child> {
    let mut cmd = Command::new(OsStr::from_bytes(&argv[0]));
    cmd.args(argv[1..].iter().map(|a| OsStr::from_bytes(a)))
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("HOME", "/root")
        .env("TERM", "dumb")
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Own process group, so `Signal` reaches everything the command started.
        .process_group(0);
    // SAFETY: only async-signal-safe syscalls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let fd = libc::open(c"/proc/self/oom_score_adj".as_ptr(), libc::O_WRONLY);
            if fd >= 0 {
                libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// Starts the command and registers it; a thread waits for it and sends `Exit`.
fn exec(id: u32, argv: Vec<Vec<u8>>, writer: &Writer, state: &Arc<Mutex<State>>) {
    let mut child = match spawn(&argv) {
        Ok(c) => c,
        Err(e) => {
            let name = String::from_utf8_lossy(&argv[0]);
            send(
                writer,
                Frame::new(
                    Kind::Stderr,
                    id,
                    format!("vm-agent: cannot run '{name}': {e}\n"),
                ),
            );
            let code = if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            };
            return send(writer, Frame::exit(id, code));
        }
    };
    {
        let mut st = state.lock().unwrap();
        st.pgids.insert(id, child.id() as i32);
        st.stdins
            .insert(id, feed_stdin(child.stdin.take().unwrap()));
    }
    let (writer, state) = (writer.clone(), state.clone());
    thread::spawn(move || {
        let (done_tx, done_rx) = mpsc::channel();
        let out = forward(
            child.stdout.take().unwrap(),
            Kind::Stdout,
            id,
            writer.clone(),
            done_tx.clone(),
        );
        let err = forward(
            child.stderr.take().unwrap(),
            Kind::Stderr,
            id,
            writer.clone(),
            done_tx,
        );
        let status = child.wait();
        // Let the output drain so it precedes Exit; a background child holding the pipes open
        // gets OUTPUT_GRACE, not forever.
        let deadline = Instant::now() + OUTPUT_GRACE;
        for _ in 0..2 {
            let left = deadline.saturating_duration_since(Instant::now());
            if done_rx.recv_timeout(left).is_err() {
                break;
            }
        }
        drop((out, err)); // detached if still running
        {
            let mut st = state.lock().unwrap();
            st.pgids.remove(&id);
            st.stdins.remove(&id);
        }
        let code = match status {
            Ok(s) => s.code().unwrap_or_else(|| -s.signal().unwrap_or(0)),
            Err(e) => {
                send(
                    &writer,
                    Frame::new(Kind::Stderr, id, format!("vm-agent: wait failed: {e}\n")),
                );
                126
            }
        };
        send(&writer, Frame::exit(id, code));
    });
}

/// A command that does not read its stdin must not wedge the reader loop: a thread per
/// command does the (blocking) writes.
fn feed_stdin(mut stdin: ChildStdin) -> mpsc::Sender<Vec<u8>> {
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    thread::spawn(move || {
        for chunk in rx {
            if stdin.write_all(&chunk).is_err() {
                break;
            }
        }
    });
    tx
}

fn forward(
    mut src: impl Read + Send + 'static,
    kind: Kind,
    id: u32,
    writer: Writer,
    done: mpsc::Sender<()>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match src.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => send(&writer, Frame::new(kind, id, buf[..n].to_vec())),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        let _ = done.send(());
    })
}
