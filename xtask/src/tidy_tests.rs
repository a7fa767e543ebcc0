//! Docs that drift from code fail the build (after rust-analyzer's tidy.rs): the step kinds in
//! scenarios/README.md are the parser's, every command is in README.md's command table, every
//! long flag of every command is documented somewhere a user reads, ARCHITECTURE.md's codemap
//! names files that exist and every module, its crate table every workspace crate and its
//! vm-e2e diagram every step kind, and the servers README's format block loads as a profile.

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
        let (pre, body) = crate::scenario::model::Kind::example(kind).expect("every kind has one");
        let text = format!(
            "name: t\ndescription: d\ntimeout: 9\nsteps:\n{pre}  - {{{kind}: {body}, timeout: 1}}\n"
        );
        let sc = Scenario::parse(&text, Path::new("t.yaml")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(sc.steps.last().unwrap().kind.name(), *kind);
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

/// `a/{b,c}.rs` → `a/b.rs`, `a/c.rs`; anything else as it is.
fn expand_braces(path: &str) -> Vec<String> {
    match (path.find('{'), path.find('}')) {
        (Some(a), Some(b)) if a < b => path[a + 1..b]
            .split(',')
            .map(|alt| format!("{}{alt}{}", &path[..a], &path[b + 1..]))
            .collect(),
        _ => vec![path.to_string()],
    }
}

/// The code spans of the last column of every row of ARCHITECTURE.md's codemap table.
fn codemap_paths(text: &str) -> Vec<String> {
    let after = text
        .split_once("## Where each concern lives (xtask/src)")
        .expect("ARCHITECTURE.md has its codemap")
        .1;
    let rows = after
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'));
    let mut out = Vec::new();
    for row in rows.skip(2) {
        let cells: Vec<&str> = row.split('|').collect();
        let last = cells[cells.len().saturating_sub(2)];
        for (i, span) in last.split('`').enumerate() {
            if i % 2 == 1 && (span.ends_with(".rs") || span.ends_with('/')) {
                out.extend(expand_braces(span));
            }
        }
    }
    out
}

#[test]
fn architecture_md_names_files_that_exist_and_every_module() {
    let text = read("ARCHITECTURE.md");
    let paths = codemap_paths(&text);
    assert!(paths.len() > 40, "the codemap was found: {paths:?}");
    let src = root().join("xtask/src");
    for p in &paths {
        let exists = src.join(p).exists() || root().join(p).exists();
        assert!(
            exists,
            "ARCHITECTURE.md's codemap names `{p}`, which does not exist"
        );
    }
    // Every module of xtask (a file or a folder under src/) is on the map.
    let named: BTreeSet<&str> = paths.iter().map(String::as_str).collect();
    for e in std::fs::read_dir(&src).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with("_tests.rs") || name == "main.rs" {
            continue;
        }
        let module = match e.path().is_dir() {
            true => format!("{name}/"),
            false => name.clone(),
        };
        let on_map =
            named.contains(module.as_str()) || named.iter().any(|n| n.starts_with(&module));
        assert!(
            on_map,
            "module `{module}` is not in ARCHITECTURE.md's codemap"
        );
    }
    for f in ["tidy_tests.rs", "fuzz_tests.rs"] {
        assert!(named.contains(f), "{f} is on the map");
    }
}

#[test]
fn architecture_md_lists_every_crate_and_every_step_kind() {
    let text = read("ARCHITECTURE.md");
    let crates = table_names(&text, "## Crates");
    let manifest = read("Cargo.toml");
    let members = manifest
        .split_once("members = [")
        .and_then(|(_, r)| r.split_once(']'))
        .expect("workspace members")
        .0;
    for m in members.split(',').map(|m| m.trim().trim_matches('"')) {
        let pkg = read(&format!("{m}/Cargo.toml"));
        let name = pkg
            .lines()
            .find_map(|l| l.strip_prefix("name = "))
            .expect("a package name")
            .trim_matches('"');
        assert!(
            crates.iter().any(|c| c == name),
            "crate {name} ({m}) is not in ARCHITECTURE.md's crate table: {crates:?}"
        );
    }
    // The vm-e2e diagram's step list is the parser's.
    let diagram = text
        .split_once("## Scenarios: `cargo xtask vm-e2e`")
        .and_then(|(_, r)| r.split_once("```\n"))
        .and_then(|(_, r)| r.split_once("```"))
        .expect("the vm-e2e diagram")
        .0;
    let listed: Vec<&str> = diagram
        .lines()
        .filter_map(|l| {
            let (word, rest) = l.trim_start().split_once(' ')?;
            let kind_like = word.chars().all(|c| c.is_ascii_lowercase() || c == '_');
            (kind_like && rest.trim_start().starts_with('→')).then_some(word)
        })
        .collect();
    assert_eq!(listed, KINDS, "ARCHITECTURE.md's vm-e2e step list");
}

