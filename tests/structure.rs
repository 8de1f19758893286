//! The library's modules form layers: no module reaches, through `crate::`
//! paths (imports, re-exports at the crate root, or doc links), a module
//! that reaches it back. Read from the sources, without a device.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module name -> the library modules its non-test code names.
fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let read = |name: &str| std::fs::read_to_string(src.join(name)).expect("library source");
    // A folder module's files all count as that module.
    let mut modules: BTreeMap<String, String> = BTreeMap::new();
    for entry in std::fs::read_dir(&src).expect("src/") {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        let files: Vec<String> = if src.join(&name).is_dir() {
            let dir = std::fs::read_dir(src.join(&name)).expect("module folder");
            dir.map(|f| format!("{name}/{}", f.unwrap().file_name().to_string_lossy())).collect()
        } else {
            vec![name.clone()]
        };
        let module = name.trim_end_matches(".rs");
        if module == "lib" {
            continue;
        }
        for file in files.iter().filter(|f| f.ends_with(".rs")) {
            let text = read(file);
            let code = text.split("#[cfg(test)]").next().unwrap_or_default();
            modules.entry(module.to_string()).or_default().push_str(code);
        }
    }
    // `pub use module::{A, B}` at the root: `crate::A` is module's.
    let mut reexported: BTreeMap<String, String> = BTreeMap::new();
    for line in read("lib.rs").lines().filter_map(|l| l.trim().strip_prefix("pub use ")) {
        if let Some((module, names)) = line.trim_end_matches(';').split_once("::") {
            for name in names.trim_matches(|c| c == '{' || c == '}').split(',') {
                reexported.insert(name.trim().to_string(), module.to_string());
            }
        }
    }
    let owner = |name: &str| {
        if modules.contains_key(name) {
            Some(name.to_string())
        } else {
            reexported.get(name).cloned()
        }
    };
    let mut graph = BTreeMap::new();
    for (module, code) in &modules {
        let mut deps = BTreeSet::new();
        for (i, _) in code.match_indices("crate::") {
            let rest = &code[i + "crate::".len()..];
            let names: Vec<&str> = match rest.strip_prefix('{') {
                Some(group) => group.split('}').next().unwrap_or("").split(',').collect(),
                None => vec![rest],
            };
            for name in names {
                let ident: String = name.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                if let Some(dep) = owner(&ident).filter(|d| d != module) {
                    deps.insert(dep);
                }
            }
        }
        graph.insert(module.clone(), deps);
    }
    graph
}

#[test]
fn library_modules_have_no_import_circles() {
    let graph = module_graph();
    let read = graph.len() > 20 && graph["context"].contains("kernels") && graph["batch_norm"].contains("tiling");
    assert!(read && graph["family"].contains("stat_plan"), "the graph was read: {graph:?}");
    // Depth-first search; a module met again while still on the path closes a circle.
    fn visit(m: &str, g: &BTreeMap<String, BTreeSet<String>>, path: &mut Vec<String>, done: &mut BTreeSet<String>) {
        if let Some(i) = path.iter().position(|p| p == m) {
            panic!("import circle: {} -> {m}", path[i..].join(" -> "));
        }
        if !done.insert(m.to_string()) {
            return;
        }
        path.push(m.to_string());
        for dep in &g[m] {
            visit(dep, g, path, done);
        }
        path.pop();
    }
    let mut done = BTreeSet::new();
    for m in graph.keys() {
        visit(m, &graph, &mut Vec::new(), &mut done);
    }
}
