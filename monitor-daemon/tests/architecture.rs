//! The house stays one-way: every `crate::…` path in the library's code (tests aside) must name
//! a component earlier in [`FLOW`] than the one it is written in, or the component itself; and
//! no two files of one component may import each other, however indirectly.
//!
//! The layering is written once, here. A new module must be placed in it, which is the point:
//! where it goes is a decision, not an accident of whoever imported it first.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The components, bottom first: shared vocabulary, the sans-IO stages in flow order, the edges
/// in flow order, the commands. A component may import only the ones before it.
const FLOW: &[&str] = &[
    "shared::model",
    "shared::settings",
    "shared::secret_file",
    "shared::token",
    "stages::decode",
    "stages::reassembly",
    "stages::http",
    "stages::redcap",
    "stages::health",
    "stages::policy",
    "stages::cluster",
    "stages::pipeline",
    "stages::coverage",
    "stages::certify",
    "stages::usage",
    "stages::lifecycle",
    "edges::hardening",
    "edges::capture",
    "edges::output",
    "edges::records",
    "edges::store",
    "edges::directory",
    "edges::alerts",
    "edges::hooks",
    "edges::notify",
    "edges::canary",
    "edges::actions",
    "edges::shared_state",
    "edges::telemetry",
    "edges::api",
    "commands::config",
    "commands::preflight",
    "commands::html",
    "commands::analyze",
    "commands::certify",
    "commands::report",
    "commands::run",
];

/// One source file: its module path (`edges::capture::kernel`) and its code without tests.
struct Source {
    module: Vec<String>,
    path: PathBuf,
    code: String,
}

fn sources() -> Vec<Source> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut found = Vec::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            let name = path.file_name().unwrap().to_str().unwrap();
            // Test files may reach anywhere: they are not part of the flow.
            if !name.ends_with(".rs") || name == "tests.rs" || name.ends_with("_tests.rs") {
                continue;
            }
            let relative = path.strip_prefix(&root).unwrap().with_extension("");
            let mut module: Vec<String> = relative
                .iter()
                .map(|part| part.to_str().unwrap().to_owned())
                .collect();
            if module.last().is_some_and(|last| last == "mod") {
                module.pop();
            }
            // The binary's files (main.rs, admin.rs) and the crate root are above the house.
            if module.len() < 2 {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let code = match text.find("#[cfg(test)]\nmod tests {") {
                Some(at) => &text[..at],
                None => &text,
            };
            // Comments (doc links included) name modules without importing them.
            let code: String = code
                .lines()
                .filter(|line| !line.trim_start().starts_with("//"))
                .flat_map(|line| [line, "\n"])
                .collect();
            found.push(Source { module, path, code });
        }
    }
    found.sort_by(|a, b| a.module.cmp(&b.module));
    found
}

/// The component a module belongs to: the longest entry of [`FLOW`] that is a prefix of it.
fn component(module: &[String]) -> Option<usize> {
    let joined = module.join("::");
    FLOW.iter()
        .enumerate()
        .filter(|(_, c)| joined == **c || joined.starts_with(&format!("{c}::")))
        .max_by_key(|(_, c)| c.len())
        .map(|(i, _)| i)
}

/// Every `crate::a::b…` path in `code`, as its segments (stopping at `{`, `*` or a non-path
/// character); `use crate::{a, b}` is not used in this crate and would be caught as `crate::`.
fn crate_paths(code: &str) -> Vec<Vec<String>> {
    let mut paths = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        if code[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let rest = &code[at + "crate::".len()..];
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(rest.len());
        let segments: Vec<String> = rest[..end]
            .split("::")
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        paths.push(segments);
    }
    paths
}

#[test]
fn every_module_belongs_to_a_component_of_the_flow() {
    let lost: Vec<String> = sources()
        .iter()
        .filter(|s| component(&s.module).is_none())
        .map(|s| s.path.display().to_string())
        .collect();
    assert!(
        lost.is_empty(),
        "modules outside the layering; place them in FLOW (tests/architecture.rs): {lost:#?}"
    );
}

#[test]
fn imports_run_down_the_flow_only() {
    let mut against = Vec::new();
    for source in sources() {
        let Some(own) = component(&source.module) else {
            continue;
        };
        for path in crate_paths(&source.code) {
            if let Some(target) = component(&path)
                && target > own
            {
                against.push(format!(
                    "{} ({}) imports crate::{} ({}), which comes after it",
                    source.path.display(),
                    FLOW[own],
                    path.join("::"),
                    FLOW[target]
                ));
            }
        }
    }
    assert!(
        against.is_empty(),
        "imports against the flow:\n{}",
        against.join("\n")
    );
}

/// Within one component, the files that import each other (by `crate::` or `super::` paths,
/// a parent `mod.rs` and its children aside: a parent declares and re-exports its children)
/// must not form a circle.
#[test]
fn no_circle_between_the_files_of_a_component() {
    let sources = sources();
    let modules: BTreeSet<Vec<String>> = sources.iter().map(|s| s.module.clone()).collect();
    // The longest known module a path names.
    let resolve = |path: &[String]| -> Option<Vec<String>> {
        (1..=path.len())
            .rev()
            .map(|n| path[..n].to_vec())
            .find(|m| modules.contains(m))
    };
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for source in &sources {
        let mut targets = BTreeSet::new();
        for path in crate_paths(&source.code) {
            targets.extend(resolve(&path));
        }
        // `super::x`: relative to the file's parent module.
        for (at, _) in source.code.match_indices("super::") {
            if source.code[..at].ends_with("super::") {
                continue;
            }
            let rest = &source.code[at..];
            let end = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(rest.len());
            let mut base = source.module.clone();
            let mut segments = rest[..end].split("::").filter(|s| !s.is_empty()).peekable();
            while segments.peek() == Some(&"super") {
                segments.next();
                base.pop();
            }
            base.extend(segments.map(str::to_owned));
            targets.extend(resolve(&base));
        }
        let own = &source.module;
        targets.retain(|t| {
            t != own
                && component(t) == component(own)
                // parent and child
                && !t.starts_with(own)
                && !own.starts_with(t)
        });
        edges.insert(own.clone(), targets);
    }
    let mut circles = Vec::new();
    for start in edges.keys() {
        // Depth-first from `start`, looking for a way back to it.
        let mut stack = vec![(start.clone(), vec![start.join("::")])];
        let mut seen = BTreeSet::new();
        while let Some((at, trail)) = stack.pop() {
            for next in edges.get(&at).into_iter().flatten() {
                if next == start {
                    circles.push(trail.join(" -> ") + " -> " + &start.join("::"));
                } else if seen.insert(next.clone()) {
                    let mut longer = trail.clone();
                    longer.push(next.join("::"));
                    stack.push((next.clone(), longer));
                }
            }
        }
    }
    assert!(circles.is_empty(), "circles:\n{}", circles.join("\n"));
}

/// The test itself: an import against the flow and a circle are both seen.
#[test]
fn the_checks_see_what_they_look_for() {
    let up =
        crate_paths("use crate::commands::config::Config;\nlet x = crate::shared::model::Span(1);");
    assert_eq!(up[0], ["commands", "config", "Config"]);
    assert_eq!(up[1], ["shared", "model", "Span"]);
    let stage = component(&["stages".into(), "policy".into(), "enforce".into()]).unwrap();
    let command = component(&up[0]).unwrap();
    assert!(
        command > stage,
        "a stage importing a command is against the flow"
    );
    assert!(crate_paths("notcrate::x").is_empty());
}
