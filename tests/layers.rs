//! The house runs one way: no import circle among the library's files, no file importing a
//! layer above its own, and no package depending on one above it (README's "Layout"). Each
//! failure names the offending `use` (file and line).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The library's layers, top first; a module not named here, or inside one named here, is in
/// the lowest. A file may import its own layer and the ones below.
const LAYERS: &[(&str, u8)] = &[("azure", 4), ("snapshot", 4), ("client", 3), ("engine", 2)];

/// Each workspace package and the packages of this workspace it may depend on.
const PACKAGES: &[(&str, &[&str])] = &[
    ("crates/core", &[]),
    (".", &["keyvault-failover-core"]),
    ("crates/emulator", &["keyvault-failover"]),
    ("crates/sim", &["keyvault-failover"]),
    ("crates/agent", &["keyvault-failover"]),
    (
        "crates/bench",
        &[
            "keyvault-failover",
            "keyvault-failover-emulator",
            "keyvault-failover-sim",
            "keyvault-failover-agent",
        ],
    ),
    (
        "crates/cli",
        &[
            "keyvault-failover",
            "keyvault-failover-emulator",
            "keyvault-failover-sim",
            "keyvault-failover-agent",
            "keyvault-failover-bench",
        ],
    ),
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `src/engine/calls.rs` → `engine::calls`; `src/engine/mod.rs` → `engine`; `src/lib.rs` → ``.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    parts.join("::")
}

/// The paths after `crate::` in `code`, each with its byte offset: `crate::a::b::C` gives
/// `a::b::C`; `crate::{a, b::{c, d}}` gives `a` and `b` (a group may span lines).
fn crate_paths(code: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = code[from..].find("crate::") {
        let at = from + i;
        from = at + "crate::".len();
        let before = code[..at].chars().last();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // `keyvault_failover_core::` and the like
        }
        let rest = &code[from..];
        if let Some(group) = rest.strip_prefix('{') {
            let (mut depth, mut item) = (0u32, String::new());
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.push((at, std::mem::take(&mut item)));
                        continue;
                    }
                    _ => {}
                }
                if depth == 0 && c != '}' {
                    item.push(c);
                }
            }
            out.push((at, item));
        } else {
            let end = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(rest.len());
            out.push((at, rest[..end].to_string()));
        }
    }
    out.into_iter()
        .map(|(at, p)| (at, p.trim().trim_end_matches(':').to_string()))
        .filter(|(_, p)| !p.is_empty())
        .collect()
}

struct Edge {
    to: String,
    at: String,
}

/// Every file's imports of other library modules, with where each is written. Items that
/// `lib.rs` re-exports (`crate::FailoverClient`) count as imports of the module they come from.
fn graph() -> BTreeMap<String, Vec<Edge>> {
    let src = root().join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(&src, f)).collect();
    // lib.rs's re-exports: item name → the module it comes from.
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    let mut reexport = BTreeMap::new();
    for line in lib.lines().filter(|l| l.starts_with("pub use ")) {
        let path = line["pub use ".len()..].trim_end_matches(';');
        let Some((module, items)) = path.split_once("::") else {
            continue;
        };
        if !modules.contains(module) {
            continue;
        }
        for item in items.trim_matches(|c| c == '{' || c == '}').split(',') {
            let name = item.trim().rsplit("::").next().unwrap_or("").to_string();
            reexport.insert(name, module.to_string());
        }
    }
    let resolve = |path: &str| -> Option<String> {
        let segs: Vec<&str> = path.split("::").collect();
        for n in (1..=segs.len()).rev() {
            let m = segs[..n].join("::");
            if modules.contains(&m) {
                return Some(m);
            }
        }
        reexport.get(segs[0]).cloned()
    };
    let mut g = BTreeMap::new();
    for f in &files {
        let from = module_of(&src, f);
        if from.is_empty() {
            continue; // lib.rs declares and re-exports: it is above everything
        }
        let text = std::fs::read_to_string(f).unwrap();
        // Comments out, lines kept: offsets still give line numbers.
        let code: String = text
            .lines()
            .map(|l| l.split("//").next().unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n");
        let lines: Vec<&str> = text.lines().collect();
        let mut edges = Vec::new();
        for (offset, p) in crate_paths(&code) {
            if let Some(to) = resolve(&p) {
                // A child naming its parent is ownership, not a loop.
                if to != from && !from.starts_with(&format!("{to}::")) {
                    let n = code[..offset].matches('\n').count();
                    let at = format!(
                        "{}:{}: {}",
                        f.strip_prefix(root()).unwrap().display(),
                        n + 1,
                        lines.get(n).map_or("", |l| l.trim())
                    );
                    edges.push(Edge { to, at });
                }
            }
        }
        g.insert(from, edges);
    }
    g
}

