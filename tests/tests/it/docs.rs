//! The README and the manual in `docs/` kept true: every relative link and `#anchor` resolves,
//! the config reference documents exactly the keys of `keyswap schema`, and the workspace's
//! `rust-version` is at least what every dependency of `keyswap` declares.
//!
//! Reads only files of this repository and `cargo metadata`; never a secret.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives in the workspace")
        .to_path_buf()
}

/// The markdown files whose links are checked: README.md and every `docs/src/**/*.md`.
fn markdown_files(root: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
            .map(|e| e.expect("a directory entry").path())
            .collect();
        entries.sort();
        for path in entries {
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "md") {
                out.push(path);
            }
        }
    }
    let mut files = vec![root.join("README.md")];
    walk(&root.join("docs/src"), &mut files);
    files
}

/// The lines of a markdown file outside fenced code blocks (``` or ~~~, possibly indented).
fn prose_lines(text: &str) -> Vec<(usize, &str)> {
    let mut fence: Option<&str> = None;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let marker = ["```", "~~~"].into_iter().find(|m| trimmed.starts_with(m));
        match (fence, marker) {
            (None, Some(m)) => fence = Some(m),
            (Some(f), Some(m)) if f == m => fence = None,
            (None, None) => out.push((n + 1, line)),
            _ => {}
        }
    }
    out
}

/// Inline code spans removed, so a `](x)` inside backticks is not taken for a link.
fn without_code_spans(line: &str) -> String {
    let mut out = String::new();
    let mut in_code = false;
    for ch in line.chars() {
        if ch == '`' {
            in_code = !in_code;
        } else if !in_code {
            out.push(ch);
        }
    }
    out
}

/// The id mdBook and GitHub give a heading: lower-cased, letters, digits, `-` and `_` kept,
/// whitespace turned into `-`, everything else (backticks, punctuation) dropped.
fn heading_id(text: &str) -> String {
    // A link in a heading contributes its text only.
    let mut plain = String::new();
    let mut rest = text;
    while let Some(open) = rest.find("](") {
        let close = rest[open..].find(')').map_or(rest.len(), |c| open + c + 1);
        plain.push_str(&rest[..open]);
        rest = &rest[close..];
    }
    plain.push_str(rest);
    plain
        .trim()
        .chars()
        .filter_map(|ch| {
            if ch.is_alphanumeric() || ch == '_' || ch == '-' {
                Some(ch.to_lowercase().next().unwrap_or(ch))
            } else if ch.is_whitespace() {
                Some('-')
            } else {
                None
            }
        })
        .collect()
}

/// Every anchor of a file: each heading's id, the second of two equal ids suffixed `-1`.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = BTreeSet::new();
    for (_, line) in prose_lines(text) {
        let hashes = line.chars().take_while(|c| *c == '#').count();
        if !(1..=6).contains(&hashes) || !line[hashes..].starts_with(' ') {
            continue;
        }
        let id = heading_id(&line[hashes..]);
        let count = seen.entry(id.clone()).or_insert(0);
        out.insert(if *count == 0 {
            id.clone()
        } else {
            format!("{id}-{count}")
        });
        *count += 1;
    }
    out
}

/// The targets of inline links `[text](target)` and reference definitions `[x]: target`.
fn link_targets(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (n, line) in prose_lines(text) {
        let line = without_code_spans(line);
        let trimmed = line.trim_start();
        if trimmed.starts_with('[') {
            if let Some(def) = trimmed.find("]: ") {
                let target = trimmed[def + 3..].split_whitespace().next().unwrap_or("");
                out.push((n, target.to_string()));
                continue;
            }
        }
        let mut rest = line.as_str();
        while let Some(open) = rest.find("](") {
            let after = &rest[open + 2..];
            let end = after.find(')').unwrap_or(after.len());
            let target = after[..end].split_whitespace().next().unwrap_or("");
            out.push((n, target.trim_matches(['<', '>']).to_string()));
            rest = &after[end..];
        }
    }
    out
}

