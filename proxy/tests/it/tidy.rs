//! Rules about the shape of keyswap's own source, checked the way rust-analyzer's tidy tests
//! check its codebase: they read the files and fail naming what breaks a rule.
//!
//! - **Layers**: `proxy/src/lib.rs` declares its top-level modules in layer order, top to
//!   bottom; a module may import (`crate::...`) only modules declared after it.
//! - **No import circle** among the files of `proxy/src` (`crate::` and `super::` paths).
//! - **Size**: outside its tests, no file of `proxy/src` or `scrub/src` is over
//!   [`MAX_FILE_LINES`] lines and no function over [`MAX_FN_LINES`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Most lines of a source file, its `#[cfg(test)]` module left out.
const MAX_FILE_LINES: usize = 400;
/// Most lines of one function, signature to closing brace.
const MAX_FN_LINES: usize = 80;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A source file: its path under `src/`, its module path, and its code without tests.
struct Source {
    rel: String,
    module: Vec<String>,
    code: String,
}

fn sources(crate_dir: &str) -> Vec<Source> {
    let src = repo().join(crate_dir).join("src");
    let mut files = Vec::new();
    collect(&src, &mut files);
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let rel = path
                .strip_prefix(&src)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            let text = std::fs::read_to_string(&path).unwrap();
            Source {
                module: module_of(&rel),
                code: without_tests(&text),
                rel,
            }
        })
        .collect()
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `doors/explicit.rs` → [doors, explicit]; `doors/mod.rs` → [doors]; `lib.rs` → [].
fn module_of(rel: &str) -> Vec<String> {
    let trimmed = rel.trim_end_matches(".rs");
    let mut parts: Vec<String> = trimmed.split('/').map(str::to_string).collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

/// The file's text up to its `#[cfg(test)]` module (keyswap keeps tests last), with line
/// comments removed.
fn without_tests(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        if line.trim_start().starts_with("#[cfg(test)]") {
            break;
        }
        let code = match line.find("//") {
            Some(at) if !line[..at].contains('"') => &line[..at],
            _ => line,
        };
        out.push_str(code);
        out.push('\n');
    }
    out
}

/// Every module path the code names through `crate::` or `super::`, resolved against the
/// file's own module. Grouped imports (`crate::a::{b, c}`) name `a`.
fn imports(source: &Source) -> BTreeSet<Vec<String>> {
    let mut found = BTreeSet::new();
    let code = &source.code;
    for (start, _) in code
        .match_indices("crate::")
        .chain(code.match_indices("super::"))
    {
        // `$crate::` in a macro is the crate too; a longer identifier ending in `crate` is not.
        let before = code[..start].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let rest = &code[start..];
        // Segments up to the first one followed by anything but `::`.
        let mut segments: Vec<&str> = Vec::new();
        for piece in rest.split("::") {
            let end = piece
                .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .unwrap_or(piece.len());
            if end > 0 {
                segments.push(&piece[..end]);
            }
            if end < piece.len() || end == 0 {
                break;
            }
        }
        let mut path: Vec<String> = match segments.first() {
            Some(&"crate") => Vec::new(),
            Some(&"super") => {
                let mut parent = source.module.clone();
                parent.pop();
                parent
            }
            _ => continue,
        };
        for segment in &segments[1..] {
            if *segment == "super" {
                path.pop();
            } else {
                path.push(segment.to_string());
            }
        }
        found.insert(path);
    }
    found
}

/// The file a module path lands in: the longest prefix of it that is a file's module.
fn file_of<'s>(path: &[String], files: &'s BTreeMap<Vec<String>, String>) -> Option<&'s String> {
    (1..=path.len())
        .rev()
        .find_map(|n| files.get(&path[..n].to_vec()))
}

/// The top-level modules `lib.rs` declares, in order.
fn layer_order() -> Vec<String> {
    let lib = std::fs::read_to_string(repo().join("proxy/src/lib.rs")).unwrap();
    lib.lines()
        .filter_map(|l| l.trim().strip_prefix("pub mod "))
        .map(|l| l.trim_end_matches(';').to_string())
        .collect()
}

#[test]
fn modules_import_only_the_layers_below_them() {
    let order = layer_order();
    assert!(order.len() > 5, "lib.rs declares the layers: {order:?}");
    let rank = |m: &str| order.iter().position(|o| o == m);
    let mut broken = Vec::new();
    for source in sources("proxy") {
        // main.rs (above every layer) and lib.rs (the declarations) are not in a layer.
        let Some(own) = source.module.first() else {
            continue;
        };
        let own_rank = rank(own).unwrap_or_else(|| panic!("{} is not declared in lib.rs", own));
        for import in imports(&source) {
            let Some(target) = import.first() else {
                continue;
            };
            match rank(target) {
                Some(r) if r > own_rank || target == own => {}
                Some(_) => broken.push(format!(
                    "proxy/src/{} imports crate::{}, a layer above `{own}`",
                    source.rel,
                    import.join("::")
                )),
                None => {}
            }
        }
    }
    assert!(
        broken.is_empty(),
        "imports against the layer order of proxy/src/lib.rs:\n{}",
        broken.join("\n")
    );
}

