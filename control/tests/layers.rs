//! The layers of `control/src` (listed in `lib.rs`) depend only downwards, and no two modules
//! depend on each other in a cycle. Read from the sources: every `crate::` path, including those
//! inside `use crate::{...}` trees, is an edge from the file that names it.
use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::Path,
};

/// Bottom first; a layer may use itself and those before it.
const LAYERS: &[&str] = &[
    "sys", "source", "compile", "datapath", "observe", "cli", "daemon",
];

/// `src/datapath/maps.rs` → `datapath::maps`; `src/source/mod.rs` → `source`.
fn module_of(rel: &Path) -> String {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts.join("::")
}

/// Expands a use tree (`a::{b, c::{d, e}}`) into its paths, each cut to two segments.
fn expand(tree: &str, prefix: &str, out: &mut BTreeSet<String>) {
    let tree = tree.trim();
    if let Some(open) = tree.find('{') {
        let head = tree[..open].trim().trim_end_matches("::");
        let inner = &tree[open + 1..tree.rfind('}').expect("unbalanced use tree")];
        let prefix = join(prefix, head);
        let mut depth = 0;
        let mut start = 0;
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand(&inner[start..i], &prefix, out);
                    start = i + 1;
                }
                _ => {}
            }
        }
        expand(&inner[start..], &prefix, out);
    } else if !tree.is_empty() && tree != "self" {
        let path = join(prefix, tree.split(" as ").next().unwrap_or(tree).trim());
        out.insert(path.split("::").take(2).collect::<Vec<_>>().join("::"));
    } else if tree == "self" && !prefix.is_empty() {
        out.insert(prefix.split("::").take(2).collect::<Vec<_>>().join("::"));
    }
}

fn join(prefix: &str, head: &str) -> String {
    match (prefix.is_empty(), head.is_empty()) {
        (true, _) => head.to_string(),
        (_, true) => prefix.to_string(),
        _ => format!("{prefix}::{head}"),
    }
}

/// Every module path `text` names through `crate::`.
fn references(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("crate::") {
        let after = &rest[at + "crate::".len()..];
        if after.starts_with('{') {
            let mut depth = 0;
            let end = after
                .char_indices()
                .find(|&(_, c)| {
                    match c {
                        '{' => depth += 1,
                        '}' => depth -= 1,
                        _ => {}
                    }
                    depth == 0
                })
                .map(|(i, _)| i)
                .expect("unbalanced use tree");
            expand(&after[..=end], "", &mut out);
            rest = &after[end..];
        } else {
            let path: String = after
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            expand(path.trim_end_matches(':'), "", &mut out);
            rest = after;
        }
    }
    out
}

/// The text without comment lines: a doc link to another module is not a dependency.
fn code_of(text: &str) -> String {
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn sources() -> BTreeMap<String, String> {
    fn visit(dir: &Path, root: &Path, out: &mut BTreeMap<String, String>) {
        for e in fs::read_dir(dir).unwrap() {
            let path = e.unwrap().path();
            if path.is_dir() {
                visit(&path, root, out);
            } else if path.extension().is_some_and(|x| x == "rs") {
                let rel = path.strip_prefix(root).unwrap();
                if rel != Path::new("lib.rs") && rel != Path::new("main.rs") {
                    out.insert(module_of(rel), code_of(&fs::read_to_string(&path).unwrap()));
                }
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = BTreeMap::new();
    visit(&root, &root, &mut out);
    out
}

fn rank(module: &str) -> usize {
    let layer = module.split("::").next().unwrap();
    LAYERS
        .iter()
        .position(|l| *l == layer)
        .unwrap_or_else(|| panic!("module {module} is in no layer of LAYERS"))
}

#[test]
fn layers_depend_only_downwards() {
    let mut wrong = Vec::new();
    for (module, text) in sources() {
        for dep in references(&text) {
            if rank(&dep) > rank(&module) {
                wrong.push(format!("{module} uses {dep}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "upward dependencies:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn no_module_cycles() {
    let srcs = sources();
    let graph: BTreeMap<String, BTreeSet<String>> = srcs
        .iter()
        .map(|(m, text)| {
            let deps = references(text)
                .into_iter()
                .filter(|d| d != m && srcs.contains_key(d))
                .collect();
            (m.clone(), deps)
        })
        .collect();
    // Depth-first search; a back edge to a module on the stack is a cycle.
    fn dfs(
        m: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = stack.iter().position(|s| s == m) {
            let mut cycle = stack[i..].to_vec();
            cycle.push(m.to_string());
            return Some(cycle);
        }
        if !done.insert(m.to_string()) {
            return None;
        }
        stack.push(m.to_string());
        for d in &graph[m] {
            if let Some(c) = dfs(d, graph, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        None
    }
    let mut done = BTreeSet::new();
    for m in graph.keys() {
        if let Some(cycle) = dfs(m, &graph, &mut Vec::new(), &mut done) {
            panic!("module cycle: {}", cycle.join(" -> "));
        }
    }
}

/// The checker itself: it must see an upward edge and a cycle where there is one.
#[test]
fn references_are_read_from_use_trees() {
    let refs = references(
        "use crate::{cli::args::{A, B}, datapath::{conntrack, maps::Maps}};\n\
         fn f() { crate::observe::counters::read(); }",
    );
    let want: BTreeSet<String> = [
        "cli::args",
        "datapath::conntrack",
        "datapath::maps",
        "observe::counters",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(refs, want);
    assert!(rank("cli::args") > rank("datapath::maps"));
    assert_eq!(module_of(Path::new("source/mod.rs")), "source");
}
