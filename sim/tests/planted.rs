//! Every planted bug class is caught, by the check meant for it, within 10k schedules; with
//! nothing planted, schedules run clean. (Long-mode: `cargo xtask sim explore --seeds 100000`.)

use sim::explore::{self, Spec};
use sim::sched::Kind;
use ublk::core::IoMode;
use ublk::planted::{self, Bug};

/// (schedules needed, check that fired) for `bug` under `scheduler`.
fn hunt(bug: Bug, scheduler: Kind) -> (u64, String) {
    hunt_in(bug, scheduler, 0)
}

/// The same, with the server crashing (and recovered) up to `crashes` times per schedule.
fn hunt_in(bug: Bug, scheduler: Kind, crashes: u32) -> (u64, String) {
    hunt_spec(
        bug,
        Spec {
            scheduler,
            crashes,
            ..Spec::default()
        },
    )
}

fn hunt_spec(bug: Bug, spec: Spec) -> (u64, String) {
    planted::plant(bug);
    let spec = Spec {
        plant: Some(bug.name().into()),
        ..spec
    };
    for seed in 1..=10_000u64 {
        if let Err(f) = explore::run_seed(&spec, seed) {
            planted::plant(Bug::None);
            // The failure reproduces exactly from its seed, and shrinking keeps the same check.
            planted::plant(bug);
            let again = explore::run_seed(&spec, seed).unwrap_err();
            assert_eq!(again.violation, f.violation, "{bug:?}: not deterministic");
            let small = explore::shrink(&spec, &f);
            assert_eq!(small.violation.kind(), f.violation.kind());
            assert!(small.requests <= f.requests);
            assert!(explore::repro(&spec, &small).contains(&format!("--plant {}", bug.name())));
            planted::plant(Bug::None);
            return (seed, f.violation.kind().to_string());
        }
    }
    planted::plant(Bug::None);
    panic!("{bug:?} was not caught in 10000 schedules");
}

#[test]
fn start_before_fetch_is_a_start_order_failure() {
    assert_eq!(hunt(Bug::StartBeforeFetch, Kind::Random).1, "start-order");
}

#[test]
fn wrong_segment_offset_is_a_data_failure() {
    assert_eq!(hunt(Bug::SegmentOffset, Kind::Random).1, "data");
}

#[test]
fn tag_reuse_is_a_protocol_failure() {
    assert_eq!(hunt(Bug::TagReuse, Kind::Random).1, "protocol");
}

#[test]
fn lost_completion_is_a_liveness_failure() {
    assert_eq!(hunt(Bug::LostCompletion, Kind::Random).1, "liveness");
}

#[test]
fn shutdown_waiting_for_a_commit_is_a_liveness_failure() {
    assert_eq!(hunt(Bug::ShutdownNoCommit, Kind::Pct(3)).1, "liveness");
}

#[test]
fn unsynchronised_inflight_counter_is_a_counter_failure() {
    assert_eq!(hunt(Bug::RacyInflight, Kind::Pct(3)).1, "counter");
}

#[test]
fn recovery_refetching_a_held_tag_is_a_protocol_failure() {
    assert_eq!(hunt_in(Bug::RecoveryRefetch, Kind::Random, 2).1, "protocol");
}

#[test]
fn acknowledging_a_reissued_write_unstored_is_a_data_failure() {
    assert_eq!(hunt_in(Bug::ReplayAck, Kind::Random, 2).1, "data");
}

#[test]
fn ending_recovery_before_the_fetches_is_a_start_order_failure() {
    assert_eq!(
        hunt_in(Bug::EarlyEndRecovery, Kind::Random, 2).1,
        "start-order"
    );
}

/// The batch bug: a commit list sent again while it is in flight commits tags that are not
/// the server's (or completes a new request with an old result).
#[test]
fn a_stale_batch_commit_is_caught() {
    let spec = Spec {
        mode: IoMode::Batch,
        ..Spec::default()
    };
    let (seeds, check) = hunt_spec(Bug::StaleCommit, spec);
    assert!(check == "protocol" || check == "data", "{check}");
    assert!(seeds <= 10_000);
}

/// Per-tag bugs that live in the queue core are caught in batch mode too.
#[test]
fn batch_mode_catches_the_core_bugs() {
    let batch = |scheduler| Spec {
        mode: IoMode::Batch,
        scheduler,
        ..Spec::default()
    };
    assert_eq!(hunt_spec(Bug::SegmentOffset, batch(Kind::Random)).1, "data");
    assert_eq!(
        hunt_spec(Bug::LostCompletion, batch(Kind::Random)).1,
        "liveness"
    );
    assert_eq!(
        hunt_spec(Bug::RacyInflight, batch(Kind::Pct(3))).1,
        "counter"
    );
    assert_eq!(
        hunt_spec(Bug::StartBeforeFetch, batch(Kind::Random)).1,
        "start-order"
    );
}

#[test]
fn without_planted_bugs_schedules_are_clean() {
    for (scheduler, crashes, mode) in [
        (Kind::Random, 0, IoMode::PerTag),
        (Kind::Pct(3), 0, IoMode::PerTag),
        (Kind::Random, 2, IoMode::PerTag),
        (Kind::Pct(3), 2, IoMode::PerTag),
        (Kind::Random, 0, IoMode::Batch),
        (Kind::Pct(3), 0, IoMode::Batch),
        (Kind::Random, 2, IoMode::Batch),
        (Kind::Pct(3), 2, IoMode::Batch),
    ] {
        let spec = Spec {
            scheduler,
            crashes,
            mode,
            ..Spec::default()
        };
        for seed in 1..=150u64 {
            if let Err(f) = explore::run_seed(&spec, seed) {
                panic!(
                    "{scheduler:?} {mode:?} seed {seed}: {} check: {}",
                    f.violation.kind(),
                    f.violation.message()
                );
            }
        }
    }
}

#[test]
fn recorded_trace_fixture_replays_clean() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let mut texts = Vec::new();
    for q in 0..2 {
        let p = dir.join(format!("scattered-writes.trace.q{q}"));
        texts.push((
            p.display().to_string(),
            std::fs::read_to_string(&p).unwrap(),
        ));
    }
    let r = sim::workload::from_traces(&texts).unwrap();
    assert!(
        r.requests.len() >= 500,
        "fixture too small: {}",
        r.requests.len()
    );
    assert!(
        r.requests.iter().all(|q| q.expect_result.is_some()),
        "every traced request had a commit"
    );
    for seed in 0..20 {
        let cfg = sim::world::Config {
            queues: r.queues,
            depth: r.depth,
            dev_sectors: r.dev_sectors,
            max_io_bytes: r.max_io_bytes,
            seed,
            crashes: 0,
            mode: ublk::core::IoMode::PerTag,
        };
        explore::run(cfg, r.requests.clone(), Kind::Random, seed)
            .unwrap_or_else(|v| panic!("schedule {seed}: {}: {}", v.kind(), v.message()));
    }
}
