//! The source's layers point down only: a module may use the modules of lower
//! layers, never those of its own layer's siblings or of higher ones. Reads
//! `src/` as text and names every import that breaks the rule.

use std::collections::BTreeMap;
use std::path::Path;

/// Each top-level module's layer, lowest first. Modules on the ground floor
/// (layer 0) may use one another; above it, a module uses only lower layers.
const LAYERS: &[(usize, &[&str])] = &[
    (
        0,
        &[
            "batch", "blocking", "clock", "error", "fault", "health", "loadgen", "logcap",
            "metric", "model", "otlp", "retry", "shutdown", "tenant",
        ],
    ),
    (1, &["decode"]),
    (2, &["pg", "kafka"]),
    (3, &["poison"]),
    (4, &["worker", "http"]),
    (5, &["coordinator"]),
    (6, &["config"]),
    (7, &["cmd"]),
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS
        .iter()
        .find(|(_, modules)| modules.contains(&module))
        .map(|(layer, _)| *layer)
}

/// Every `.rs` file under `dir`, with the top-level module it belongs to.
fn sources(dir: &Path, out: &mut Vec<(String, String)>) {
    for entry in std::fs::read_dir(dir).expect("src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
            let rel = path.strip_prefix(&src).expect("under src");
            let top = rel
                .components()
                .next()
                .and_then(|c| c.as_os_str().to_str())
                .map(|s| s.trim_end_matches(".rs").to_string())
                .expect("module");
            let text = std::fs::read_to_string(&path).expect("read");
            out.push((top, text));
        }
    }
}

/// The top-level modules a file names as `crate::<module>`.
fn imports(text: &str) -> Vec<String> {
    text.match_indices("crate::")
        .map(|(at, m)| {
            text[at + m.len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect::<String>()
        })
        .filter(|name| !name.is_empty() && name.chars().next().is_some_and(char::is_lowercase))
        .collect()
}

#[test]
fn every_module_uses_only_lower_layers() {
    let mut files = Vec::new();
    sources(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut files,
    );
    let mut violations: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (module, text) in &files {
        if module == "main" || module == "lib" {
            continue;
        }
        let Some(own) = layer_of(module) else {
            panic!("src/{module} is in no layer: add it to LAYERS");
        };
        for target in imports(text) {
            if target == *module {
                continue;
            }
            let Some(theirs) = layer_of(&target) else {
                panic!("src/{module} uses crate::{target}, which is in no layer");
            };
            let upward = theirs > own;
            let sideways = theirs == own && own > 0;
            if upward || sideways {
                violations
                    .entry(format!("{module} (layer {own})"))
                    .or_default()
                    .push(format!("{target} (layer {theirs})"));
            }
        }
    }
    for targets in violations.values_mut() {
        targets.sort();
        targets.dedup();
    }
    assert!(
        violations.is_empty(),
        "imports that point up or sideways: {violations:#?}"
    );
}

#[test]
fn the_rule_catches_an_upward_import() {
    assert_eq!(
        imports("use crate::config::X; crate::pg::f()"),
        ["config", "pg"]
    );
    assert!(layer_of("config") > layer_of("decode"));
    assert_eq!(layer_of("pg"), layer_of("kafka"));
}

#[test]
fn the_readme_layout_shows_these_layers() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    let layout = readme
        .split("## Layout")
        .nth(1)
        .expect("a Layout section")
        .split("\n## ")
        .next()
        .unwrap_or_default();
    let mut shown: Vec<(usize, Vec<String>)> = Vec::new();
    for row in layout.lines().filter(|l| l.starts_with("| ")) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let Some(layer) = cells.get(1).and_then(|c| c.parse::<usize>().ok()) else {
            continue;
        };
        let mut modules: Vec<String> = cells[2]
            .split('`')
            .skip(1)
            .step_by(2)
            .map(|m| m.trim_end_matches('/').trim_end_matches(".rs").to_string())
            .collect();
        modules.sort();
        shown.push((layer, modules));
    }
    shown.sort();
    let mut expected: Vec<(usize, Vec<String>)> = LAYERS
        .iter()
        .map(|(layer, modules)| {
            let mut m: Vec<String> = modules.iter().map(|s| s.to_string()).collect();
            m.sort();
            (*layer, m)
        })
        .collect();
    expected.sort();
    assert_eq!(shown, expected, "README's layer table against LAYERS");
}
