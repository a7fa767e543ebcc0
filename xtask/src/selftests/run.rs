//! One kernel selftest script in one fresh VM (`vmtest::run` does the running): the suite
//! shipped to GUEST_DIR, the script run there, kublk's threads in a freeze-frame, and a
//! silent skip explained by the programs the script checks for.

use super::suite::Suite;
use crate::image::tools::Layer;
use crate::vmtest::run::{kselftest, last_line, Content, Ship, Test};

/// Where the suite lives in the guest (the scripts find kublk beside themselves).
pub const GUEST_DIR: &str = "/root/ublk";

/// The test of one script: the suite's files and the user's own (`--script`: name, bytes).
pub fn test<'a>(
    suite: &'a Suite,
    script: &'a str,
    extra: &'a [(String, Vec<u8>)],
    tools: &'a Layer,
) -> Test<'a> {
    let root = suite.root();
    let mut files: Vec<Ship> = (suite.shipped().into_iter())
        .map(|f| Ship {
            content: Content::Host(root.join(&f)),
            path: f,
        })
        .collect();
    files.extend(extra.iter().map(|(name, data)| Ship {
        path: name.clone(),
        content: Content::Bytes(data),
    }));
    Test {
        name: super::suite::test_id(script),
        dir: GUEST_DIR,
        files,
        command: format!("exec ./{script}"),
        step: script,
        servers: &["kublk"],
        recheck: Box::new(|| suite.recheck()),
        verdict_of: Box::new(move |st, out| {
            kselftest(st, out, |out| skip_reason(suite, script, tools, out))
        }),
    }
}

/// Why a script skipped: what it printed last, or — scripts that exit 4 silently after
/// `_have_program X` — the programs it checks for that the tools layer lacks.
fn skip_reason(suite: &Suite, script: &str, tools: &Layer, output: &str) -> String {
    if output.trim().is_empty() {
        let text = std::fs::read_to_string(suite.root().join(script)).unwrap_or_default();
        let missing: Vec<&str> = text
            .split("_have_program")
            .skip(1)
            .filter_map(|rest| rest.split_whitespace().next())
            .map(|p| {
                p.trim_end_matches(|c: char| !(c.is_ascii_alphanumeric() || "-_.".contains(c)))
            })
            .filter(|p| !p.is_empty() && !tools.manifest.executables.iter().any(|e| e == p))
            .collect();
        if !missing.is_empty() {
            return format!(
                "exit 4 (kselftest skip) without a message; the script checks for {}, which the guest tools layer does not have",
                missing.join(", ")
            );
        }
    }
    last_line(
        output,
        "exit 4 (kselftest skip); the script printed no reason",
    )
}