fn is_external(target: &str) -> bool {
    let scheme = target.split(':').next().unwrap_or("");
    target.contains(':')
        && !scheme.is_empty()
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
}

/// The broken relative links of one file, as `file:line: target (why)`.
fn broken_links(root: &Path, file: &Path, text: &str) -> Vec<String> {
    let shown = file
        .strip_prefix(root)
        .unwrap_or(file)
        .display()
        .to_string();
    let own_anchors = anchors(text);
    let mut broken = Vec::new();
    for (line, target) in link_targets(text) {
        if target.is_empty() || is_external(&target) {
            continue;
        }
        let (path, anchor) = match target.split_once('#') {
            Some((p, a)) => (p, Some(a)),
            None => (target.as_str(), None),
        };
        if path.is_empty() {
            if let Some(anchor) = anchor.filter(|a| !own_anchors.contains(*a)) {
                broken.push(format!(
                    "{shown}:{line}: {target} (no heading with the id `{anchor}` here)"
                ));
            }
            continue;
        }
        let resolved = if path.starts_with('/') {
            broken.push(format!(
                "{shown}:{line}: {target} (an absolute path; link relative to the file)"
            ));
            continue;
        } else {
            file.parent().expect("a file has a directory").join(path)
        };
        if !resolved.exists() {
            broken.push(format!("{shown}:{line}: {target} (no such file)"));
            continue;
        }
        if let Some(anchor) = anchor {
            if resolved.extension().is_some_and(|e| e == "md") {
                let target_text = std::fs::read_to_string(&resolved)
                    .unwrap_or_else(|e| panic!("reading {}: {e}", resolved.display()));
                if !anchors(&target_text).contains(anchor) {
                    broken.push(format!(
                        "{shown}:{line}: {target} (no heading with the id `{anchor}` there)"
                    ));
                }
            }
        }
    }
    broken
}

#[test]
fn readme_and_manual_have_no_broken_internal_link() {
    let root = repo_root();
    let files = markdown_files(&root);
    assert!(
        files.len() > 10,
        "docs/src holds the manual's chapters; found only {files:?}"
    );
    let mut broken = Vec::new();
    let mut checked = 0;
    for file in &files {
        let text = std::fs::read_to_string(file)
            .unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
        checked += link_targets(&text).len();
        broken.extend(broken_links(&root, file, &text));
    }
    assert!(
        checked > 50,
        "only {checked} links found: the parser reads nothing"
    );
    assert!(
        broken.is_empty(),
        "broken links in the README or the manual:\n{}",
        broken.join("\n")
    );
}

#[test]
fn every_chapter_is_in_the_summary() {
    let root = repo_root();
    let summary = std::fs::read_to_string(root.join("docs/src/SUMMARY.md"))
        .expect("docs/src/SUMMARY.md exists");
    let listed: BTreeSet<String> = link_targets(&summary).into_iter().map(|(_, t)| t).collect();
    let missing: Vec<String> = markdown_files(&root)
        .iter()
        .filter_map(|f| f.strip_prefix(root.join("docs/src")).ok())
        .map(|f| f.display().to_string())
        .filter(|f| f != "SUMMARY.md" && !listed.contains(f))
        .collect();
    assert!(
        missing.is_empty(),
        "chapters mdbook would not build (not in docs/src/SUMMARY.md): {missing:?}"
    );
}

#[test]
fn the_link_checker_finds_what_is_broken() {
    let root = repo_root();
    let file = root.join("docs/src/config.md");
    let text =
        "# Top\n\n## A `code` heading: here\n\n[ok](#a-code-heading-here) [ok](../../README.md)\n\
                [gone](missing.md) [bad](#nowhere) [bad](getting-started.md#nowhere)\n\
                `[not a link](nowhere.md)`\n```\n[in a fence](nowhere.md)\n```\n";
    let broken = broken_links(&root, &file, text);
    assert_eq!(broken.len(), 3, "{broken:#?}");
    assert!(
        broken[0].contains("missing.md (no such file)"),
        "{broken:#?}"
    );
    assert!(broken[1].contains("#nowhere (no heading"), "{broken:#?}");
    assert!(
        broken[2].contains("getting-started.md#nowhere"),
        "{broken:#?}"
    );
}

