//! `sim replay` of a kernel-side trace: `fixtures/rublk-loop.ktrace.txt` is the start of a
//! real run's `trace/events.txt` (vm-e2e simple-e2e against rublk 0.2.15's loop target on
//! debian-7.2: ADD_DEV, 128 fetches, the writes and reads of blkio's random and sequential
//! passes). It replays clean; the same trace with one event edited to break a rule is
//! reported with that rule.

use std::process::Command;

fn fixture() -> String {
    let p = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/rublk-loop.ktrace.txt"
    );
    std::fs::read_to_string(p).unwrap()
}

fn replay(text: &str, tag: &str) -> (Option<i32>, String) {
    let path = std::env::temp_dir().join(format!("sim-ktrace-{tag}-{}.txt", std::process::id()));
    std::fs::write(&path, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sim"))
        .args(["replay", "--seeds", "3"])
        .arg(&path)
        .output()
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text)
}

#[test]
fn a_rublk_trace_replays_clean() {
    let (code, out) = replay(&fixture(), "clean");
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("the trace keeps every protocol rule"), "{out}");
    assert!(out.contains("device 0: 631 request(s)"), "{out}");
    assert!(out.contains("clean under 3 schedule(s)"), "{out}");
}

#[test]
fn an_edited_event_is_reported_with_its_rule() {
    let text = fixture();
    // The first READ's commit: 4096 bytes → 65536.
    let read = text
        .lines()
        .find(|l| l.contains(" D READ ") && l.ends_with(" 8"))
        .unwrap();
    let f: Vec<&str> = read.split(' ').collect();
    let (q, tag) = (f[3], f[4]);
    let commit = text
        .lines()
        .skip_while(|l| *l != read)
        .find(|l| l.contains(&format!(" {q} {tag} C COMMIT 4096 ")))
        .unwrap();
    let edited = text.replacen(
        commit,
        &commit.replace("C COMMIT 4096 ", "C COMMIT 65536 "),
        1,
    );
    let (code, out) = replay(&edited, "oversize");
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("FAIL kernel trace: result-exceeds-request check: dev0 q"),
        "{out}"
    );
    assert!(
        out.contains(&format!("tag {tag}: server COMMIT result 65536")),
        "{out}"
    );
    // A completion repeated: the request is completed twice.
    let done = text.lines().find(|l| l.contains(" E 0 4096")).unwrap();
    let twice = text.replacen(done, &format!("{done}\n{done}"), 1);
    let (code, out) = replay(&twice, "twice");
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("FAIL kernel trace: completed-twice check:"),
        "{out}"
    );
    // A damaged file is bad input, named by line.
    let (code, out) = replay(&text.replacen(" D READ ", " D FROB ", 1), "bad");
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("unknown op"), "{out}");
}
