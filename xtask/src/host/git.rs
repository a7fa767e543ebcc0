//! The checkout xtask runs from, as every report records it.

/// The checkout's commit (`git describe --always --dirty`), or "unknown"; bounded.
pub fn commit() -> String {
    let out = super::procs::run(
        std::process::Command::new("git")
            .current_dir(crate::util::root())
            .args(["describe", "--always", "--dirty", "--abbrev=12"]),
        std::time::Duration::from_secs(10),
        "git describe",
    );
    match out {
        Ok(o) if o.status.success() => o.stdout.trim().to_string(),
        _ => "unknown".into(),
    }
}