#[test]
fn the_servers_readme_format_block_is_a_profile_the_loader_takes() {
    let text = read("vm-images/servers/README.md");
    let block = text
        .split_once("## Format\n\n```yaml\n")
        .and_then(|(_, r)| r.split_once("```"))
        .expect("the format block")
        .0;
    // Comments out: what is left is the example as written, every key of it.
    let yaml: String = block
        .lines()
        .map(|l| match l.find(" #") {
            Some(i) => &l[..i],
            None if l.trim_start().starts_with('#') => "",
            None => l,
        })
        .filter(|l| !l.trim().is_empty())
        .map(|l| format!("{l}\n"))
        .collect();
    let p = crate::server::Profile::parse(&yaml, Path::new("vm-images/servers/README.md"))
        .unwrap_or_else(|e| panic!("the format block does not load: {e}\n{yaml}"));
    assert!(
        p.dump.is_some() && p.recovery.is_some(),
        "every section shown"
    );
}

/// Every `.rs` file under `dir` (recursively), with its path relative to `xtask/src`.
fn sources(dir: &Path, out: &mut Vec<(String, String)>) {
    let src = root().join("xtask/src");
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            let rel = p.strip_prefix(&src).unwrap().display().to_string();
            let text = std::fs::read_to_string(&p).unwrap();
            // Only the code before the tests counts: a test may reach anywhere.
            let code = text
                .split("#[cfg(test)]")
                .next()
                .unwrap_or_default()
                .to_string();
            out.push((rel, code));
        }
    }
}

#[test]
fn the_layering_rules_of_architecture_md_hold() {
    let mut files = Vec::new();
    sources(&root().join("xtask/src"), &mut files);
    assert!(files.len() > 50, "{}", files.len());
    for (rel, code) in &files {
        let in_cmd = rel.starts_with("cmd/");
        if !in_cmd && rel != "main.rs" && !rel.ends_with("_tests.rs") {
            assert!(
                !code.contains("crate::cmd::"),
                "{rel}: a lower layer imports a command"
            );
        }
        // A command imports no other command (`locks` runs kernel-lock's and tools-lock's checks).
        if in_cmd && rel != "cmd/locks.rs" && rel != "cmd/mod.rs" {
            assert!(
                !code.contains("crate::cmd::"),
                "{rel}: a command imports another command"
            );
        }
    }
    let code_of = |path: &str| {
        let (_, code) = files
            .iter()
            .find(|(r, _)| r == path)
            .unwrap_or_else(|| panic!("{path} exists"));
        code
    };
    // The session model imports nothing of the pipeline, the planner, the renderers or merge.
    for model in ["session/report.rs", "session/outcome.rs"] {
        let code = code_of(model);
        for sibling in ["pool", "markdown", "merge", "shard", "evidence", "Suite"] {
            for form in [format!("super::{sibling}"), format!("session::{sibling}")] {
                assert!(!code.contains(&form), "{model} imports {sibling}");
            }
        }
    }
    // Renderers depend only on the model.
    for form in ["super::pool", "super::merge", "super::shard", "super::{"] {
        assert!(
            !code_of("session/markdown.rs").contains(form),
            "session/markdown.rs imports {form}"
        );
    }
    // Suites plug into the pipeline, never the reverse; servers know neither scenarios nor
    // sessions (kublk is built from the selftests suite: `server` may read `selftests::suite`).
    for (rel, code) in &files {
        let above: &[&str] = if rel.starts_with("session/") {
            &[
                "crate::scenario",
                "crate::selftests",
                "crate::perf",
                "crate::bisect",
            ]
        } else if rel.starts_with("server/") {
            &["crate::scenario", "crate::session"]
        } else {
            &[]
        };
        for layer in above {
            assert!(!code.contains(layer), "{rel} imports {layer}");
        }
    }
}

