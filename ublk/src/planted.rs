//! Planted bugs: test-only switches that reintroduce each bug class the predecessor shipped,
//! so the simulator can prove it catches them. Compiled to constant `false` unless the
//! `planted-bugs` feature is on (only the simulator enables it; the guest build of the
//! daemon never does). The switch is per thread, so parallel tests do not interfere.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Bug {
    None = 0,
    /// The bring-up sends START_DEV before the queues submitted their FETCH_REQs.
    StartBeforeFetch = 1,
    /// Data of the second and later segments of a request goes to the wrong offset.
    SegmentOffset = 2,
    /// A tag gets a new FETCH_REQ while its COMMIT_AND_FETCH_REQ is still outstanding.
    TagReuse = 3,
    /// Every 97th request is never committed (a lost completion).
    LostCompletion = 4,
    /// Once shutdown starts, requests are dropped instead of committed: STOP_DEV waits forever.
    ShutdownNoCommit = 5,
    /// The device-wide in-flight counter is updated with a split load/store across events.
    RacyInflight = 6,
    /// A recovering server fetches every tag twice: the second FETCH_REQ hits tags the kernel
    /// still holds.
    RecoveryRefetch = 7,
    /// A recovering server takes each tag's first write for a replay of one its predecessor
    /// already stored, and acknowledges it without storing it.
    ReplayAck = 8,
    /// END_USER_RECOVERY is sent before the new server fetched its tags.
    EarlyEndRecovery = 9,
    /// A READ is served from one 4 KiB block further on and committed with a result 4 KiB
    /// larger than the request (a server that mapped the wrong descriptor: with buffer copy the
    /// kernel warns in `ublk_unmap_io`, and the data read back is wrong).
    OversizeCommit = 10,
    /// Batch mode: the commit list is reset when its COMMIT_IO_CMDS completes instead of when
    /// it is submitted, so a batch flushed before that completion carries the previous one's
    /// elements again (tags the server no longer holds, or already holds for a new request).
    StaleCommit = 11,
}

impl Bug {
    pub const ALL: [Bug; 11] = [
        Bug::StartBeforeFetch,
        Bug::SegmentOffset,
        Bug::TagReuse,
        Bug::LostCompletion,
        Bug::ShutdownNoCommit,
        Bug::RacyInflight,
        Bug::RecoveryRefetch,
        Bug::ReplayAck,
        Bug::EarlyEndRecovery,
        Bug::OversizeCommit,
        Bug::StaleCommit,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Bug::None => "none",
            Bug::StartBeforeFetch => "start-before-fetch",
            Bug::SegmentOffset => "segment-offset",
            Bug::TagReuse => "tag-reuse",
            Bug::LostCompletion => "lost-completion",
            Bug::ShutdownNoCommit => "shutdown-no-commit",
            Bug::RacyInflight => "racy-inflight",
            Bug::RecoveryRefetch => "recovery-refetch",
            Bug::ReplayAck => "replay-ack",
            Bug::EarlyEndRecovery => "early-end-recovery",
            Bug::OversizeCommit => "oversize-commit",
            Bug::StaleCommit => "stale-commit",
        }
    }

    pub fn parse(s: &str) -> Option<Bug> {
        Bug::ALL
            .into_iter()
            .chain([Bug::None])
            .find(|b| b.name() == s)
    }
}

#[cfg(feature = "planted-bugs")]
thread_local! {
    static ACTIVE: std::cell::Cell<Bug> = const { std::cell::Cell::new(Bug::None) };
}

/// Is `bug` planted (on this thread)? Always false without the feature.
#[inline(always)]
pub fn active(bug: Bug) -> bool {
    #[cfg(feature = "planted-bugs")]
    {
        ACTIVE.with(|a| a.get() == bug)
    }
    #[cfg(not(feature = "planted-bugs"))]
    {
        let _ = bug;
        false
    }
}

/// Plants `bug` on this thread (Bug::None removes it).
#[cfg(feature = "planted-bugs")]
pub fn plant(bug: Bug) {
    ACTIVE.with(|a| a.set(bug));
}

/// Plants the bug named by `UBLK_MEM_PLANT` on this thread: how a test builds a misbehaving
/// ublk-mem (`--features planted-bugs`) to prove the platform catches a server that corrupts
/// data. Without the feature there is nothing to plant and the variable means nothing.
pub fn plant_from_env() {
    #[cfg(feature = "planted-bugs")]
    if let Some(bug) = std::env::var("UBLK_MEM_PLANT")
        .ok()
        .and_then(|s| Bug::parse(&s))
    {
        plant(bug);
    }
}

/// What a test build prints before the device path of a plain (`add` without `--json`) ready
/// line, from `UBLK_MEM_READY_PREFIX`: dressed up as a third-party server's
/// (`Device created: /dev/ublkb0`), so tests prove profiles read such lines with no wrapper.
/// Empty without the feature.
pub fn ready_prefix() -> String {
    #[cfg(feature = "planted-bugs")]
    if let Ok(p) = std::env::var("UBLK_MEM_READY_PREFIX") {
        return p.chars().filter(|c| !c.is_control()).take(200).collect();
    }
    String::new()
}
