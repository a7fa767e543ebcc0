//! The one bounded wait on an io_uring, shared by the control ring, the queue threads and
//! blkio: submit what is queued and wait for at least one completion, at most `limit`.

use std::time::Duration;

use io_uring::{types, Submitter};

/// Submits and waits up to `limit` for a completion. Running out of time (ETIME) or a signal
/// (EINTR) is not an error: the caller looks at the completion queue and its own deadline.
pub fn enter_bounded(submitter: &Submitter<'_>, limit: Duration) -> std::io::Result<()> {
    enter_for(submitter, 1, limit).map(drop)
}

/// Submits and waits up to `limit` until `want` completions are there (fewer when the limit
/// runs out first: then `Ok(true)`, as for a signal).
pub fn enter_for(submitter: &Submitter<'_>, want: usize, limit: Duration) -> std::io::Result<bool> {
    assert!(want >= 1);
    let ts = types::Timespec::new()
        .sec(limit.as_secs())
        .nsec(limit.subsec_nanos());
    match submitter.submit_with_args(want, &types::SubmitArgs::new().timespec(&ts)) {
        Ok(_) => Ok(false),
        Err(e)
            if e.raw_os_error() == Some(libc::ETIME) || e.raw_os_error() == Some(libc::EINTR) =>
        {
            Ok(true)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_ring_returns_after_the_limit() {
        let ring = io_uring::IoUring::new(4).unwrap();
        let t = std::time::Instant::now();
        enter_bounded(&ring.submitter(), Duration::from_millis(50)).unwrap();
        let took = t.elapsed();
        assert!(
            took >= Duration::from_millis(40) && took < Duration::from_secs(2),
            "{took:?}"
        );
    }
}