// ---- the config reference against `keyswap schema` ----

/// A schema node with `$ref` followed and `Option`'s `anyOf [X, null]` unwrapped.
fn resolve<'a>(schema: &'a Value, mut node: &'a Value) -> &'a Value {
    for _ in 0..16 {
        if let Some(r) = node.get("$ref").and_then(Value::as_str) {
            let name = r.rsplit('/').next().unwrap_or("");
            node = &schema["definitions"][name];
        } else if let Some(variants) = node.get("anyOf").or_else(|| node.get("oneOf")) {
            let Some(v) = variants
                .as_array()
                .and_then(|vs| vs.iter().find(|v| v.get("type") != Some(&"null".into())))
            else {
                return node;
            };
            node = v;
        } else {
            return node;
        }
    }
    node
}

/// Every key path of the schema: `tasks.*.allow[].host`; `*` stands for a map's own names
/// (an entry of a map counts as a key: the reference shows one).
fn schema_paths(schema: &Value, node: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    let node = resolve(schema, node);
    if prefix.matches('.').count() > 12 {
        return;
    }
    if let Some(props) = node.get("properties").and_then(Value::as_object) {
        for (key, child) in props {
            let path = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            out.insert(path.clone());
            schema_paths(schema, child, &path, out);
        }
    }
    if let Some(map) = node.get("additionalProperties").filter(|v| v.is_object()) {
        out.insert(format!("{prefix}.*"));
        schema_paths(schema, map, &format!("{prefix}.*"), out);
    }
    if let Some(items) = node.get("items") {
        schema_paths(schema, items, &format!("{prefix}[]"), out);
    }
}

/// The key of a YAML block line (`key: value`, `"quoted key": value`), and what follows it.
fn yaml_key(content: &str) -> Option<(String, &str)> {
    if let Some(quoted) = content.strip_prefix('"') {
        let end = quoted.find('"')?;
        let rest = quoted[end + 1..].strip_prefix(':')?;
        return Some((quoted[..end].to_string(), rest));
    }
    let colon = content.find(':')?;
    let key = &content[..colon];
    let rest = &content[colon + 1..];
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
    (plain && (rest.is_empty() || rest.starts_with(' '))).then(|| (key.to_string(), rest))
}

struct Documented {
    paths: BTreeSet<String>,
    unknown: Vec<String>,
}

