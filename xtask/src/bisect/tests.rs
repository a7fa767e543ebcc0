//! The decision rule's properties, on synthetic histories (no git).

use super::bench::{self, Cell, Policy, Setup};
use super::evidence::{Evidence, Run};
use super::model::{Counts, Model};
use super::policy::{decide, Decision, Limits, WARMUP_FAILURES};
use super::signature::{self, Want};

fn limits(jobs: usize) -> Limits {
    Limits {
        confidence: 0.95,
        max_runs_per_commit: 1000,
        jobs,
    }
}

/// Drives `decide` with `test(i) -> failed` until a verdict; returns it and the runs used.
fn drive(n: usize, jobs: usize, mut test: impl FnMut(usize) -> bool) -> (Decision, u32) {
    let model = Model::new(n);
    let mut c = Counts::new(n);
    for _ in 0..2000 {
        match decide(&model, &c, limits(jobs), |_| true) {
            Decision::Test(batch) => batch.into_iter().for_each(|i| c.observe(i, test(i))),
            end => return (end, c.total_runs()),
        }
    }
    panic!("no verdict in 2000 rounds: {c:?}");
}

#[test]
fn a_deterministic_failure_is_found_in_about_as_many_runs_as_plain_bisect() {
    let (end, runs) = drive(64, 1, |i| i >= 40);
    assert!(
        matches!(end, Decision::Culprit(40, p) if p >= 0.95),
        "{end:?}"
    );
    assert!(runs < 30, "{runs} runs");
}

#[test]
fn warm_up_runs_the_bad_end_until_it_failed_twice() {
    let model = Model::new(16);
    let mut c = Counts::new(16);
    assert_eq!(
        decide(&model, &c, limits(3), |_| true),
        Decision::Test(vec![15; 3])
    );
    c.observe(15, true);
    c.observe(15, false);
    assert_eq!(
        decide(&model, &c, limits(1), |_| true),
        Decision::Test(vec![15])
    );
    c.observe(15, true);
    assert_eq!(c.fails[15], WARMUP_FAILURES);
    assert!(!matches!(decide(&model, &c, limits(1), |_| true), Decision::Test(b) if b == vec![15]));
}

#[test]
fn a_bad_end_that_never_fails_is_an_error_not_a_verdict() {
    let model = Model::new(8);
    let mut c = Counts::new(8);
    let l = Limits {
        max_runs_per_commit: 5,
        ..limits(1)
    };
    for _ in 0..5 {
        c.observe(7, false);
    }
    match decide(&model, &c, l, |_| true) {
        Decision::GiveUp(e) => assert!(e.contains("never failed"), "{e}"),
        d => panic!("{d:?}"),
    }
}

#[test]
fn one_failure_before_a_commit_does_not_rule_it_out_but_a_pass_never_proves_it_good() {
    let model = Model::new(8);
    let mut c = Counts::new(8);
    for _ in 0..3 {
        c.observe(7, true);
    }
    c.observe(2, true); // a background failure, or K <= 2
    let post = model.posterior(&c);
    let beyond: f64 = post.weight[3..].iter().sum();
    assert!(
        beyond > 0.0 && beyond < 0.5,
        "K > 2 after a failure at 2: {beyond}"
    );
    c.observe(5, false);
    let post = model.posterior(&c);
    assert!(
        post.weight[1..=5].iter().all(|w| *w > 0.0),
        "{:?}",
        post.weight
    );
    assert!((post.weight.iter().sum::<f64>() - 1.0).abs() < 1e-9);
}

#[test]
fn the_same_rate_everywhere_is_no_change_not_a_culprit() {
    let mut rng = ublk::rng::Rng::new(7);
    let (end, runs) = drive(32, 1, |_| rng.chance(30));
    assert!(
        matches!(end, Decision::NoChange(p) if p >= 0.95),
        "{end:?} after {runs} runs"
    );
}

#[test]
fn a_background_rate_is_estimated_and_reported_beside_the_culprits() {
    let mut rng = ublk::rng::Rng::new(11);
    let model = Model::new(32);
    let mut c = Counts::new(32);
    // Commit 20 on: 60 %; before: 5 %, as a flaky host would make it.
    for i in 0..32 {
        for _ in 0..40 {
            let rate = if i >= 20 { 60 } else { 5 };
            c.observe(i, rng.chance(rate));
        }
    }
    let post = model.posterior(&c);
    let (k, p) = post.best_commit();
    assert_eq!(k, 20, "{:?}", post.weight);
    assert!(p > 0.9);
    let (before, after) = post.rates_at(20);
    assert!((0.02..0.09).contains(&before), "before {before}");
    assert!((0.5..0.7).contains(&after), "after {after}");
}

