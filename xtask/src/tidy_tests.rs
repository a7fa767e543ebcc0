//! Docs that drift from code fail the build (after rust-analyzer's tidy.rs): the step kinds in
//! scenarios/README.md are the parser's, every command is in README.md's command table, and
//! every long flag of every command is documented somewhere a user reads.

use std::collections::BTreeSet;
use std::path::Path;

use clap::CommandFactory;

use crate::scenario::model::{Scenario, KINDS};
use crate::util::root;

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The first column of the markdown table that follows `heading`, as `code` names.
fn table_names(text: &str, heading: &str) -> Vec<String> {
    let after = text
        .split_once(heading)
        .unwrap_or_else(|| panic!("no {heading:?}"))
        .1;
    after
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .filter_map(|l| {
            let cell = l.split('|').nth(1)?.trim();
            let name = cell.strip_prefix('`')?.split('`').next()?;
            Some(name.to_string())
        })
        .collect()
}

#[test]
fn step_kinds_in_the_docs_are_the_parsers() {
    let documented = table_names(&read("scenarios/README.md"), "### Step kinds");
    assert_eq!(documented, KINDS, "scenarios/README.md's step kinds table");
    // Every listed kind parses (and to itself): the list is the parser's, not a wish.
    for kind in KINDS {
        let body = match kind {
            "start" => "{}".to_string(),
            "io" => "{bytes: 4KiB}".into(),
            "shell" => "{run: 'true'}".into(),
            "signal" => "{signal: TERM}".into(),
            "expect_timeout" => "{shell: 'sleep 9'}".into(),
            "wait" => "{job: j, expect: pass}".into(),
            _ => "{}".into(),
        };
        let pre = match kind {
            "io" | "signal" | "expect_timeout" | "stop" => "  - {start: {}, timeout: 1}\n",
            "wait" => {
                "  - {start: {}, timeout: 1}\n  - {shell: {run: x, background: j}, timeout: 1}\n"
            }
            "quiesce" => "  - {start: {recovery: reissue}, timeout: 1}\n",
            "recover" => {
                "  - {start: {recovery: reissue}, timeout: 1}\n  - {signal: {signal: KILL}, timeout: 1}\n"
            }
            _ => "",
        };
        let text = format!(
            "name: t\ndescription: d\ntimeout: 9\nsteps:\n{pre}  - {{{kind}: {body}, timeout: 1}}\n"
        );
        let sc = Scenario::parse(&text, Path::new("t.yaml")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(sc.steps.last().unwrap().kind.name(), kind);
    }
}

#[test]
fn every_command_and_flag_is_documented() {
    let readme = read("README.md");
    let docs = [
        readme.clone(),
        read("sim/README.md"),
        read("scenarios/README.md"),
        read("vm-images/README.md"),
    ]
    .join("\n");
    let cli = crate::Cli::command();
    let mut missing = BTreeSet::new();
    for sub in cli.get_subcommands() {
        let name = sub.get_name();
        if !readme.contains(&format!("cargo xtask {name}")) {
            missing.insert(format!("command `cargo xtask {name}` (README.md)"));
        }
        let mut cmds = vec![sub];
        cmds.extend(sub.get_subcommands());
        for c in cmds {
            for a in c.get_arguments() {
                let Some(long) = a.get_long() else { continue };
                if long != "help" && !docs.contains(&format!("--{long}")) {
                    missing.insert(format!("`{name} --{long}`"));
                }
            }
        }
    }
    assert!(missing.is_empty(), "undocumented: {missing:?}");
}

#[test]
fn built_in_servers_in_the_docs_are_the_profiles() {
    let mut documented = table_names(&read("vm-images/servers/README.md"), "| built-in |");
    documented.sort();
    assert_eq!(
        documented,
        crate::server::builtin_names(),
        "vm-images/servers/README.md's table"
    );
    let readme = read("README.md");
    for name in crate::server::builtin_names() {
        assert!(
            readme.contains(&format!("| `{name}`")),
            "README.md's servers table lacks {name}"
        );
    }
}

#[test]
fn perf_workloads_and_targets_in_the_docs_are_the_codes() {
    use crate::perf::workload::{KERNEL_TARGETS, REFERENCE, WORKLOADS};
    let readme = read("README.md");
    let documented = table_names(&readme, "| workload | fio |");
    let names: Vec<&str> = WORKLOADS.iter().map(|w| w.name).collect();
    assert_eq!(documented, names, "README.md's vm-perf workload table");
    let targets = table_names(&readme, "| target | what |");
    assert_eq!(targets, KERNEL_TARGETS, "README.md's vm-perf target table");
    assert_eq!(targets[0], REFERENCE, "the reference is listed first");
}

/// The ublk-vm action: every input is in README.md's inputs table (and only those), every
/// workflow that uses it passes only inputs it declares (actionlint cannot read a local
/// action), and every script its steps run is there and executable.
#[test]
fn the_action_its_docs_and_its_users_agree() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = ".github/actions/ublk-vm";
    let action: serde_yaml::Value =
        serde_yaml::from_str(&read(&format!("{dir}/action.yml"))).unwrap();
    let mut inputs: Vec<String> = action["inputs"]
        .as_mapping()
        .unwrap()
        .keys()
        .map(|k| k.as_str().unwrap().to_string())
        .collect();
    inputs.sort();
    let mut documented = table_names(&read("README.md"), "| input | default | what |");
    documented.sort();
    assert_eq!(
        documented, inputs,
        "README.md's table of the action's inputs"
    );
    for wf in std::fs::read_dir(root().join(".github/workflows")).unwrap() {
        let path = wf.unwrap().path();
        let doc: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for (job, spec) in doc["jobs"].as_mapping().unwrap() {
            for step in spec["steps"].as_sequence().into_iter().flatten() {
                if step["uses"].as_str() != Some(&format!("./{dir}")) {
                    continue;
                }
                for k in step["with"].as_mapping().into_iter().flat_map(|m| m.keys()) {
                    let k = k.as_str().unwrap();
                    assert!(
                        inputs.iter().any(|i| i == k),
                        "{}: job {job:?} passes `{k}`, which the action does not declare",
                        path.display()
                    );
                }
            }
        }
    }
    let text = read(&format!("{dir}/action.yml"));
    let scripts: BTreeSet<&str> = text
        .split("$GITHUB_ACTION_PATH/scripts/")
        .skip(1)
        .map(|rest| rest.split('"').next().unwrap())
        .collect();
    assert!(scripts.len() >= 4, "{scripts:?}");
    for s in scripts {
        let p = root().join(dir).join("scripts").join(s);
        let mode = std::fs::metadata(&p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .permissions()
            .mode();
        assert!(mode & 0o111 != 0, "{} is not executable", p.display());
    }
}