/// Walks one YAML block of the reference by indentation alongside the schema, from `root`.
/// Commented-out keys (`# sources:`) count as documented; other comments are skipped.
fn walk_yaml_block(schema: &Value, root: &Value, block: &[(usize, String)], doc: &mut Documented) {
    // (indent of the key, its schema node, its path)
    let mut stack: Vec<(usize, &Value, String)> = Vec::new();
    for (line_no, raw) in block {
        let mut indent = raw.len() - raw.trim_start().len();
        let mut content = raw.trim_start();
        if let Some(commented) = content.strip_prefix('#') {
            // `# key:` comments out a key written where the `#` is (`#` and one space added).
            let inner = commented.trim_start();
            indent += (commented.len() - inner.len()).saturating_sub(1);
            if yaml_key(inner.trim_start_matches("- ")).is_none() {
                continue;
            }
            content = inner;
        }
        if content.is_empty() {
            continue;
        }
        while stack.last().is_some_and(|(i, _, _)| *i >= indent) {
            stack.pop();
        }
        // `- key: v` starts an element of the list above: the element is the parent of its
        // keys, those of this line (two columns in) and of the lines below it.
        if let Some(rest) = content.strip_prefix("- ") {
            let (list, path) = match stack.last() {
                Some((_, node, path)) => (resolve(schema, node), path.clone()),
                None => (resolve(schema, root), String::new()),
            };
            let Some(items) = list.get("items") else {
                doc.unknown
                    .push(format!("config.md:{line_no}: `{path}` is not a list"));
                continue;
            };
            stack.push((indent, items, format!("{path}[]")));
            indent += 2;
            content = rest;
        }
        let Some((key, value)) = yaml_key(content) else {
            continue;
        };
        let (parent, path) = match stack.last() {
            Some((_, node, path)) => (resolve(schema, node), path.clone()),
            None => (resolve(schema, root), String::new()),
        };
        let join = |k: &str| {
            if path.is_empty() {
                k.to_string()
            } else {
                format!("{path}.{k}")
            }
        };
        let child = if let Some(child) = parent.get("properties").and_then(|p| p.get(&key)) {
            let p = join(&key);
            doc.paths.insert(p.clone());
            (child, p)
        } else if let Some(map) = parent.get("additionalProperties").filter(|v| v.is_object()) {
            doc.paths.insert(join("*"));
            (map, join("*"))
        } else {
            doc.unknown.push(format!(
                "config.md:{line_no}: `{}` (keyswap schema has no such key)",
                join(&key)
            ));
            continue;
        };
        // A flow mapping on one line: `budget: {requests: 500}`.
        let value = value.split(" #").next().unwrap_or("").trim();
        if let Some(inner) = value.strip_prefix('{').and_then(|v| v.strip_suffix('}')) {
            let node = resolve(schema, child.0);
            for pair in inner.split(',') {
                if let Some((k, _)) = yaml_key(pair.trim()) {
                    let p = format!("{}.{k}", child.1);
                    if node.get("properties").and_then(|ps| ps.get(&k)).is_some() {
                        doc.paths.insert(p);
                    } else {
                        doc.unknown.push(format!(
                            "config.md:{line_no}: `{p}` (keyswap schema has no such key)"
                        ));
                    }
                }
            }
        }
        stack.push((indent, child.0, child.1));
    }
}

/// The YAML blocks of the config reference, each with the node it starts from: the whole
/// config, or the one definition (a task file's body is a `RawTask`) holding its top keys.
fn documented_keys(schema: &Value, text: &str) -> Documented {
    let mut doc = Documented {
        paths: BTreeSet::new(),
        unknown: Vec::new(),
    };
    let mut blocks: Vec<Vec<(usize, String)>> = Vec::new();
    let mut current: Option<(usize, Vec<(usize, String)>)> = None;
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        match current.take() {
            None if trimmed.starts_with("```yaml") => {
                current = Some((line.len() - trimmed.len(), Vec::new()));
            }
            None => {}
            Some((_, lines)) if trimmed.starts_with("```") => blocks.push(lines),
            Some((fence_indent, mut lines)) => {
                lines.push((n + 1, line.get(fence_indent..).unwrap_or("").to_string()));
                current = Some((fence_indent, lines));
            }
        }
    }
    for block in blocks {
        let top: Vec<String> = block
            .iter()
            .filter(|(_, l)| !l.starts_with([' ', '#', '-']))
            .filter_map(|(_, l)| yaml_key(l).map(|(k, _)| k))
            .collect();
        if top.is_empty() {
            continue;
        }
        let has_all = |node: &Value| {
            let node = resolve(schema, node);
            top.iter()
                .all(|k| node.get("properties").and_then(|p| p.get(k)).is_some())
        };
        let root = if has_all(schema) {
            Some((schema, String::new()))
        } else {
            let mut paths = BTreeSet::new();
            schema_paths(schema, schema, "", &mut paths);
            // The shortest path to an object that has all the block's top-level keys.
            paths
                .iter()
                .filter_map(|p| node_at(schema, p).map(|n| (n, p.clone())))
                .find(|(n, _)| has_all(n))
        };
        match root {
            Some((node, prefix)) => {
                let mut inner = Documented {
                    paths: BTreeSet::new(),
                    unknown: Vec::new(),
                };
                walk_yaml_block(schema, node, &block, &mut inner);
                for p in inner.paths {
                    doc.paths.insert(if prefix.is_empty() {
                        p
                    } else {
                        format!("{prefix}.{p}")
                    });
                }
                doc.unknown.extend(inner.unknown);
            }
            None => doc.unknown.push(format!(
                "config.md:{}: a YAML block whose keys {top:?} are not together in any part of the schema",
                block[0].0
            )),
        }
    }
    doc
}

