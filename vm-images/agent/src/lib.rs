//! The host<->guest agent protocol (see `PROTOCOL.md` next to this crate).
//!
//! One byte stream (a virtio-serial port in the guest, a unix socket on the host) carries
//! frames: `kind: u8, id: u32 LE, len: u32 LE, payload[len]`. `id` names one request so
//! several commands can run at once (the freeze-frame probes run while a test command hangs).
//! The codec is plain std I/O so both ends share it byte for byte.

use std::io::{self, Read, Write};

/// Bumped on any incompatible change; the agent reports it in `READY`.
pub const PROTOCOL_VERSION: u32 = 1;
/// Name of the virtio-serial port the agent listens on.
pub const PORT_NAME: &str = "org.ublk-vm.agent";
/// Largest payload either side sends or accepts: a bound on every allocation a peer can cause.
pub const MAX_PAYLOAD: usize = 1 << 20;
/// Output and file data are cut into chunks of at most this size.
pub const CHUNK: usize = 64 * 1024;
/// Frame header size in bytes.
pub const HEADER: usize = 9;

/// Frame kinds. Host->guest kinds are < 0x80, guest->host kinds are >= 0x80.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Host asks the agent to identify itself; payload empty. Answered by `Ready` (id 0).
    Hello = 0x01,
    /// Run a command: payload = argv, each argument followed by one NUL byte.
    Exec = 0x02,
    /// Send a signal to the process group of request `id`: payload = i32 LE signal number.
    Signal = 0x03,
    /// Copy a guest file to the host: payload = path. Answered by `FileData`* then `Exit`.
    GetFile = 0x04,
    /// Create/truncate a guest file: payload = u32 LE mode, then the path. Followed by `PutData`.
    PutFile = 0x05,
    /// Data for a `PutFile` (non-empty) or for the stdin of an `Exec`; empty payload = end.
    PutData = 0x06,
    /// Agent identity: `key=value` lines (protocol, release, uptime).
    Ready = 0x81,
    /// Standard output of request `id`.
    Stdout = 0x82,
    /// Standard error of request `id`.
    Stderr = 0x83,
    /// Request `id` finished: payload = i32 LE; >= 0 exit code, < 0 killed by signal -n.
    Exit = 0x84,
    /// Request `id` failed before it could run: payload = UTF-8 message.
    Error = 0x85,
    /// A chunk of the file requested by `GetFile`.
    FileData = 0x86,
}