#[test]
fn the_library_has_no_import_circle() {
    let g = graph();
    // Depth-first search; a back edge closes a circle, reported with the `use` of each step.
    fn visit<'a>(
        m: &'a str,
        g: &'a BTreeMap<String, Vec<Edge>>,
        state: &mut BTreeMap<&'a str, u8>,
        path: &mut Vec<(&'a str, &'a Edge)>,
        found: &mut Vec<String>,
    ) {
        state.insert(m, 1);
        for e in g.get(m).map(Vec::as_slice).unwrap_or(&[]) {
            match state.get(e.to.as_str()) {
                Some(1) => {
                    let start = path.iter().position(|(f, _)| *f == e.to).unwrap_or(0);
                    let mut lines: Vec<&str> =
                        path[start..].iter().map(|(_, p)| p.at.as_str()).collect();
                    lines.push(&e.at);
                    found.push(lines.join("\n  "));
                }
                Some(_) => {}
                None => {
                    path.push((m, e));
                    visit(&e.to, g, state, path, found);
                    path.pop();
                }
            }
        }
        state.insert(m, 2);
    }
    let mut state = BTreeMap::new();
    let mut found = Vec::new();
    for m in g.keys() {
        if !state.contains_key(m.as_str()) {
            visit(m, &g, &mut state, &mut Vec::new(), &mut found);
        }
    }
    assert!(
        g.len() > 10,
        "the library's files were read: {:?}",
        g.keys()
    );
    assert!(
        found.is_empty(),
        "{} import circle(s) in src/:\n  {}",
        found.len(),
        found.join("\n\n  ")
    );
}

#[test]
fn no_library_file_imports_a_layer_above_its_own() {
    // A module's layer is that of the longest name in LAYERS it is, or is inside of
    // (`client::builder` is in `client`'s).
    let layer = |m: &str| {
        LAYERS
            .iter()
            .filter(|(name, _)| {
                m == *name
                    || m.strip_prefix(*name)
                        .is_some_and(|rest| rest.starts_with("::"))
            })
            .max_by_key(|(name, _)| name.len())
            .map_or(1, |(_, l)| *l)
    };
    let mut upward = Vec::new();
    for (from, edges) in graph() {
        for e in edges {
            if layer(&e.to) > layer(&from) {
                upward.push(format!(
                    "{} (layer {}) imports {} (layer {})",
                    e.at,
                    layer(&from),
                    e.to,
                    layer(&e.to)
                ));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports that run up:\n  {}",
        upward.join("\n  ")
    );
}

#[test]
fn no_package_depends_on_one_above_it_and_the_core_has_no_runtime() {
    let mut wrong = Vec::new();
    for (dir, allowed) in PACKAGES {
        let path = root().join(dir).join("Cargo.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let manifest: toml::Table = text.parse().unwrap();
        let deps = manifest
            .get("dependencies")
            .and_then(|d| d.as_table())
            .cloned()
            .unwrap_or_default();
        for name in deps.keys() {
            if name.starts_with("keyvault-failover") && !allowed.contains(&name.as_str()) {
                wrong.push(format!("{dir}/Cargo.toml: [dependencies] {name}"));
            }
        }
        if *dir == "crates/core" {
            for name in ["tokio", "hyper", "reqwest", "azure_core"] {
                if deps.contains_key(name) {
                    wrong.push(format!(
                        "crates/core/Cargo.toml: the core depends on {name}"
                    ));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "dependencies that run up:\n  {}",
        wrong.join("\n  ")
    );
}