/// The schema node at a path written as [`schema_paths`] writes it.
fn node_at<'a>(schema: &'a Value, path: &str) -> Option<&'a Value> {
    let mut node = resolve(schema, schema);
    for part in path.split('.') {
        let (name, lists) = part.split_at(part.find("[]").unwrap_or(part.len()));
        node = if name == "*" {
            resolve(schema, node.get("additionalProperties")?)
        } else {
            resolve(schema, node.get("properties")?.get(name)?)
        };
        for _ in 0..lists.len() / 2 {
            node = resolve(schema, node.get("items")?);
        }
    }
    Some(node)
}

fn config_schema() -> Value {
    serde_json::from_str(&keyswap_config::json_schema()).expect("keyswap schema is JSON")
}

#[test]
fn config_reference_documents_exactly_the_keys_of_keyswap_schema() {
    let schema = config_schema();
    let mut keys = BTreeSet::new();
    schema_paths(&schema, &schema, "", &mut keys);
    assert!(
        keys.contains("tasks.*.allow[].host") && keys.len() > 40,
        "the schema walk found too little: {keys:?}"
    );
    let text = std::fs::read_to_string(repo_root().join("docs/src/config.md"))
        .expect("docs/src/config.md exists");
    let doc = documented_keys(&schema, &text);
    // A key of a policy's rule is documented by the same key of a task's rule.
    let canonical = |p: &str| p.replace("policies.*.allow[]", "tasks.*.allow[]");
    let documented: BTreeSet<String> = doc.paths.iter().map(|p| canonical(p)).collect();
    let undocumented: Vec<&String> = keys
        .iter()
        .filter(|k| !documented.contains(&canonical(k)))
        .collect();
    assert!(
        undocumented.is_empty() && doc.unknown.is_empty(),
        "docs/src/config.md and `keyswap schema` disagree.\nkeys of the schema missing from the \
         reference's YAML: {undocumented:#?}\nkeys of the reference the schema does not have: {:#?}",
        doc.unknown
    );
}

#[test]
fn the_reference_check_finds_an_invented_and_a_missing_key() {
    let schema = config_schema();
    let text = "```yaml\nversion: 1\ntasks:\n  t:\n    allow:\n      - host: a.example\n        \
                colour: blue\n        budget: {requests: 1, bytes: 2}\n```\n";
    let doc = documented_keys(&schema, text);
    assert!(
        doc.paths.contains("tasks.*.allow[].host"),
        "{:?}",
        doc.paths
    );
    assert!(!doc.paths.contains("listen"), "{:?}", doc.paths);
    assert!(
        doc.paths.contains("tasks.*.allow[].budget.requests"),
        "{:?}",
        doc.paths
    );
    assert_eq!(doc.unknown.len(), 2, "{:#?}", doc.unknown);
    assert!(
        doc.unknown[0].contains("tasks.*.allow[].colour"),
        "{:#?}",
        doc.unknown
    );
    assert!(
        doc.unknown[1].contains("tasks.*.allow[].budget.bytes"),
        "{:#?}",
        doc.unknown
    );
}

// ---- rust-version against the resolved graph ----

fn parse_version(v: &str) -> (u64, u64, u64) {
    let mut parts = v.split('.').map(|p| p.parse::<u64>().unwrap_or(0));
    (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    )
}

/// `rust-version` of `[workspace.package]` in the root Cargo.toml.
fn workspace_rust_version(root: &Path) -> String {
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).expect("Cargo.toml");
    let package = manifest
        .split("\n[")
        .find(|table| table.starts_with("workspace.package]"))
        .expect("Cargo.toml has [workspace.package]");
    package
        .lines()
        .find_map(|l| l.trim().strip_prefix("rust-version"))
        .and_then(|rest| rest.split('"').nth(1))
        .expect("[workspace.package] declares rust-version = \"X.Y\"")
        .to_string()
}