#[test]
fn parallel_runs_spread_over_informative_commits() {
    let model = Model::new(64);
    let mut c = Counts::new(64);
    c.observe(63, true);
    c.observe(63, true);
    let Decision::Test(batch) = decide(&model, &c, limits(4), |_| true) else {
        panic!("expected runs")
    };
    let mut distinct = batch.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(batch.len(), 4);
    assert!(
        distinct.len() >= 3,
        "a batch of 4 repeats commits: {batch:?}"
    );
    let (end, _) = {
        let mut rng = ublk::rng::Rng::new(3);
        drive(64, 4, |i| i >= 21 && rng.chance(50))
    };
    assert!(matches!(end, Decision::Culprit(21, _)), "{end:?}");
}

#[test]
fn the_run_cap_and_unrunnable_commits_are_respected() {
    let model = Model::new(8);
    let mut c = Counts::new(8);
    c.observe(7, true);
    c.observe(7, true);
    let l = Limits {
        max_runs_per_commit: 2,
        ..limits(8)
    };
    let Decision::Test(batch) = decide(&model, &c, l, |i| i != 3) else {
        panic!()
    };
    assert!(!batch.contains(&3) && !batch.contains(&7), "{batch:?}");
    let mut per = [0; 8];
    batch.iter().for_each(|i| per[*i] += 1);
    assert!(per.iter().all(|n| *n <= 2), "{batch:?}");
}

/// The comparison at p = 0.3, a slice of `cargo xtask bisect bench` small enough for a
/// debug build: ours must be accurate, far cheaper than git-bayesect's rule and no dearer than
/// fixed-20 (which is blind to a background rate).
#[test]
fn ours_beats_bayesect_greedy_at_p_0_3() {
    let setup = Setup {
        commits: 64,
        trials: 60,
        confidence: 0.98,
        jobs: 1,
        seed: 42,
        params: super::model::Params::DEFAULT,
    };
    let cells = [Cell {
        p: 0.3,
        background: 0.0,
        equal_rates: false,
    }];
    let mut policies = Policy::ALL.to_vec();
    policies.push(Policy::ToldRates);
    let rows = bench::table(setup, &cells, &policies);
    println!("{}", bench::render(&rows, &policies));
    let (ours, bayesect, fixed, told) = (&rows[0], &rows[1], &rows[2], &rows[3]);
    // Told the rates, the same rule needs far fewer runs: not knowing them is what ours pays.
    assert!(
        told.accuracy() >= 0.95 && told.mean_runs < 0.8 * ours.mean_runs,
        "{told:?}"
    );
    assert!(
        ours.accuracy() >= 0.95,
        "ours {}/{}",
        ours.correct,
        ours.trials
    );
    assert!(
        ours.mean_runs <= fixed.mean_runs * 1.05,
        "ours {} vs fixed-20 {}",
        ours.mean_runs,
        fixed.mean_runs
    );
    assert!(
        ours.mean_runs < 0.85 * bayesect.mean_runs,
        "ours {} vs bayesect {}",
        ours.mean_runs,
        bayesect.mean_runs
    );
}

#[test]
fn only_failures_with_the_learned_signature_are_evidence() {
    let mut ev = Evidence::new(8, Want::Learn { times: 2 });
    let fail = |s: &str| Run::Fail(Some(s.to_string()));
    ev.add(7, fail("exit 2"));
    ev.add(7, fail("exit 1"));
    ev.add(7, fail("exit 1"));
    ev.add(7, fail("exit 2"));
    ev.add(3, fail("exit 2"));
    ev.add(3, Run::Pass);
    let t = ev.tally();
    assert!(
        t.learner.describe().contains("`exit 1`"),
        "{}",
        t.learner.describe()
    );
    assert_eq!(t.counts.fails, vec![0, 0, 0, 0, 0, 0, 0, 2]);
    assert_eq!(
        t.counts.runs[3], 1,
        "the different failure is not a run the model sees"
    );
    assert_eq!(
        t.others_line(3).unwrap(),
        "1 run(s) failed differently: exit 2 (1)"
    );
    assert_eq!(t.others[7].get("exit 2"), Some(&2));
    let mut any = Evidence::new(8, Want::Any);
    any.runs.clone_from(&ev.runs);
    assert_eq!(any.tally().counts.fails[3], 1);
}

