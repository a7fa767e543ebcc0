//! A third suite in one file: two shell "tests", each run in a fresh VM. It proves a suite is
//! one `Suite` implementation: the pipeline gives it repeats, shards, the table, JUnit,
//! summary.md, summary.json and `report merge` with no code of its own for any of them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::outcome::{failure_verdict, Outcome};
use super::shard::{RunKey, Shard};
use super::{merge, pool, report, Context, Options, Run, Suite, Unit};
use crate::image::Image;
use crate::runs::Verdict;
use crate::util::Result;
use crate::vm::accel::Choice;
use crate::vm::qemu::VmConfig;
use crate::vm::{Outcome as VmOutcome, Vm};

/// (name, shell script): one passes, one fails with a message.
const TESTS: [(&str, &str); 2] = [
    ("prints-hello", "echo hello from $(uname -r)"),
    ("exits-3", "echo the toy broke >&2; exit 3"),
];

/// Each test's limit (KVM seconds, scaled by the session's `Limits`).
const TEST_LIMIT_S: u64 = 30;

struct Shell;

impl Suite for Shell {
    type Test = (&'static str, &'static str);

    fn units(&self) -> Vec<Unit<Self::Test>> {
        let kernel = crate::image::kernel::DEFAULT_KERNEL;
        (TESTS.iter())
            .map(|t| Unit {
                test: *t,
                key: RunKey::new(t.0, "", kernel, 1),
                estimate_s: TEST_LIMIT_S,
            })
            .collect()
    }

    fn prepare(
        &mut self,
        _images: &BTreeMap<String, Arc<Image>>,
        _used: &[&Unit<Self::Test>],
    ) -> Result<()> {
        Ok(())
    }

    fn dir_label(&self, run: &Run<Self::Test>) -> String {
        format!("toy-{}", run.test.0)
    }

    fn attempt(&self, run: &Run<Self::Test>, dir: &Path) -> (Outcome, bool) {
        let start = Instant::now();
        let out = Outcome::named(run.test.0, run.key.repeat, 0, dir, run.image.hash());
        let cfg = VmConfig {
            cpus: 1,
            memory_mib: 512,
            accel: run.ctx.accel,
            tools: None,
            icount_shift: None,
        };
        let limit = Duration::from_secs(run.ctx.limits.secs(TEST_LIMIT_S));
        let mut vm = match Vm::boot(run.image, &cfg, dir, start + limit * 4) {
            Ok(vm) => vm,
            Err(f) => return (out.failed_at(start, "boot", &f), false),
        };
        let argv = ["sh".to_string(), "-c".to_string(), run.test.1.to_string()];
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        let ended = vm.run(
            &argv,
            false,
            &mut stdout,
            &mut stderr,
            Instant::now() + limit,
        );
        vm.kill();
        let said = String::from_utf8_lossy(&[stdout, stderr].concat()).into_owned();
        let (verdict, why) = match ended {
            VmOutcome::Exited(0) => (Verdict::Pass, None),
            VmOutcome::Exited(st) => (Verdict::Fail, Some(format!("exit {st}: {}", said.trim()))),
            VmOutcome::Failed(f) => {
                let (v, why) = failure_verdict(&f);
                (v, Some(why))
            }
        };
        (out.finish(start, verdict, why), true)
    }

    fn stamp(&self, run: &Run<Self::Test>, outcome: &mut Outcome) {
        outcome.kernel = run.key.kernel.clone();
        outcome.kernel_release = run.image.manifest.kernel_release.clone();
    }

    fn select_run(&self, run: &Run<Self::Test>) -> Vec<String> {
        vec![run.test.0.to_string()]
    }

    fn select_session(&self, _ctx: &Context, outcomes: &[Outcome]) -> Vec<String> {
        let mut names: Vec<String> = (outcomes.iter())
            .filter(|o| o.verdict.wants_rerun())
            .map(|o| o.scenario.clone())
            .collect();
        names.dedup();
        names
    }

    fn flags(&self) -> Vec<String> {
        Vec::new()
    }

    fn record(&self, _run: &Run<Self::Test>) -> (&'static str, serde_json::Value) {
        ("toy-result.json", serde_json::json!({}))
    }
}

fn options(reports: &'static str, shard: Option<Shard>) -> Options {
    Options {
        tool: "vm-toy",
        reports,
        jobs: 2,
        repeat: 2,
        seed: None,
        shard,
        durations: None,
        list: false,
        accel: Choice::Auto,
        timeout_scale: None,
    }
}

/// The one reports directory whose name ends with `reports` (unique to this test).
fn reports_dir(reports: &str) -> PathBuf {
    let found: Vec<PathBuf> = std::fs::read_dir(crate::runs::runs_dir())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(reports))
        .collect();
    assert_eq!(found.len(), 1, "{found:?}");
    found[0].clone()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn a_third_suite_gets_shards_repeats_reports_and_merge_from_the_pipeline() {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let tag = format!("toy-{}-{nanos}", std::process::id());
    let mut dirs = Vec::new();
    for index in 1..=2 {
        let name: &'static str = Box::leak(format!("{tag}-shard{index}").into_boxed_str());
        let shard = Shard { index, count: 2 };
        let code = super::run(&mut Shell, &options(name, Some(shard))).unwrap();
        let dir = reports_dir(name);
        let s: report::Session = serde_json::from_str(&read(&dir.join("summary.json"))).unwrap();
        // 2 tests x 2 repeats, split by equal estimates: two runs in each shard.
        assert_eq!((s.runs.len(), s.head.shards.len()), (2, 1), "{dir:?}");
        let failed = s.runs.iter().any(|o| o.verdict == Verdict::Fail);
        assert_eq!(code, if failed { 1 } else { 0 }, "{:?}", s.runs);
        dirs.push(dir);
    }
    let merged = merge::merge(merge::load(&dirs).unwrap()).unwrap();
    assert!(report::gaps(&merged.head.shards).is_empty(), "both shards");
    assert_eq!(report::exit_code(&merged.runs), 1);
    let verdicts: Vec<(&str, u32, Verdict)> = (merged.runs.iter())
        .map(|o| (o.scenario.as_str(), o.run, o.verdict))
        .collect();
    assert_eq!(
        verdicts,
        [
            ("exits-3", 1, Verdict::Fail),
            ("exits-3", 2, Verdict::Fail),
            ("prints-hello", 1, Verdict::Pass),
            ("prints-hello", 2, Verdict::Pass),
        ],
        "every run once, sorted"
    );
    let fail = &merged.runs[0];
    assert!(fail
        .reason
        .as_deref()
        .unwrap()
        .contains("exit 3: the toy broke"));
    assert!(fail.run_dir.join("toy-result.json").is_file());
    assert_eq!(merged.flaky["exits-3"].failed, 2);
    let out = dirs[0].with_file_name(format!("{tag}-merged"));
    std::fs::create_dir_all(&out).unwrap();
    pool::write_reports(&merged, &out, None).unwrap();
    let table = report::table(&merged.runs);
    assert!(
        table.contains("exits-3") && table.contains("prints-hello"),
        "{table}"
    );
    let junit = read(&out.join("junit.xml"));
    assert_eq!(junit.matches("<testcase").count(), 4, "{junit}");
    assert_eq!(junit.matches("<failure").count(), 2, "{junit}");
    let md = read(&out.join("summary.md"));
    assert!(md.contains("### vm-toy FAIL: 2/4 passed"), "{md}");
    assert!(md.contains("the toy broke"), "{md}");
    assert!(merged
        .reproduce
        .contains("cargo xtask vm-toy exits-3 --timeout-scale"));
}
