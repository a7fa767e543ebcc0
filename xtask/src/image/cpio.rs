//! newc ("070701") cpio writer for initramfs archives.
//!
//! Output is deterministic (mtime 0, uid/gid 0, inode numbers in write order) so identical
//! inputs give byte-identical archives and stable image hashes. Parent directories are
//! created on demand. Several archives may be concatenated; the kernel unpacks them in order.

use std::collections::BTreeSet;
use std::io::{self, Write};

const MAGIC: &str = "070701";
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;

pub struct CpioWriter<W: Write> {
    out: W,
    offset: u64,
    next_ino: u32,
    dirs: BTreeSet<String>,
}

impl<W: Write> CpioWriter<W> {
    pub fn new(out: W) -> Self {
        CpioWriter {
            out,
            offset: 0,
            next_ino: 1,
            dirs: BTreeSet::new(),
        }
    }

    pub fn dir(&mut self, path: &str, perm: u32) -> io::Result<()> {
        let path = clean(path)?;
        if self.dirs.contains(&path) {
            return Ok(());
        }
        self.parents(&path)?;
        self.dirs.insert(path.clone());
        self.entry(&path, S_IFDIR | (perm & 0o7777), 2, &[])
    }

    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        let path = clean(path)?;
        self.parents(&path)?;
        self.entry(&path, S_IFREG | (perm & 0o7777), 1, data)
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        let path = clean(path)?;
        self.parents(&path)?;
        self.entry(&path, S_IFLNK | 0o777, 1, target.as_bytes())
    }

    /// Writes the trailer, pads to 512 bytes, and returns the sink.
    pub fn finish(mut self) -> io::Result<W> {
        self.entry("TRAILER!!!", 0, 1, &[])?;
        let pad = (512 - (self.offset % 512) as usize) % 512;
        self.out.write_all(&vec![0u8; pad])?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn parents(&mut self, path: &str) -> io::Result<()> {
        if let Some((parent, _)) = path.rsplit_once('/') {
            if !self.dirs.contains(parent) {
                self.dir(parent, 0o755)?;
            }
        }
        Ok(())
    }

    fn entry(&mut self, name: &str, mode: u32, nlink: u32, data: &[u8]) -> io::Result<()> {
        let size = u32::try_from(data.len()).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("{name}: over 4 GiB"))
        })?;
        let ino = if name == "TRAILER!!!" {
            0
        } else {
            self.next_ino
        };
        self.next_ino += 1;
        let namesize = name.len() as u32 + 1;
        let header = format!(
            "{MAGIC}{ino:08x}{mode:08x}{:08x}{:08x}{nlink:08x}{:08x}{size:08x}{:08x}{:08x}{:08x}{:08x}{namesize:08x}{:08x}",
            0, 0, 0, 0, 0, 0, 0, 0
        );
        debug_assert_eq!(header.len(), 110);
        self.put(header.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.align()?;
        self.put(data)?;
        self.align()
    }

    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.out.write_all(b)?;
        self.offset += b.len() as u64;
        Ok(())
    }

    fn align(&mut self) -> io::Result<()> {
        let pad = (4 - (self.offset % 4) as usize) % 4;
        self.put(&[0u8; 3][..pad])
    }
}

/// Archive paths are relative, '/'-separated, without `.` or `..` components.
fn clean(path: &str) -> io::Result<String> {
    let p = path.trim_start_matches('/').trim_end_matches('/');
    if p.is_empty() || p.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad archive path {path:?}"),
        ));
    }
    Ok(p.to_string())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// (name, mode, data) of every entry, parsed the way the kernel's initramfs unpacker does.
    pub fn parse(mut b: &[u8]) -> Vec<(String, u32, Vec<u8>)> {
        let mut out = Vec::new();
        let total = b.len();
        loop {
            while b.first() == Some(&0)
                && (total - b.len()).is_multiple_of(4)
                && !b.starts_with(MAGIC.as_bytes())
            {
                b = &b[4.min(b.len())..];
            }
            if b.is_empty() {
                return out;
            }
            assert!(
                b.starts_with(MAGIC.as_bytes()),
                "bad magic at offset {}",
                total - b.len()
            );
            let field = |i: usize| {
                u32::from_str_radix(std::str::from_utf8(&b[6 + 8 * i..14 + 8 * i]).unwrap(), 16)
                    .unwrap()
            };
            let (mode, size, namesize) = (field(1), field(6) as usize, field(11) as usize);
            let name = std::str::from_utf8(&b[110..110 + namesize - 1])
                .unwrap()
                .to_string();
            assert_eq!(b[110 + namesize - 1], 0);
            let data_start = (110 + namesize).div_ceil(4) * 4;
            let data = b[data_start..data_start + size].to_vec();
            let next = (data_start + size).div_ceil(4) * 4;
            b = &b[next.min(b.len())..];
            if name != "TRAILER!!!" {
                out.push((name, mode, data));
            }
        }
    }

    #[test]
    fn writes_parsable_newc_with_parents() {
        let mut w = CpioWriter::new(Vec::new());
        w.file("/bin/busybox", 0o755, b"ELF...").unwrap();
        w.symlink("bin/sh", "busybox").unwrap();
        w.dir("lib/modules/6.12", 0o755).unwrap();
        w.file("init", 0o755, b"#!/bin/sh\n").unwrap();
        let bytes = w.finish().unwrap();
        assert_eq!(bytes.len() % 512, 0);
        assert!(bytes.starts_with(b"070701"));
        let entries = parse(&bytes);
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "bin",
                "bin/busybox",
                "bin/sh",
                "lib",
                "lib/modules",
                "lib/modules/6.12",
                "init"
            ]
        );
        assert_eq!(
            entries[1],
            ("bin/busybox".into(), 0o100755, b"ELF...".to_vec())
        );
        assert_eq!(entries[2], ("bin/sh".into(), 0o120777, b"busybox".to_vec()));
        assert_eq!(entries[0].1, 0o040755);
    }

    #[test]
    fn alignment_holds_for_every_name_and_data_length() {
        for n in 1..9 {
            for d in 0..9 {
                let name = "x".repeat(n);
                let mut w = CpioWriter::new(Vec::new());
                w.file(&name, 0o644, &vec![7u8; d]).unwrap();
                w.file("tail", 0o644, b"t").unwrap();
                let entries = parse(&w.finish().unwrap());
                assert_eq!(
                    entries,
                    vec![
                        (name, 0o100644, vec![7u8; d]),
                        ("tail".into(), 0o100644, b"t".to_vec())
                    ]
                );
            }
        }
    }

    #[test]
    fn deterministic_and_concatenable() {
        let build = || {
            let mut w = CpioWriter::new(Vec::new());
            w.file("a/b", 0o600, b"hello").unwrap();
            w.finish().unwrap()
        };
        assert_eq!(build(), build());
        let mut two = build();
        let mut w = CpioWriter::new(Vec::new());
        w.file("c", 0o644, b"second").unwrap();
        two.extend(w.finish().unwrap());
        let names: Vec<String> = parse(&two).into_iter().map(|e| e.0).collect();
        assert_eq!(names, ["a", "a/b", "c"]);
    }

    #[test]
    fn rejects_bad_paths() {
        let mut w = CpioWriter::new(Vec::new());
        for bad in ["", "/", "a/../b", "a//b", "./a"] {
            assert!(w.file(bad, 0o644, b"").is_err(), "{bad:?} accepted");
        }
    }
}