#[test]
fn no_import_circle_among_the_files_of_proxy_src() {
    let sources = sources("proxy");
    let files: BTreeMap<Vec<String>, String> = sources
        .iter()
        .map(|s| (s.module.clone(), s.rel.clone()))
        .collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for source in &sources {
        let entry = edges.entry(source.rel.clone()).or_default();
        for import in imports(source) {
            if let Some(file) = file_of(&import, &files) {
                if *file != source.rel {
                    entry.insert(file.clone());
                }
            }
        }
    }
    let circles = strongly_connected(&edges)
        .into_iter()
        .filter(|c| c.len() > 1)
        .collect::<Vec<_>>();
    let shown: Vec<String> = circles
        .iter()
        .map(|circle| {
            let ties: Vec<String> = circle
                .iter()
                .flat_map(|from| {
                    edges[from]
                        .iter()
                        .filter(|to| circle.contains(to))
                        .map(move |to| format!("  {from} -> {to}"))
                })
                .collect();
            format!("circle of {}:\n{}", circle.len(), ties.join("\n"))
        })
        .collect();
    assert!(
        shown.is_empty(),
        "import circles in proxy/src:\n{}",
        shown.join("\n")
    );
}

/// Tarjan's strongly connected components.
fn strongly_connected(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct State<'e> {
        edges: &'e BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'e str, usize>,
        low: BTreeMap<&'e str, usize>,
        stack: Vec<&'e str>,
        on_stack: BTreeSet<&'e str>,
        next: usize,
        out: Vec<Vec<String>>,
    }
    fn visit<'e>(s: &mut State<'e>, v: &'e str) {
        s.index.insert(v, s.next);
        s.low.insert(v, s.next);
        s.next += 1;
        s.stack.push(v);
        s.on_stack.insert(v);
        let edges = s.edges;
        for w in edges.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let low = s.low[v].min(s.low[w]);
                s.low.insert(v, low);
            } else if s.on_stack.contains(w) {
                let low = s.low[v].min(s.index[w]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.push(w.to_string());
                if w == v {
                    break;
                }
            }
            component.sort();
            s.out.push(component);
        }
    }
    let mut state = State {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in edges.keys() {
        if !state.index.contains_key(v.as_str()) {
            visit(&mut state, v);
        }
    }
    state.out
}

/// Functions of `code` longer than [`MAX_FN_LINES`]: (first line, name, lines).
fn long_functions(code: &str) -> Vec<(usize, String, usize)> {
    let lines: Vec<&str> = code.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        let Some(at) = trimmed.find("fn ") else {
            continue;
        };
        let head = &trimmed[..at];
        let is_fn = head.split_whitespace().all(|w| {
            matches!(
                w,
                "pub" | "pub(crate)" | "pub(super)" | "async" | "const" | "unsafe" | "extern"
            )
        });
        if !is_fn || trimmed.ends_with(';') {
            continue;
        }
        let indent = line.len() - trimmed.len();
        let close = format!("{}}}", " ".repeat(indent));
        let Some(end) = lines[i..]
            .iter()
            .position(|l| l.starts_with(&close) && l.trim() == "}")
        else {
            continue;
        };
        let length = end + 1;
        if length > MAX_FN_LINES {
            let name: String = trimmed[at + 3..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            out.push((i + 1, name, length));
        }
    }
    out
}

#[test]
fn files_and_functions_stay_small() {
    let mut broken = Vec::new();
    for crate_dir in ["proxy", "scrub"] {
        for source in sources(crate_dir) {
            let lines = source.code.lines().count();
            if lines > MAX_FILE_LINES {
                broken.push(format!(
                    "{crate_dir}/src/{}: {lines} lines outside its tests (at most {MAX_FILE_LINES})",
                    source.rel
                ));
            }
            for (line, name, length) in long_functions(&source.code) {
                broken.push(format!(
                    "{crate_dir}/src/{}:{line}: fn {name} is {length} lines (at most {MAX_FN_LINES})",
                    source.rel
                ));
            }
        }
    }
    assert!(broken.is_empty(), "too large:\n{}", broken.join("\n"));
}

#[test]
fn the_checks_see_what_they_check() {
    // The parsers above, on code written to break each rule.
    let source = Source {
        rel: "pipeline/x.rs".into(),
        module: module_of("pipeline/x.rs"),
        code: without_tests(
            "use crate::doors::explicit::serve;\nuse super::conn::{a, b};\n// use crate::cli;\n#[cfg(test)]\nuse crate::server;\n",
        ),
    };
    let found = imports(&source);
    assert!(found.contains(&vec![
        "doors".to_string(),
        "explicit".into(),
        "serve".into()
    ]));
    assert!(found.contains(&vec!["pipeline".to_string(), "conn".into()]));
    assert_eq!(
        found.len(),
        2,
        "comments and tests are not imports: {found:?}"
    );
    let long = format!(
        "fn big() {{\n{}}}\n",
        "    let x = 1;\n".repeat(MAX_FN_LINES)
    );
    assert_eq!(long_functions(&long).len(), 1);
    let short = format!(
        "fn small() {{\n{}}}\n",
        "    let x = 1;\n".repeat(MAX_FN_LINES - 2)
    );
    assert!(long_functions(&short).is_empty());
    let mut edges = BTreeMap::new();
    edges.insert("a".to_string(), BTreeSet::from(["b".to_string()]));
    edges.insert("b".to_string(), BTreeSet::from(["a".to_string()]));
    edges.insert("c".to_string(), BTreeSet::from(["a".to_string()]));
    let circles: Vec<_> = strongly_connected(&edges)
        .into_iter()
        .filter(|c| c.len() > 1)
        .collect();
    assert_eq!(circles, vec![vec!["a".to_string(), "b".to_string()]]);
    assert_eq!(layer_order().first().map(String::as_str), Some("cli"));
}