/// Marks every package reached from `roots` (normal and build dependencies; with `dev`, also
/// dev-dependencies) with `label`, unless an earlier walk reached it.
fn reach<'a>(
    nodes: &HashMap<&'a str, &'a Value>,
    roots: &[&'a str],
    dev: bool,
    label: &str,
    reached: &mut HashMap<&'a str, String>,
) {
    let mut seen = BTreeSet::new();
    let mut todo = roots.to_vec();
    while let Some(id) = todo.pop() {
        if !seen.insert(id) {
            continue;
        }
        reached.entry(id).or_insert_with(|| label.to_string());
        for dep in nodes[id]["deps"].as_array().into_iter().flatten() {
            let wanted = dev
                || dep["dep_kinds"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|k| k["kind"].is_null() || k["kind"] == "build");
            if wanted {
                todo.push(dep["pkg"].as_str().expect("a package id"));
            }
        }
    }
}

#[test]
fn workspace_rust_version_covers_every_dependency_of_keyswap() {
    let root = repo_root();
    let declared = workspace_rust_version(&root);
    // README.md's toolchain line names the same version and how to get it.
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    assert!(
        readme.contains(&format!("Rust toolchain ({declared} or newer"))
            && readme.contains(&format!("rustup toolchain install {declared}")),
        "README.md's toolchain line must name the workspace's rust-version {declared} and \
         `rustup toolchain install {declared}`"
    );
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    // The graph cargo resolves for Linux from Cargo.lock, as a build here uses it.
    let output = Command::new(&cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--locked",
            "--filter-platform",
            "x86_64-unknown-linux-gnu",
        ])
        .current_dir(&root)
        .output()
        .unwrap_or_else(|e| panic!("running {cargo} metadata: {e}"));
    assert!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let meta: Value = serde_json::from_slice(&output.stdout).expect("cargo metadata is JSON");
    let packages: HashMap<&str, &Value> = meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| (p["id"].as_str().expect("an id"), p))
        .collect();
    let nodes: HashMap<&str, &Value> = meta["resolve"]["nodes"]
        .as_array()
        .expect("resolve.nodes")
        .iter()
        .map(|n| (n["id"].as_str().expect("an id"), n))
        .collect();
    let name_of = |id: &str| packages[id]["name"].as_str().unwrap_or("?").to_string();
    // From `keyswap` (what the README's first command builds), then from every member
    // (`cargo test --workspace` builds their dev-dependencies too).
    let mut members: Vec<&str> = meta["workspace_members"]
        .as_array()
        .expect("workspace_members")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    members.sort_by_key(|id| name_of(id) != "keyswap");
    assert_eq!(
        name_of(members[0]),
        "keyswap",
        "keyswap is a workspace member"
    );
    let mut reached: HashMap<&str, String> = HashMap::new();
    reach(&nodes, &members[..1], false, "keyswap", &mut reached);
    reach(
        &nodes,
        &members,
        true,
        "the tests (cargo test --workspace)",
        &mut reached,
    );
    let from_keyswap = reached.values().filter(|m| *m == "keyswap").count();
    assert!(
        from_keyswap > 50,
        "only {from_keyswap} packages reached from keyswap"
    );
    let mut above: Vec<String> = reached
        .iter()
        .filter_map(|(id, member)| {
            let p = packages[id];
            let v = p["rust_version"].as_str()?;
            (parse_version(v) > parse_version(&declared)).then(|| {
                format!(
                    "{} {} declares rust-version {v} (a dependency of {member})",
                    p["name"].as_str().unwrap_or("?"),
                    p["version"].as_str().unwrap_or("?")
                )
            })
        })
        .collect();
    above.sort();
    assert!(
        above.is_empty(),
        "the workspace declares rust-version {declared}, but the locked dependencies need more \
         (raise [workspace.package] rust-version and README.md's toolchain line):\n{}",
        above.join("\n")
    );
}
