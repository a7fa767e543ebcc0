//! The executor side of batched I/O (UBLK_F_BATCH_IO, Linux 7.x): the SQEs of PREP_IO_CMDS,
//! COMMIT_IO_CMDS and the multishot FETCH_IO_CMDS, the provided-buffer ring the kernel writes
//! fetched tags into, and the element lists the commands point at. The decisions (which tags,
//! which results, when a batch is flushed) are the queue core's; this file only encodes them.
//!
//! One queue thread owns one [`BatchIo`]. Its memory stays put until the ring is gone: the
//! kernel reads an element list when it takes the command and writes tags into a buffer
//! whenever it posts a fetch completion.

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use crate::core::Command;
use crate::sys::{self, ublk_batch_io, ublk_elem_header};

/// Provided buffers for fetched tags: the kernel takes one per fetch completion.
const FETCH_BUFS: u16 = 8;
/// The buffer group of the fetch buffers (one ring per queue thread, so one group).
const FETCH_GROUP: u16 = 0;
/// Bytes per element of PREP/COMMIT lists: the header alone (USER_COPY needs no address).
pub const ELEM_BYTES: usize = std::mem::size_of::<ublk_elem_header>();

/// What a completion of the queue's ring belongs to (its user_data's top 32 bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Completion {
    Prep,
    Commit { batch: u32 },
    Fetch,
}

const KIND_PREP: u64 = 1 << 32;
const KIND_COMMIT: u64 = 2 << 32;
const KIND_FETCH: u64 = 3 << 32;

impl Completion {
    fn user_data(self) -> u64 {
        match self {
            Completion::Prep => KIND_PREP,
            Completion::Commit { batch } => KIND_COMMIT | batch as u64,
            Completion::Fetch => KIND_FETCH,
        }
    }

    /// None: not a batch command's completion (a bug: reported by the caller).
    pub fn of(user_data: u64) -> Option<Completion> {
        match user_data & !0xffff_ffff {
            KIND_PREP => Some(Completion::Prep),
            KIND_COMMIT => Some(Completion::Commit {
                batch: user_data as u32,
            }),
            KIND_FETCH => Some(Completion::Fetch),
            _ => None,
        }
    }
}

/// The ring of provided buffers (`io_uring_buf` entries, tail in entry 0's last 2 bytes) and
/// the buffers themselves, `depth` tags each.
struct FetchBuffers {
    /// Dropped after the ring that registered it (see BatchIo).
    ring: crate::io::AnonMap,
    bufs: Vec<u16>,
    per_buf: usize,
    tail: u16,
}

impl FetchBuffers {
    fn new(depth: u16) -> Result<FetchBuffers, String> {
        let ring_len = crate::io::page_size();
        assert!(FETCH_BUFS.is_power_of_two() && FETCH_BUFS as usize * 16 <= ring_len);
        let ring = crate::io::AnonMap::new(ring_len, "the fetch buffer ring")?;
        let per_buf = depth as usize;
        Ok(FetchBuffers {
            ring,
            bufs: vec![0u16; per_buf * FETCH_BUFS as usize],
            per_buf,
            tail: 0,
        })
    }

    /// Gives buffer `bid` (back) to the kernel.
    fn provide(&mut self, bid: u16) {
        assert!(bid < FETCH_BUFS);
        let slot = (self.tail & (FETCH_BUFS - 1)) as usize;
        let addr = self.bufs[bid as usize * self.per_buf..].as_ptr() as u64;
        let len = (self.per_buf * 2) as u32;
        // SAFETY: slot < FETCH_BUFS entries of 16 bytes inside our page; the kernel reads an
        // entry only after the tail (stored below, release) covers it.
        unsafe {
            let e = self.ring.ptr.add(slot * 16);
            std::ptr::write_unaligned(e as *mut u64, addr);
            std::ptr::write_unaligned(e.add(8) as *mut u32, len);
            std::ptr::write_unaligned(e.add(12) as *mut u16, bid);
        }
        self.tail = self.tail.wrapping_add(1);
        // SAFETY: the tail field (bytes 14..16 of the ring) is shared with the kernel.
        let tail = unsafe { &*(self.ring.ptr.add(14) as *const std::sync::atomic::AtomicU16) };
        tail.store(self.tail, std::sync::atomic::Ordering::Release);
    }