impl Kind {
    pub fn from_u8(b: u8) -> Option<Kind> {
        use Kind::*;
        Some(match b {
            0x01 => Hello,
            0x02 => Exec,
            0x03 => Signal,
            0x04 => GetFile,
            0x05 => PutFile,
            0x06 => PutData,
            0x81 => Ready,
            0x82 => Stdout,
            0x83 => Stderr,
            0x84 => Exit,
            0x85 => Error,
            0x86 => FileData,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub kind: Kind,
    pub id: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn new(kind: Kind, id: u32, payload: impl Into<Vec<u8>>) -> Frame {
        Frame {
            kind,
            id,
            payload: payload.into(),
        }
    }

    pub fn exit(id: u32, status: i32) -> Frame {
        Frame::new(Kind::Exit, id, status.to_le_bytes().to_vec())
    }

    /// The i32 carried by `Exit` and `Signal` frames.
    pub fn payload_i32(&self) -> Option<i32> {
        let b: [u8; 4] = self.payload.as_slice().try_into().ok()?;
        Some(i32::from_le_bytes(b))
    }

    /// Serialises the frame; one `write_all` so concurrent writers behind a mutex never interleave.
    pub fn write_to(&self, w: &mut impl Write) -> io::Result<()> {
        assert!(
            self.payload.len() <= MAX_PAYLOAD,
            "frame payload over MAX_PAYLOAD"
        );
        let mut buf = Vec::with_capacity(HEADER + self.payload.len());
        buf.push(self.kind as u8);
        buf.extend_from_slice(&self.id.to_le_bytes());
        buf.extend_from_slice(&(self.payload.len() as u32).to_le_bytes());
        buf.extend_from_slice(&self.payload);
        w.write_all(&buf)?;
        w.flush()
    }

    /// Reads one frame. `Ok(None)` on a clean end of stream before a header.
    pub fn read_from(r: &mut impl Read) -> io::Result<Option<Frame>> {
        let mut hdr = [0u8; HEADER];
        let mut got = 0;
        while got < HEADER {
            match r.read(&mut hdr[got..]) {
                Ok(0) if got == 0 => return Ok(None),
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "stream ended inside a frame header",
                    ))
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let kind = Kind::from_u8(hdr[0])
            .ok_or_else(|| invalid(format!("unknown frame kind 0x{:02x}", hdr[0])))?;
        let id = u32::from_le_bytes(hdr[1..5].try_into().unwrap());
        let len = u32::from_le_bytes(hdr[5..9].try_into().unwrap()) as usize;
        if len > MAX_PAYLOAD {
            return Err(invalid(format!(
                "frame payload of {len} bytes exceeds the {MAX_PAYLOAD}-byte limit"
            )));
        }
        let mut payload = vec![0u8; len];
        r.read_exact(&mut payload)?;
        Ok(Some(Frame { kind, id, payload }))
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Encodes argv for an `Exec` frame.
pub fn encode_argv<S: AsRef<[u8]>>(argv: &[S]) -> Vec<u8> {
    let mut out = Vec::new();
    for a in argv {
        out.extend_from_slice(a.as_ref());
        out.push(0);
    }
    out
}

/// Decodes an `Exec` payload. Arguments must not contain NUL; the list must be non-empty.
pub fn decode_argv(payload: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    if payload.last() != Some(&0) {
        return Err("argv payload must end with a NUL byte".into());
    }
    let argv: Vec<Vec<u8>> = payload[..payload.len() - 1]
        .split(|b| *b == 0)
        .map(|s| s.to_vec())
        .collect();
    if argv[0].is_empty() {
        return Err("empty command name".into());
    }
    Ok(argv)
}

/// Encodes a `PutFile` payload.
pub fn encode_put_file(mode: u32, path: &str) -> Vec<u8> {
    let mut out = mode.to_le_bytes().to_vec();
    out.extend_from_slice(path.as_bytes());
    out
}

/// Decodes a `PutFile` payload into (mode, path).
pub fn decode_put_file(payload: &[u8]) -> Result<(u32, String), String> {
    if payload.len() < 5 {
        return Err("PutFile payload too short".into());
    }
    let mode = u32::from_le_bytes(payload[..4].try_into().unwrap());
    let path = String::from_utf8(payload[4..].to_vec())
        .map_err(|_| "PutFile path is not UTF-8".to_string())?;
    Ok((mode, path))
}

/// Maps an `Exit` status to a shell-style exit code (128+n for signal n).
pub fn exit_code(status: i32) -> i32 {
    if status < 0 {
        128 + (-status)
    } else {
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_roundtrip() {
        let f = Frame::new(Kind::Stdout, 7, b"hello".to_vec());
        let mut buf = Vec::new();
        f.write_to(&mut buf).unwrap();
        assert_eq!(buf.len(), HEADER + 5);
        assert_eq!(&buf[..9], &[0x82, 7, 0, 0, 0, 5, 0, 0, 0]);
        let back = Frame::read_from(&mut buf.as_slice()).unwrap().unwrap();
        assert_eq!(back, f);
    }

    #[test]
    fn eof_and_truncation() {
        assert!(Frame::read_from(&mut [].as_slice()).unwrap().is_none());
        let err = Frame::read_from(&mut [0x82u8, 1, 0].as_slice()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        let err =
            Frame::read_from(&mut [0x82u8, 1, 0, 0, 0, 9, 0, 0, 0, 1].as_slice()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn rejects_unknown_kind_and_oversize() {
        let err = Frame::read_from(&mut [0x42u8, 0, 0, 0, 0, 0, 0, 0, 0].as_slice()).unwrap_err();
        assert!(err.to_string().contains("unknown frame kind 0x42"));
        let mut hdr = vec![0x82u8, 0, 0, 0, 0];
        hdr.extend_from_slice(&((MAX_PAYLOAD as u32) + 1).to_le_bytes());
        let err = Frame::read_from(&mut hdr.as_slice()).unwrap_err();
        assert!(err.to_string().contains("exceeds"));
    }

    #[test]
    fn argv_roundtrip_and_errors() {
        let enc = encode_argv(&["sh", "-c", "exit 7", ""]);
        assert_eq!(
            decode_argv(&enc).unwrap(),
            vec![b"sh".to_vec(), b"-c".to_vec(), b"exit 7".to_vec(), vec![]]
        );
        assert!(decode_argv(b"").is_err());
        assert!(decode_argv(b"sh").is_err());
        assert!(decode_argv(b"\0").is_err());
    }

    #[test]
    fn put_file_and_exit_codes() {
        assert_eq!(
            decode_put_file(&encode_put_file(0o755, "/bin/x")).unwrap(),
            (0o755, "/bin/x".to_string())
        );
        assert!(decode_put_file(&[1, 2, 3]).is_err());
        assert_eq!(exit_code(7), 7);
        assert_eq!(exit_code(-9), 137);
        assert_eq!(Frame::exit(3, -15).payload_i32(), Some(-15));
    }
}