#[test]
fn the_readme_server_table_has_a_column_for_every_shipped_scenario() {
    let readme = read("README.md");
    let header = readme
        .lines()
        .find(|l| l.starts_with("| server | simple-e2e |"))
        .expect("README.md's server x scenario table");
    let mut columns: Vec<&str> = header
        .split('|')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .skip(1)
        .collect();
    columns.sort();
    let mut shipped: Vec<String> = crate::scenario::resolve(&[])
        .unwrap()
        .iter()
        .map(|f| f.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    shipped.sort();
    assert_eq!(columns, shipped, "README.md's server x scenario table");
}

/// The module a source file is (`a/b.rs` → `a::b`, `a/mod.rs` → `a`, `main.rs` → ``).
fn module_of(rel: &str) -> String {
    let m = rel.trim_end_matches(".rs").replace('/', "::");
    let m = m.strip_suffix("::mod").unwrap_or(&m).to_string();
    if m == "main" {
        return String::new();
    }
    m
}

/// The modules a file's code names through `crate::` and `super::` paths (brace groups
/// expanded), each resolved to the longest known module prefix.
fn imports_of(module: &str, code: &str, known: &BTreeSet<String>) -> BTreeSet<String> {
    let parent: Vec<&str> = match module.rsplit_once("::") {
        Some((p, _)) => p.split("::").collect(),
        None => Vec::new(),
    };
    let resolve = |path: &str| -> Option<String> {
        let mut parts: Vec<&str> = path.split("::").filter(|p| !p.is_empty()).collect();
        let mut base: Vec<&str> = match parts.first() {
            Some(&"crate") => Vec::new(),
            Some(&"super") => parent.clone(),
            _ => return None,
        };
        parts.remove(0);
        base.extend(parts);
        (1..=base.len())
            .rev()
            .map(|n| base[..n].join("::"))
            .find(|m| known.contains(m))
    };
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut out = BTreeSet::new();
    for start in ["crate::", "super::"] {
        for (at, _) in code.match_indices(start) {
            if code[..at].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
                continue;
            }
            let path: String = code[at..].chars().take_while(|c| word(*c)).collect();
            let rest = &code[at + path.len()..];
            let mut paths = vec![path.clone()];
            if let Some(group) = rest.strip_prefix('{').and_then(|r| r.split_once('}')) {
                paths = (group.0.split(','))
                    .map(|item| format!("{path}{}", item.trim().split(' ').next().unwrap_or("")))
                    .collect();
            }
            out.extend(paths.iter().filter_map(|p| resolve(p)));
        }
    }
    // A parent names its children by relative paths (`shard::select` in session/mod.rs).
    let prefix = format!("{module}::");
    for child in known.iter().filter_map(|k| k.strip_prefix(&prefix)) {
        let first = child.split("::").next().unwrap_or(child);
        let named = code.match_indices(&format!("{first}::")).any(|(at, _)| {
            !code[..at].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        });
        if named && !child.contains("::") && !module.is_empty() {
            out.insert(format!("{prefix}{child}"));
        }
    }
    out.retain(|m| m != module && !m.is_empty());
    out
}

/// A circle of imports between modules, if any (depth-first search, one path shown).
fn find_circle(
    edges: &std::collections::BTreeMap<String, BTreeSet<String>>,
) -> Option<Vec<String>> {
    fn visit(
        m: &str,
        edges: &std::collections::BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == m) {
            let mut circle = path[i..].to_vec();
            circle.push(m.to_string());
            return Some(circle);
        }
        if !done.insert(m.to_string()) {
            return None;
        }
        path.push(m.to_string());
        for next in edges.get(m).into_iter().flatten() {
            if let Some(c) = visit(next, edges, path, done) {
                return Some(c);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    edges
        .keys()
        .find_map(|m| visit(m, edges, &mut Vec::new(), &mut done))
}

/// ARCHITECTURE.md: "Circles left ...: none". A module that imports one that imports it back
/// (through any chain) fails the build, naming the circle.
#[test]
fn no_module_imports_itself_through_others() {
    let mut files = Vec::new();
    sources(&root().join("xtask/src"), &mut files);
    let known: BTreeSet<String> = files.iter().map(|(rel, _)| module_of(rel)).collect();
    let edges: std::collections::BTreeMap<String, BTreeSet<String>> = (files.iter())
        .filter(|(rel, _)| !rel.ends_with("_tests.rs"))
        .map(|(rel, code)| {
            let m = module_of(rel);
            let imports = imports_of(&m, code, &known);
            (m, imports)
        })
        .collect();
    assert!(
        edges["session"].contains("session::shard"),
        "the graph is read"
    );
    assert!(
        edges["cmd::vm_e2e"].contains("session"),
        "{:?}",
        edges["cmd::vm_e2e"]
    );
    if let Some(circle) = find_circle(&edges) {
        panic!("import circle: {}", circle.join(" -> "));
    }
    // The checker finds one when there is one.
    let mut planted = edges.clone();
    planted
        .get_mut("session::report")
        .unwrap()
        .insert("session::merge".into());
    assert!(find_circle(&planted).is_some());
}