#[test]
fn a_commit_that_keeps_failing_differently_is_taken_out() {
    let mut ev = Evidence::new(8, Want::Exactly("exit 1".into()));
    for _ in 0..3 {
        ev.add(4, Run::Fail(Some("exit 2".into())));
    }
    let t = ev.tally();
    assert!(!t.runnable(4, 30));
    assert!(t.runnable(5, 30));
}

#[test]
fn match_failures_that_do_not_match_are_never_learned() {
    let no = signature::of_cmd(Some(1), Some(false));
    let yes = signature::of_cmd(Some(1), Some(true));
    assert_eq!((no.as_str(), yes.as_str()), ("exit 1 (no match)", "exit 1"));
    let mut ev = Evidence::new(4, Want::Learn { times: 2 });
    for s in [&no, &no, &no, &yes, &yes] {
        ev.add(3, Run::Fail(Some(s.clone())));
    }
    assert!(ev.tally().learner.describe().contains("`exit 1`"));
}

#[test]
fn signatures_drop_what_varies_between_runs_of_one_bug() {
    use signature::{normalize, of_sim, of_summary, RunView, SummaryView};
    let view = |verdict: &str, step: &str, reason: &str| SummaryView {
        runs: vec![RunView {
            verdict: serde_json::from_value(serde_json::json!(verdict)).unwrap(),
            failed_step: Some(step.into()),
            reason: Some(reason.into()),
        }],
    };
    let a = of_summary(&view("fail", "steps[1] io", "io failed with status 1: MISMATCH offset 71766016 (block 17521): expected write #9684, found older write #5568: stale data")).unwrap();
    let b = of_summary(&view("fail", "steps[1] io", "io failed with status 1: MISMATCH offset 1 (block 2): expected write #3, found zeroes: the write was lost")).unwrap();
    assert_eq!(a, "fail @ steps[1] io: data mismatch");
    assert_eq!(a, b);
    let s = of_summary(&view("fail", "kernel log", "kernel splat: [    4.793983] UBSAN: array-index-out-of-bounds in /build/linux-7.2.13/io_uring/rsrc.c:1070:12 (and 0 more; see dmesg.txt)")).unwrap();
    assert_eq!(
        s,
        "fail @ kernel log: splat UBSAN: array-index-out-of-bounds"
    );
    let w = of_summary(&view("fail", "kernel log", "kernel splat: [    5.272686] WARNING: CPU: 0 PID: 1 at fixture/splat.c:1 vm_selftests_fixture (and 0 more; see dmesg.txt)")).unwrap();
    assert_eq!(
        w,
        "fail @ kernel log: splat WARNING at fixture/splat.c:# vm_selftests_fixture"
    );
    let t1 = of_summary(&view("timeout", "test_hang_01.sh", "test_hang_01.sh still running after 20 s: ublkb0/hctx0: tag 1 in flight (READ); pid 182 dd (D): bio_await")).unwrap();
    let t2 = of_summary(&view("timeout", "test_hang_01.sh", "test_hang_01.sh still running after 10 s: ublkb0/hctx0: tag 96 in flight (READ); pid 183 dd (D): bio_await")).unwrap();
    assert_eq!(t1, t2);
    assert_eq!(
        t1,
        "timeout @ test_hang_01.sh: test_hang_#.sh still running after # s: ublkb#/hctx#: tag # in flight (READ)"
    );
    // The kernel trace's checker: the rule, whatever the tag, request and times.
    let p1 = of_summary(&view("fail", "kernel trace", "protocol violation: dev0 q1 tag 5: server COMMIT result 65536 at 1.300 s, for a 4096-byte READ 8+8 dispatched at 1.204 s: rule result-exceeds-request (a commit's result is at most its request's length)")).unwrap();
    let p2 = of_summary(&view("fail", "kernel trace", "protocol violation: dev0 q0 tag 31: server COMMIT result 8192 at 9.001 s, for a 4096-byte WRITE 80+8 dispatched at 8.990 s: rule result-exceeds-request (a commit's result is at most its request's length) (and 3 more; see trace/summary.txt)")).unwrap();
    assert_eq!(p1, "fail @ kernel trace: protocol result-exceeds-request");
    assert_eq!(p1, p2);
    assert_eq!(normalize("a 12 b; c"), "a # b");
    let sim =
        "FAIL seed 3 after 4 schedule(s): protocol check: Fetch submitted twice\nreproduce: x";
    assert_eq!(of_sim(sim).as_deref(), Some("protocol check"));
}

