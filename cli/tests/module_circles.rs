//! No import circles between the modules of any crate of the workspace (issue 23): a module
//! graph is read from the sources, one node per module file, one edge per `crate::` /
//! `super::` path that names another module (the deepest module a path reaches), and every
//! strongly connected component larger than one module is a circle. Edges between a module
//! and its own ancestors (a child using its parent's items, a parent re-exporting its
//! children) are not circles of concepts and are left out.
//!
//! `the_workspace_has_no_import_circles` fails on a new circle and names its modules; the
//! other tests show the checker finds a made-up circle and accepts a chain.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module paths (`["model", "layers"]`) of a crate's `src/` files, with their sources.
fn crate_modules(src: &Path) -> BTreeMap<Vec<String>, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display())) {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel: PathBuf = path.strip_prefix(src).expect("under src").with_extension("");
            let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
            if matches!(parts.last().map(String::as_str), Some("mod" | "lib" | "main")) {
                parts.pop();
            }
            out.insert(parts, std::fs::read_to_string(&path).expect("a source file"));
        }
    }
    out
}

/// The paths a source refers to through `crate::` or `super::`, as segments relative to
/// the crate root (`super::` resolved against `module`). `use` groups (`use crate::a::{b, c}`)
/// give one path per member; test modules (`#[cfg(test)]` to the end of the file) are left
/// out, since tests may reach anywhere.
fn referenced_paths(module: &[String], source: &str) -> Vec<Vec<String>> {
    let code = match source.find("#[cfg(test)]\nmod tests") {
        Some(at) => &source[..at],
        None => source,
    };
    let code: String = code.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n");
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    for start in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(at) = code[from..].find(start).map(|i| i + from) {
            from = at + start.len();
            if at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_') {
                continue;
            }
            // the whole path: identifiers, `::`, `super::` chains and one `{...}` group
            let rest = &code[at..];
            let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')).unwrap_or(rest.len());
            let mut path = rest[..end].trim_end_matches(':').to_string();
            let mut group = Vec::new();
            if rest[end..].starts_with('{') {
                if let Some(close) = rest[end..].find('}') {
                    group = rest[end + 1..end + close].split(',').map(|m| m.split_whitespace().next().unwrap_or("").split("::").next().unwrap_or("").to_string()).filter(|m| !m.is_empty() && m != "self").collect();
                }
            }
            let mut base: Vec<String> = if path == "crate" || path.starts_with("crate::") {
                path = path.trim_start_matches("crate").trim_start_matches("::").to_string();
                Vec::new()
            } else {
                let mut b = module.to_vec();
                while let Some(rest) = path.strip_prefix("super::") {
                    b.pop();
                    path = rest.to_string();
                }
                if path == "super" {
                    b.pop();
                    path.clear();
                }
                b
            };
            base.extend(path.split("::").filter(|s| !s.is_empty()).map(str::to_string));
            if group.is_empty() {
                out.push(base);
            } else {
                for m in group {
                    let mut p = base.clone();
                    p.push(m);
                    out.push(p);
                }
            }
        }
    }
    out
}

/// Module graph: for each module, the other modules it refers to (not its ancestors or
/// descendants).
fn graph(modules: &BTreeMap<Vec<String>, String>) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let mut g = BTreeMap::new();
    for (m, src) in modules {
        let mut edges = BTreeSet::new();
        for path in referenced_paths(m, src) {
            // the deepest module the path reaches
            let Some(target) = (1..=path.len()).rev().map(|n| path[..n].to_vec()).find(|p| modules.contains_key(p)) else { continue };
            let related = target.starts_with(m) || m.starts_with(&target);
            if !related {
                edges.insert(target);
            }
        }
        g.insert(m.clone(), edges);
    }
    g
}

/// Strongly connected components with more than one module (Tarjan), each sorted.
fn circles(g: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Vec<Vec<String>> {
    struct T<'a> {
        g: &'a BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        index: BTreeMap<&'a Vec<String>, usize>,
        low: BTreeMap<&'a Vec<String>, usize>,
        stack: Vec<&'a Vec<String>>,
        on: BTreeSet<&'a Vec<String>>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a Vec<String>) {
        let i = t.index.len();
        t.index.insert(v, i);
        t.low.insert(v, i);
        t.stack.push(v);
        t.on.insert(v);
        for w in &t.g[v] {
            if !t.index.contains_key(w) {
                visit(t, w);
                let lw = t.low[w];
                let lv = t.low.get_mut(v).expect("visited");
                *lv = (*lv).min(lw);
            } else if t.on.contains(w) {
                let iw = t.index[w];
                let lv = t.low.get_mut(v).expect("visited");
                *lv = (*lv).min(iw);
            }
        }
        if t.low[v] == t.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                comp.push(w.join("::"));
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                t.out.push(comp);
            }
        }
    }
    let mut t = T { g, index: BTreeMap::new(), low: BTreeMap::new(), stack: Vec::new(), on: BTreeSet::new(), out: Vec::new() };
    for v in g.keys() {
        if !t.index.contains_key(v) {
            visit(&mut t, v);
        }
    }
    t.out
}

fn modules_of(files: &[(&str, &str)]) -> BTreeMap<Vec<String>, String> {
    files.iter().map(|(m, s)| (m.split("::").filter(|p| !p.is_empty()).map(str::to_string).collect(), s.to_string())).collect()
}

#[test]
fn a_made_up_circle_is_found() {
    let m = modules_of(&[
        ("", "mod a; mod b; mod c;"),
        ("a", "use crate::b::thing;"),
        ("b", "pub fn thing() { super::c::other() }"),
        ("c", "use crate::{a, d};\npub fn other() { a::x() }"),
    ]);
    let found = circles(&graph(&m));
    assert_eq!(found, vec![vec!["a".to_string(), "b".into(), "c".into()]], "{found:?}");
}

#[test]
fn a_chain_and_parent_child_references_are_not_circles() {
    let m = modules_of(&[
        ("", "mod a; mod b;"),
        ("a", "pub use self::inner::X; mod inner; use crate::b::y;"),
        ("a::inner", "use super::helper; pub struct X;"),
        ("b", "pub fn y() {}\n#[cfg(test)]\nmod tests { use crate::a::X; }"),
    ]);
    assert!(circles(&graph(&m)).is_empty());
}

#[test]
fn the_workspace_has_no_import_circles() {
    // ABLATE_MODULE_ROOT: check another checkout (e.g. an older commit's) with this checker
    let root = std::env::var_os("ABLATE_MODULE_ROOT").map(PathBuf::from).unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace root").to_path_buf());
    let mut found = Vec::new();
    for krate in ["proto", "trainer", "worker", "coordinator", "cli", "cuda-emu"] {
        let src = root.join(krate).join("src");
        if !src.is_dir() {
            continue;
        }
        for c in circles(&graph(&crate_modules(&src))) {
            found.push(format!("{krate}: {}", c.join(" <-> ")));
        }
    }
    assert!(found.is_empty(), "import circles between modules (resolve each by the direction its concepts depend on):\n{}", found.join("\n"));
}
