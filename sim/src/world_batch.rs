//! The kernel side of batched I/O (UBLK_F_BATCH_IO) in the simulated world: PREP_IO_CMDS and
//! COMMIT_IO_CMDS taken element by element, dispatched tags queued in a FIFO until the kernel
//! posts them in one completion of the queue's multishot FETCH_IO_CMDS, and that fetch ended
//! with -ENODEV once the stopped device holds no request. The per-tag model's checks apply to
//! every element: a PREP for a tag the kernel already has, a COMMIT for a tag that is not the
//! server's, a request completed twice.

use std::collections::VecDeque;

use ublk::core::Command;
use ublk::sys;

use super::{Event, NoObserver, Violation, World};

/// A list command the server submitted and the kernel has not taken yet.
#[derive(Clone, Debug)]
enum List {
    Prep(Vec<u16>),
    Commit(u32, Vec<(u16, i32)>),
}

/// One queue's batched commands as the kernel sees them.
#[derive(Clone, Debug, Default)]
pub(super) struct BQueue {
    lists: VecDeque<List>,
    /// Tags that got a request and wait for the next fetch completion (the kernel's FIFO).
    pub(super) fifo: VecDeque<u16>,
    /// Fetch completions posted and not yet handled by the server (None: the abort).
    fetched: VecDeque<Option<Vec<u16>>>,
    /// COMMIT_IO_CMDS completions posted and not yet handled: (batch, result).
    committed: VecDeque<(u32, i32)>,
    /// The server's multishot fetch is armed (it ends only with the abort here).
    pub(super) fetch_armed: bool,
}

/// Bytes per PREP/COMMIT element (the header alone: no buffer address with USER_COPY).
const ELEM_BYTES: i32 = 8;

impl World {
    pub(super) fn enabled_batch(&self, out: &mut Vec<Event>) {
        let none_held = self.ktags.iter().flatten().all(|k| k.req.is_none());
        for (q, b) in self.bq.iter().enumerate() {
            let q = q as u16;
            if !b.lists.is_empty() {
                out.push(Event::BatchKernel(q));
            }
            let abort = self.stopping && none_held && b.fifo.is_empty();
            if b.fetch_armed && (!b.fifo.is_empty() || abort) {
                out.push(Event::Post(q));
            }
            if !b.fetched.is_empty() {
                out.push(Event::Fetched(q));
            }
            if !b.committed.is_empty() {
                out.push(Event::Committed(q));
            }
        }
    }

    /// The server's batch commands go into the kernel's inbox of queue `q`, one list per
    /// command (consecutive elements of one kind and batch).
    pub(super) fn submit_batch(&mut self, q: u16) {
        let b = &mut self.bq[q as usize];
        for c in self.cmds.drain(..) {
            match (c, b.lists.back_mut()) {
                (Command::Prep { tag }, Some(List::Prep(tags))) => tags.push(tag),
                (Command::Prep { tag }, _) => b.lists.push_back(List::Prep(vec![tag])),
                (Command::Commit { batch, tag, result }, Some(List::Commit(n, elems)))
                    if *n == batch =>
                {
                    elems.push((tag, result))
                }
                (Command::Commit { batch, tag, result }, _) => {
                    b.lists.push_back(List::Commit(batch, vec![(tag, result)]))
                }
                (other, _) => unreachable!("a batch-mode core emitted {other:?}"),
            }
        }
    }

    /// The kernel takes `q`'s oldest list: a PREP makes its tags ready, a COMMIT completes
    /// each element's request (the tag is ready again at once) and posts its completion.
    pub(super) fn batch_kernel(&mut self, q: u16) -> Result<(), Violation> {
        let list = self.bq[q as usize]
            .lists
            .pop_front()
            .expect("enabled with a list");
        match list {
            List::Prep(tags) => {
                for t in tags {
                    let k = &mut self.ktags[q as usize][t as usize];
                    if k.armed || k.req.is_some() {
                        return Err(Violation::Protocol(format!("queue {q} tag {t}: PREP_IO_CMDS for a tag the kernel already has (armed {}, request {:?})", k.armed, k.req)));
                    }
                    k.armed = true;
                }
                Ok(())
            }
            List::Commit(batch, elems) => {
                let n = elems.len() as i32;
                for (t, result) in elems {
                    let k = &mut self.ktags[q as usize][t as usize];
                    let Some(r) = k.req.filter(|_| k.posted) else {
                        return Err(Violation::Protocol(format!("queue {q} tag {t}: COMMIT_IO_CMDS (batch {batch}) for a tag that is not the server's (request {:?}, posted {}): the kernel refuses it and the rest of the batch", k.req, k.posted)));
                    };
                    k.req = None;
                    k.posted = false;
                    k.armed = true;
                    self.complete(r, q, t, result)?;
                }
                self.bq[q as usize]
                    .committed
                    .push_back((batch, n * ELEM_BYTES));
                Ok(())
            }
        }
    }

    /// The kernel posts a fetch completion: every tag in the FIFO (the server owns them from
    /// now on), or the fetch's end with -ENODEV once the stopped device holds no request.
    pub(super) fn post(&mut self, q: u16) {
        let b = &mut self.bq[q as usize];
        if b.fifo.is_empty() {
            b.fetch_armed = false;
            b.fetched.push_back(None);
            return;
        }
        let tags: Vec<u16> = b.fifo.drain(..).collect();
        for &t in &tags {
            self.ktags[q as usize][t as usize].posted = true;
        }
        b.fetched.push_back(Some(tags));
    }

    /// The server handles `q`'s oldest fetch completion, then flushes its commits.
    pub(super) fn fetched(&mut self, q: u16) -> Result<(), Violation> {
        let posted = self.bq[q as usize]
            .fetched
            .pop_front()
            .expect("enabled with one");
        self.cmds.clear();
        match posted {
            None => {
                let core = self.cores[q as usize].as_mut().expect("the queue exists");
                core.on_fetch_end(sys::UBLK_IO_RES_ABORT, &mut NoObserver);
                for k in self.ktags[q as usize].iter_mut() {
                    k.aborted = true;
                    k.armed = false;
                }
            }
            Some(tags) => {
                for t in tags {
                    self.serve_tag(q, t, sys::UBLK_IO_RES_OK)?;
                }
            }
        }
        let core = self.cores[q as usize].as_mut().expect("the queue exists");
        core.flush(&mut self.cmds);
        self.submit_batch(q);
        self.finish_if_all_aborted()
    }

    /// The server handles `q`'s oldest COMMIT_IO_CMDS completion, then flushes.
    pub(super) fn committed(&mut self, q: u16) -> Result<(), Violation> {
        let (batch, result) = self.bq[q as usize]
            .committed
            .pop_front()
            .expect("enabled with one");
        let Some(core) = self.cores[q as usize].as_mut() else {
            return Ok(()); // the server died; its completions with it
        };
        core.on_commit_done(batch, result, ELEM_BYTES as usize)
            .map_err(|e| Violation::Core(e.to_string()))?;
        self.cmds.clear();
        core.flush(&mut self.cmds);
        self.submit_batch(q);
        Ok(())
    }
}
