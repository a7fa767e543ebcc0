//! The memory target's store: a memfd (shared memory that a later user-recovery process can
//! re-attach to), mapped once, allocated on first write. Every queue thread gets a
//! [`MemView`] of the same mapping.
//!
//! First writes cost more than later ones: the kernel hands a process only zeroed pages, so a
//! never-written page is allocated and zeroed inside the copy. Measured with vm-perf (icount
//! clock, 128 KiB writes to a fresh device): 0.42x brd, which allocates without zeroing. The
//! alternatives did not pay: making a write's pages present in one MADV_POPULATE_WRITE call
//! instead of one fault each, 0.42x as well (the zeroing is the cost, not the faults);
//! preallocating the store, 3.7x brd but 5 s at `add` per 256 MiB under TCG; 2 MiB huge pages
//! (anonymous memory), 41 random 4 KiB writes per second while every first touch zeroed 2 MiB.
//! vm-perf therefore measures filled devices (steady state) for every target.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use crate::core::Backing;

#[derive(Debug)]
pub struct SharedMem {
    fd: OwnedFd,
    ptr: *mut u8,
    len: u64,
}

// SAFETY: the mapping lives as long as SharedMem; concurrent access goes through MemView,
// whose byte copies race only where the block layer itself allows overlapping I/O.
unsafe impl Send for SharedMem {}
unsafe impl Sync for SharedMem {}

impl SharedMem {
    /// A private store: an anonymous memfd (gone with the process).
    pub fn new(len: u64) -> Result<SharedMem, String> {
        // SAFETY: plain syscall with a checked result.
        let fd = unsafe { libc::memfd_create(c"ublk-mem".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(format!("memfd_create: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Self::size(&fd, len)?;
        Self::map(fd, len)
    }

    /// A store that outlives the process (user recovery): a new file at `path` (on tmpfs:
    /// memory, like the memfd), which a later process re-attaches with [`SharedMem::open`].
    pub fn create(path: &Path, len: u64) -> Result<SharedMem, String> {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| format!("create the store {}: {e}", path.display()))?;
        let fd = OwnedFd::from(f);
        Self::size(&fd, len)?;
        Self::map(fd, len)
    }

    /// Re-attaches the store a (dead) earlier server created at `path`; it must hold `len` bytes.
    pub fn open(path: &Path, len: u64) -> Result<SharedMem, String> {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| format!("open the store {}: {e}", path.display()))?;
        let have = f.metadata().map_err(|e| e.to_string())?.len();
        if have != len {
            return Err(format!(
                "the store {} holds {have} bytes but the device has {len}: not this device's store",
                path.display()
            ));
        }
        Self::map(OwnedFd::from(f), len)
    }

    fn size(fd: &OwnedFd, len: u64) -> Result<(), String> {
        assert!(len > 0);
        // SAFETY: plain syscall with a checked result.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) } != 0 {
            return Err(format!(
                "sizing the {len}-byte memory store: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(())
    }

    fn map(fd: OwnedFd, len: u64) -> Result<SharedMem, String> {
        // SAFETY: a shared mapping of a file we hold open, checked for failure.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(format!(
                "mapping the {len}-byte memory store: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(SharedMem {
            fd,
            ptr: ptr as *mut u8,
            len,
        })
    }

    pub fn view(&self) -> MemView {
        MemView {
            ptr: self.ptr,
            len: self.len,
        }
    }

    pub fn fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }
}

impl Drop for SharedMem {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping; no MemView outlives the queues that use it.
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.len as usize) };
    }
}

/// A queue thread's handle on the shared store.
#[derive(Clone, Copy)]
pub struct MemView {
    ptr: *mut u8,
    len: u64,
}

// SAFETY: see SharedMem.
unsafe impl Send for MemView {}

impl MemView {
    /// The store's bytes at `offset`, for a syscall that copies straight into or out of them
    /// (USER_COPY's pread/pwrite).
    pub fn span(&self, offset: u64, len: usize) -> *mut u8 {
        assert!(
            offset
                .checked_add(len as u64)
                .is_some_and(|e| e <= self.len),
            "span outside the store"
        );
        // SAFETY: in bounds, checked above.
        unsafe { self.ptr.add(offset as usize) }
    }
}

impl Backing for MemView {
    fn size_bytes(&self) -> u64 {
        self.len
    }
    fn read(&self, offset: u64, dst: &mut [u8]) {
        assert!(
            offset
                .checked_add(dst.len() as u64)
                .is_some_and(|e| e <= self.len),
            "read outside the store"
        );
        // SAFETY: bounds checked above (and validated by the core before that).
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.ptr.add(offset as usize),
                dst.as_mut_ptr(),
                dst.len(),
            )
        }
    }
    fn write(&mut self, offset: u64, src: &[u8]) {
        assert!(
            offset
                .checked_add(src.len() as u64)
                .is_some_and(|e| e <= self.len),
            "write outside the store"
        );
        // SAFETY: bounds checked above.
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr.add(offset as usize), src.len())
        }
    }
    fn zero(&mut self, offset: u64, len: u64) {
        assert!(
            offset.checked_add(len).is_some_and(|e| e <= self.len),
            "zero outside the store"
        );
        // SAFETY: bounds checked above.
        unsafe { std::ptr::write_bytes(self.ptr.add(offset as usize), 0, len as usize) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_store_roundtrip() {
        let m = SharedMem::new(1 << 20).unwrap();
        let mut v = m.view();
        let w = m.view();
        v.write(4096, b"hello");
        let mut out = [0u8; 5];
        w.read(4096, &mut out);
        assert_eq!(&out, b"hello");
        v.zero(4096, 2);
        w.read(4096, &mut out);
        assert_eq!(&out, b"\0\0llo");
        assert_eq!(w.size_bytes(), 1 << 20);
        assert!(m.fd() >= 0);
    }

    #[test]
    fn a_file_store_outlives_its_mapping_and_is_checked_on_reopen() {
        let dir = std::env::temp_dir().join(format!("ublk-mem-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("store");
        let _ = std::fs::remove_file(&path);
        {
            let m = SharedMem::create(&path, 1 << 16).unwrap();
            m.view().write(8192, b"survives");
        } // the first "server" is gone
        assert!(SharedMem::create(&path, 1 << 16)
            .unwrap_err()
            .contains("exists"));
        let again = SharedMem::open(&path, 1 << 16).unwrap();
        let mut out = [0u8; 8];
        again.view().read(8192, &mut out);
        assert_eq!(&out, b"survives");
        let e = SharedMem::open(&path, 1 << 20).unwrap_err();
        assert!(
            e.contains("holds 65536 bytes but the device has 1048576"),
            "{e}"
        );
        let e = SharedMem::open(&dir.join("none"), 1 << 16).unwrap_err();
        assert!(e.contains("open the store"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    #[should_panic(expected = "outside")]
    fn out_of_bounds_is_caught_even_if_the_core_missed_it() {
        let m = SharedMem::new(4096).unwrap();
        m.view().write(4095, b"xy");
    }
}