/// The summary vm-e2e writes is what bisect reads: a real `report::Session` parses as the view.
#[test]
fn a_vm_e2e_summary_parses_as_the_bisect_view() {
    use crate::runs::Verdict;
    use crate::session::outcome::Outcome;
    use crate::session::report::{Head, Session};
    let mut o = Outcome::named("s", 1, 9, std::path::Path::new("/tmp/x"), "h");
    o.verdict = Verdict::Timeout;
    o.failed_step = Some("steps[2] stop (server)".into());
    o.reason = Some("sh -c sleep 9 did not finish within its timeout; freeze-frame: /tmp/x".into());
    let runs = vec![o];
    let s = Session {
        head: Head::example(),
        wall_s: 1.0,
        kernels: Default::default(),
        flaky: Default::default(),
        reproduce: String::new(),
        runs,
        notes: Vec::new(),
    };
    let view: signature::SummaryView =
        serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
    assert_eq!(
        signature::of_summary(&view).unwrap(),
        "timeout @ steps[2] stop: sh -c sleep # did not finish within its timeout"
    );
    // A run folder holding an older session too (it once made a failure read as "no
    // summary.json" by taking the older, passing one): the newest summary is the run's.
    let dir = std::env::temp_dir().join(format!("xtask-sig-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut passing = s.clone();
    passing.runs[0].verdict = Verdict::Pass;
    for (name, session) in [
        ("20261123-014014-e2e", &s),
        ("20261123-013535-e2e", &passing),
    ] {
        std::fs::create_dir_all(dir.join(name)).unwrap();
        std::fs::write(
            dir.join(name).join("summary.json"),
            serde_json::to_string(session).unwrap(),
        )
        .unwrap();
    }
    let newest = signature::read_summary(&dir).unwrap();
    assert_eq!(signature::of_summary(&newest), signature::of_summary(&view));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn prior_overrides_are_checked_and_applied() {
    use super::model::Params;
    let d = Params::DEFAULT;
    assert_eq!(d.with_overrides(""), Ok(d));
    let p = d.with_overrides("q_spike=0.9, min_jump_ratio=3").unwrap();
    assert_eq!((p.q_spike, p.min_jump_ratio, p.q_max), (0.9, 3.0, d.q_max));
    let e = d.with_overrides("q_spik=0.9").unwrap_err();
    assert!(
        e.contains("unknown key \"q_spik\"") && e.contains("q_slab_mean_rate"),
        "{e}"
    );
    let e = d.with_overrides("q_spike").unwrap_err();
    assert!(e.contains("expected KEY=VALUE"), "{e}");
    let e = d.with_overrides("q_spike=1.5").unwrap_err();
    assert!(e.contains("q_spike=1.5: must be a number in [0, 1]"), "{e}");
    let e = d.with_overrides("q_spike=0,q_max=0").unwrap_err();
    assert!(e.contains("leaves the background rate no value"), "{e}");
    let e = d.with_overrides("min_jump_ratio=x").unwrap_err();
    assert!(e.contains("must be a number"), "{e}");
    // Every key names a field, and the model accepts the extremes of every range.
    let help = {
        use clap::CommandFactory;
        let mut cli = crate::Cli::command();
        let bench = cli
            .find_subcommand_mut("bisect")
            .unwrap()
            .find_subcommand_mut("bench");
        bench.unwrap().render_long_help().to_string()
    };
    for (key, lo, hi, field) in Params::KEYS {
        assert!(
            help.contains(key),
            "`bisect bench --help` does not name --prior key {key}"
        );
        for v in [lo, hi] {
            let mut p = d.with_overrides(&format!("{key}={v}")).unwrap();
            assert_eq!(*field(&mut p), v, "{key}");
            let _ = Model::with(8, p).posterior(&Counts::new(8));
        }
    }
}

#[test]
fn told_rates_is_not_applicable_without_a_change() {
    let setup = Setup {
        commits: 16,
        trials: 3,
        confidence: 0.95,
        jobs: 1,
        seed: 7,
        params: super::model::Params::DEFAULT,
    };
    let cells = [Cell {
        p: 0.3,
        background: 0.3,
        equal_rates: true,
    }];
    let rows = bench::table(setup, &cells, &[Policy::ToldRates]);
    assert_eq!((rows[0].trials, rows[0].correct), (0, 0));
    let text = bench::render(&rows, &[Policy::ToldRates]);
    assert!(
        text.contains("equal 0.30") && text.contains("n/a"),
        "{text}"
    );
}