    fn tags(&self, bid: u16, bytes: usize) -> &[u16] {
        let n = (bytes / 2).min(self.per_buf);
        &self.bufs[bid as usize * self.per_buf..][..n]
    }
}

/// One queue's batched-I/O state on the executor side.
pub struct BatchIo {
    q_id: u16,
    fetch: FetchBuffers,
    /// Element lists of commands the kernel has not completed yet (kept alive until then).
    lists: Vec<(Completion, Vec<ublk_elem_header>)>,
    spare: Vec<Vec<ublk_elem_header>>,
}

impl BatchIo {
    /// Registers the fetch buffers with `ring` (which must outlive nothing of ours: the queue
    /// drops its ring before this).
    pub fn new(ring: &IoUring, q_id: u16, depth: u16) -> Result<BatchIo, String> {
        let mut fetch = FetchBuffers::new(depth)?;
        // SAFETY: the ring memory lives in `fetch`, which the queue keeps until the ring is gone.
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                fetch.ring.ptr as u64,
                FETCH_BUFS,
                FETCH_GROUP,
                0,
            )
        }
        .map_err(|e| format!("queue {q_id}: registering the fetch buffer ring: {e}"))?;
        for bid in 0..FETCH_BUFS {
            fetch.provide(bid);
        }
        Ok(BatchIo {
            q_id,
            fetch,
            lists: Vec::new(),
            spare: Vec::new(),
        })
    }

    /// The SQEs for `cmds` (Prep and Commit elements, grouped into one command per list).
    pub fn sqes(
        &mut self,
        fd: types::Fixed,
        cmds: &mut Vec<Command>,
        out: &mut Vec<squeue::Entry>,
    ) {
        let mut list: Option<(Completion, Vec<ublk_elem_header>)> = None;
        for c in cmds.drain(..) {
            let (kind, tag, result) = match c {
                Command::Prep { tag } => (Completion::Prep, tag, 0),
                Command::Commit { batch, tag, result } => {
                    (Completion::Commit { batch }, tag, result)
                }
                Command::Fetch { .. } | Command::CommitAndFetch { .. } => {
                    unreachable!("a batch-mode core emits no per-tag command")
                }
            };
            if list.as_ref().is_some_and(|(k, _)| *k != kind) {
                out.push(self.list_sqe(fd, list.take().expect("checked")));
            }
            let (_, elems) =
                list.get_or_insert_with(|| (kind, self.spare.pop().unwrap_or_default()));
            elems.push(ublk_elem_header {
                tag,
                buf_index: 0,
                result,
            });
        }
        if let Some(l) = list {
            out.push(self.list_sqe(fd, l));
        }
    }

    fn list_sqe(
        &mut self,
        fd: types::Fixed,
        (kind, elems): (Completion, Vec<ublk_elem_header>),
    ) -> squeue::Entry {
        assert!(!elems.is_empty() && elems.len() <= u16::MAX as usize);
        let op = match kind {
            Completion::Prep => sys::UBLK_U_IO_PREP_IO_CMDS,
            _ => sys::UBLK_U_IO_COMMIT_IO_CMDS,
        };
        let cmd = ublk_batch_io {
            q_id: self.q_id,
            flags: 0,
            nr_elem: elems.len() as u16,
            elem_bytes: ELEM_BYTES as u8,
            ..Default::default()
        };
        let sqe = opcode::UringCmd16::new(fd, op)
            .cmd(crate::ctrl::as_bytes(&cmd).try_into().expect("16 bytes"))
            .addr(Some(elems.as_ptr() as u64))
            .build()
            .user_data(kind.user_data());
        self.lists.push((kind, elems));
        sqe
    }

    /// The multishot FETCH_IO_CMDS: each completion names the tags that got a request, in one
    /// of the provided buffers.
    pub fn fetch_sqe(&self, fd: types::Fixed) -> squeue::Entry {
        let cmd = ublk_batch_io {
            q_id: self.q_id,
            flags: 0,
            nr_elem: self.fetch.per_buf as u16,
            elem_bytes: 2,
            ..Default::default()
        };
        let sqe = opcode::UringCmd16::new(fd, sys::UBLK_U_IO_FETCH_IO_CMDS)
            .cmd(crate::ctrl::as_bytes(&cmd).try_into().expect("16 bytes"))
            .build()
            .flags(squeue::Flags::BUFFER_SELECT)
            .user_data(Completion::Fetch.user_data());
        with_multishot_group(sqe, FETCH_GROUP)
    }

    /// A list command completed: its list may be reused.
    pub fn list_done(&mut self, kind: Completion) {
        if let Some(at) = self.lists.iter().position(|(k, _)| *k == kind) {
            let (_, mut elems) = self.lists.swap_remove(at);
            elems.clear();
            self.spare.push(elems);
        }
    }

    /// The tags of a fetch completion (`result` bytes in the buffer its flags name) into
    /// `tags`; the buffer goes straight back to the kernel.
    pub fn take_fetched(
        &mut self,
        result: i32,
        flags: u32,
        tags: &mut Vec<u16>,
    ) -> Result<(), String> {
        tags.clear();
        let Some(bid) = cqueue::buffer_select(flags) else {
            return Ok(()); // an end without data: nothing was written
        };
        if bid >= FETCH_BUFS {
            let q = self.q_id;
            return Err(format!(
                "queue {q}: a fetch completion names buffer {bid} of {FETCH_BUFS}"
            ));
        }
        tags.extend_from_slice(self.fetch.tags(bid, result.max(0) as usize));
        self.fetch.provide(bid);
        Ok(())
    }
}

/// Sets what `opcode::UringCmd16` has no builder for: `uring_cmd_flags` (MULTISHOT, at byte
/// 28 of the SQE) and `buf_group` (byte 40).
fn with_multishot_group(sqe: squeue::Entry, group: u16) -> squeue::Entry {
    const _: () = assert!(std::mem::size_of::<squeue::Entry>() == 64);
    // SAFETY: `squeue::Entry` is `#[repr(C)]` around the 64-byte `io_uring_sqe`; any bytes
    // form a valid one, and only the two fields are changed.
    let mut raw: [u8; 64] = unsafe { std::mem::transmute(sqe) };
    let flags = u32::from_ne_bytes(raw[28..32].try_into().expect("4 bytes"));
    raw[28..32].copy_from_slice(&(flags | sys::IORING_URING_CMD_MULTISHOT).to_ne_bytes());
    raw[40..42].copy_from_slice(&group.to_ne_bytes());
    // SAFETY: as above.
    unsafe { std::mem::transmute::<[u8; 64], squeue::Entry>(raw) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(sqe: &squeue::Entry) -> [u8; 64] {
        // SAFETY: see with_multishot_group.
        unsafe { std::mem::transmute_copy(sqe) }
    }

    #[test]
    fn user_data_round_trips() {
        for c in [
            Completion::Prep,
            Completion::Fetch,
            Completion::Commit { batch: 0 },
            Completion::Commit { batch: u32::MAX },
        ] {
            assert_eq!(Completion::of(c.user_data()), Some(c));
        }
        assert_eq!(
            Completion::of(7),
            None,
            "a per-tag user_data is no batch completion"
        );
    }

    /// The fetch SQE as the kernel reads it: URING_CMD on fixed file 0, BUFFER_SELECT from
    /// group 0, MULTISHOT, FETCH_IO_CMDS with 2-byte elements for this queue.
    #[test]
    fn the_fetch_sqe_is_multishot_with_a_buffer_group() {
        let sqe = with_multishot_group(
            opcode::UringCmd16::new(types::Fixed(0), sys::UBLK_U_IO_FETCH_IO_CMDS)
                .cmd(
                    crate::ctrl::as_bytes(&ublk_batch_io {
                        q_id: 3,
                        nr_elem: 64,
                        elem_bytes: 2,
                        ..Default::default()
                    })
                    .try_into()
                    .unwrap(),
                )
                .build()
                .flags(squeue::Flags::BUFFER_SELECT),
            5,
        );
        let b = raw(&sqe);
        assert_eq!(b[0], 46, "IORING_OP_URING_CMD");
        let (fixed, select) = (1 << 0, 1 << 5); // IOSQE_FIXED_FILE, IOSQE_BUFFER_SELECT
        assert_eq!(b[1], select | fixed);
        assert_eq!(
            u32::from_ne_bytes(b[8..12].try_into().unwrap()),
            sys::UBLK_U_IO_FETCH_IO_CMDS
        );
        assert_eq!(
            u32::from_ne_bytes(b[28..32].try_into().unwrap()),
            sys::IORING_URING_CMD_MULTISHOT
        );
        assert_eq!(u16::from_ne_bytes(b[40..42].try_into().unwrap()), 5);
        assert_eq!(u16::from_ne_bytes(b[48..50].try_into().unwrap()), 3, "q_id");
        assert_eq!(b[54], 2, "elem_bytes");
    }

    /// Consecutive elements of one kind share a command; a change of batch starts another.
    #[test]
    fn lists_group_consecutive_elements() {
        let ring = IoUring::new(8).unwrap();
        let Ok(mut b) = BatchIo::new(&ring, 0, 4) else {
            return; // a host kernel without buffer rings (< 5.19): nothing to check here
        };
        let mut cmds = vec![
            Command::Prep { tag: 0 },
            Command::Prep { tag: 1 },
            Command::Commit {
                batch: 4,
                tag: 1,
                result: 4096,
            },
            Command::Commit {
                batch: 4,
                tag: 0,
                result: -5,
            },
            Command::Commit {
                batch: 5,
                tag: 2,
                result: 0,
            },
        ];
        let mut out = Vec::new();
        b.sqes(types::Fixed(0), &mut cmds, &mut out);
        assert!(cmds.is_empty());
        let kinds: Vec<Option<Completion>> = out
            .iter()
            .map(|e| Completion::of(e.get_user_data()))
            .collect();
        assert_eq!(
            kinds,
            [
                Some(Completion::Prep),
                Some(Completion::Commit { batch: 4 }),
                Some(Completion::Commit { batch: 5 })
            ]
        );
        let second = raw(&out[1]);
        assert_eq!(
            u16::from_ne_bytes(second[52..54].try_into().unwrap()),
            2,
            "nr_elem"
        );
        assert_eq!(second[54] as usize, ELEM_BYTES);
        let list = &b.lists[1].1;
        assert_eq!((list[1].tag, list[1].result), (0, -5));
        assert_eq!(
            u64::from_ne_bytes(second[16..24].try_into().unwrap()),
            list.as_ptr() as u64
        );
        b.list_done(Completion::Commit { batch: 4 });
        assert_eq!((b.lists.len(), b.spare.len()), (2, 1));
    }

    /// A fetch completion's tags come out of the buffer its flags name, and the buffer goes
    /// back to the kernel; a completion without a buffer has none; a buffer id beyond the ring
    /// is an error, not an index.
    #[test]
    fn fetched_tags_come_from_the_named_buffer() {
        let ring = IoUring::new(8).unwrap();
        let Ok(mut b) = BatchIo::new(&ring, 0, 4) else {
            return; // a host kernel without buffer rings (< 5.19): nothing to check here
        };
        let tail = b.fetch.tail;
        b.fetch.bufs[3 * 4..3 * 4 + 3].copy_from_slice(&[2, 0, 3]);
        let with_buffer = |bid: u32| 1 | bid << 16; // IORING_CQE_F_BUFFER, the id above it
        let mut tags = Vec::new();
        b.take_fetched(6, with_buffer(3), &mut tags).unwrap();
        assert_eq!(tags, [2, 0, 3]);
        assert_eq!(
            b.fetch.tail,
            tail.wrapping_add(1),
            "the buffer was given back"
        );
        b.take_fetched(-105, 0, &mut tags).unwrap();
        assert!(tags.is_empty());
        let e = b.take_fetched(2, with_buffer(9), &mut tags).unwrap_err();
        assert!(e.contains("buffer 9 of 8"), "{e}");
        // More bytes than a buffer holds are cut at its size.
        b.take_fetched(4096, with_buffer(1), &mut tags).unwrap();
        assert_eq!(tags.len(), 4);
    }
}
