//! The config text → raw types: read by `serde_yaml` (the maintained fork `serde_yaml_ng`),
//! with the line, column and field path of every value, and every schema error that can be
//! found in one load.
//!
//! serde_yaml reports where an error is but not where a value is, and stops at the first
//! error. So a load goes:
//! 1. [`locate::parse`] reads the text with yaml-rust2's marked events: YAML syntax errors,
//!    duplicate keys and alias bombs with their position, and the position of every node.
//! 2. serde_yaml reads the same text into a [`Value`] (duplicate keys already reported are
//!    dropped here instead of failing the load).
//! 3. Every non-null node of that value is wrapped in a YAML tag holding its *site* (its
//!    position, its key's position and its field path); [`Located`] unwraps it, so the raw
//!    types get their positions from serde_yaml's own `Value` deserializer.
//! 4. The raw type is deserialized from the value. When serde refuses a node,
//!    `serde_path_to_error` says which; the error is recorded there, the node is removed (an
//!    optional field becomes absent, a list element or map entry disappears) and the value is
//!    deserialized again, so every broken value is reported once and the rest is validated.
//!    The field path of a value removed that way is "covered": validation reports nothing
//!    more about it (no "host is required" after `hots:`, no "swap_in is empty" after its
//!    only word was refused).
//!
//! This module knows nothing about keyswap's schema and never sees a secret value (the file
//! holds only the names of secrets and where to read them from).

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, DeserializeOwned, Deserializer, EnumAccess, VariantAccess, Visitor};
use serde::Deserialize;
use serde_path_to_error::Segment;
use serde_yaml::value::{Tag, TaggedValue};
use serde_yaml::{Mapping, Value};

use crate::error::Sink;
use crate::locate::{self, child, element, Node, Pos};

/// Every failed pass removes one node; this bounds the work on a file with very many errors
/// (the errors found so far are still reported).
const MAX_PASSES: usize = 256;

/// The name [`Located`] asks the deserializer for (only our tagged values answer it).
const LOCATED: &str = "$keyswap::Located";

/// Marks a tag as a site written by this module (a YAML file cannot spell a NUL).
const SITE: &str = "\0site:";

/// A value with where it was written: 1-based position and field path. For the value of a
/// mapping entry, `key` is where its key was written.
#[derive(Debug, Clone)]
pub(crate) struct Located<T> {
    pub value: T,
    pub pos: Pos,
    pub path: String,
    pub key: Pos,
}

/// A mapping with arbitrary keys (secret names, task ids, resolve entries), in file order.
/// A key shares its value's field path and sits at the key's position.
#[derive(Debug, Clone)]
pub(crate) struct Entries<V>(pub Vec<(Located<String>, V)>);

/// Reads `text` as a `T`. Syntax and schema errors go to `sink` (field paths under
/// `root_path`, e.g. `tasks.fix-42` for a task file) and cover the paths they name. Returns
/// the value built from what was valid, with the positioned tree it was read from; `None`
/// when nothing usable could be read.
pub(crate) fn read<T: DeserializeOwned>(
    text: &str,
    root_path: &str,
    sink: &mut Sink<'_>,
) -> Option<(T, Node)> {
    let (tree, problems) = match locate::parse(text) {
        Ok(parsed) => parsed,
        Err(p) => {
            sink.error(p.pos, &p.field, p.message, p.fix);
            return None;
        }
    };
    let recovered = problems.is_empty();
    for p in problems {
        sink.error(p.pos, &p.field, p.message, p.fix);
    }
    let document = match serde_yaml::from_str::<Lenient>(text) {
        Ok(Lenient(value)) => value,
        Err(e) => {
            // yaml-rust2 already explained what serde_yaml refuses (more than one document,
            // an unknown alias, an alias bomb); otherwise say what serde_yaml says.
            if recovered {
                let pos = e.location().map_or(tree.pos, |l| Pos {
                    line: l.line(),
                    column: l.column(),
                });
                let shown = e.to_string();
                let problem = shown.split(" at line ").next().unwrap_or_default();
                sink.error(
                    pos,
                    "(yaml)",
                    format!("YAML error: {problem}"),
                    "fix the YAML at this position (check indentation, quotes, anchors and aliases)",
                );
            }
            return None;
        }
    };
    // An empty file (or one with only comments) reads as an empty mapping, so that the schema
    // reports what is missing instead of a type error.
    let document = match document {
        Value::Null => Value::Mapping(Mapping::new()),
        other => other,
    };
    let mut document = place(document, Some(&tree), tree.pos, tree.pos, root_path);
    let mut passes = 0;
    while passes < MAX_PASSES {
        let error = match serde_path_to_error::deserialize::<_, T>(&document) {
            Ok(value) => return Some((value, tree)),
            Err(e) => e,
        };
        let segments: Vec<Segment> = error.path().iter().cloned().collect();
        let message = error.inner().to_string();
        let steps = steps(&document, &segments);
        // Each of these turns one scalar into text for good, so they cannot loop.
        if as_text(&mut document, &steps, &tree, &message) {
            continue;
        }
        if !recover::<T>(&mut document, steps, &message, root_path, sink) {
            return None;
        }
        passes += 1;
    }
    None
}

/// Any non-null scalar is text where text is asked for (`host: 2130706433`, `ttl: 0`,
/// `env: true`), as when serde_yaml deserializes a struct straight from the text: the node's
/// value becomes the scalar as written. `false` if this is not such an error.
fn as_text(document: &mut Value, steps: &[Step], tree: &Node, message: &str) -> bool {
    let wanted_text =
        message.starts_with("invalid type: ") && message.ends_with(", expected a string");
    if !wanted_text {
        return false;
    }
    let mut node = Some(tree);
    for step in steps {
        node = node.and_then(|n| match step {
            Step::Key(k) => n.entry(&key_text(k)).map(|(_, v)| v),
            Step::Index(i) => n.item(*i),
        });
    }
    let Some(written) = node.and_then(Node::scalar) else {
        return false;
    };
    let Some(slot) = at_mut(document, steps) else {
        return false;
    };
    let value = untagged_mut(slot);
    if !matches!(value, Value::Number(_) | Value::Bool(_)) {
        return false;
    }
    *value = Value::String(written.to_string());
    true
}

/// Records the error serde reported at `segments` and removes the refused node. `false`
/// when nothing can be removed (the document itself is refused).
fn recover<T: DeserializeOwned>(
    document: &mut Value,
    mut steps: Vec<Step>,
    message: &str,
    root_path: &str,
    sink: &mut Sink<'_>,
) -> bool {
    // serde names an unknown field's path as the field itself: report it in its mapping.
    if let Some(Step::Key(key)) = steps.last() {
        if unknown_field_message(key, message).is_some() {
            steps.pop();
        }
    }
    let node = at(document, &steps);
    let site = site_of(node).unwrap_or_else(|| nearest_site(document, &steps, root_path));
    let value = untagged(node);

    if let Some((key, allowed)) = unknown_field(value, message) {
        let (pos, path) = match value.as_mapping().and_then(|m| m.get(&key)) {
            Some(v) => site_of(v).map_or((site.pos, child(&site.path, &key_text(&key))), |s| {
                (s.key, s.path)
            }),
            None => (site.pos, child(&site.path, &key_text(&key))),
        };
        let name = key_text(&key);
        let list = allowed.join(", ");
        let fix = match closest(&name, allowed.iter().map(String::as_str)) {
            Some(near) => {
                // The field meant is "missing" only because of the typo: say it once.
                sink.cover(&child(&site.path, near));
                format!("did you mean \"{near}\"? allowed fields here: {list}")
            }
            None if allowed.is_empty() => "remove it".into(),
            None => format!("allowed fields here: {list}"),
        };
        sink.error(pos, &path, format!("unknown field \"{name}\""), fix);
        sink.cover(&path);
        if let Some(map) = at_mut(document, &steps).and_then(|n| untagged_mut(n).as_mapping_mut()) {
            map.shift_remove(&key);
        }
        return true;
    }

    let (message, fix) = describe::<T>(document, &steps, value, message);
    let (pos, path) = (site.pos, site.path.clone());
    sink.error(pos, &path, message, fix);
    sink.cover(&path);
    let Some((last, parent_steps)) = steps.split_last() else {
        return false;
    };
    let Some(parent) = at_mut(document, parent_steps) else {
        return false;
    };
    match (last, untagged_mut(parent)) {
        (Step::Key(key), Value::Mapping(map)) => {
            map.shift_remove(key);
        }
        (Step::Index(i), Value::Sequence(items)) if *i < items.len() => {
            items.remove(*i);
            // The list is not what was written any more: "x is empty" would be news to no one.
            let parent_path = site_of(at(document, parent_steps)).map(|s| s.path);
            if let Some(parent_path) = parent_path {
                sink.cover(&parent_path);
            }
        }
        _ => return false,
    }
    true
}

/// What serde's message means, in the words of a config file, and how to fix it.
fn describe<T: DeserializeOwned>(
    document: &Value,
    steps: &[Step],
    value: &Value,
    message: &str,
) -> (String, String) {
    if let Some(rest) = message.strip_prefix("unknown variant `") {
        let words = backticked(rest.rsplit_once("expected ").map_or("", |(_, w)| w));
        let written = value.as_str().map_or_else(|| found(value), str::to_string);
        return (
            format!("unknown value \"{}\"", written.escape_debug()),
            format!("use one of: {}", words.join(", ")),
        );
    }
    let refused = ["invalid type: ", "invalid value: "]
        .iter()
        .any(|p| message.starts_with(p));
    if let (true, Some((_, wanted))) = (refused, message.rsplit_once(", expected ")) {
        let (want, fix) = match expected(wanted) {
            Some(want) => (want.clone(), format!("write {want} here")),
            // A mapping (or a value of unknown kind) was wanted: ask serde what.
            None => probe::<T>(document, steps).unwrap_or_else(|| {
                (
                    "another value".into(),
                    "compare this value with the config reference".into(),
                )
            }),
        };
        return (format!("expected {want}, found {}", found(value)), fix);
    }
    (
        message.to_string(),
        "compare this value with the config reference".into(),
    )
}

/// serde's names for what it expected, in the words of a config file; `None` for a struct
/// (or a value whose kind only a probe tells).
fn expected(wanted: &str) -> Option<String> {
    let want = match wanted {
        "u8" | "u16" | "u32" | "u64" | "usize" | "i8" | "i16" | "i32" | "i64" => "a whole number",
        "a boolean" => "true or false",
        "a sequence" => "a list",
        "a string" => "a string",
        "a map" => "a mapping",
        "a Value::Tagged enum" => return None,
        w if w.starts_with("struct ") => return None,
        w if w.starts_with("enum ") => "one of the allowed words",
        other => other,
    };
    Some(want.to_string())
}

/// Deserializes the document again with the node at `steps` replaced by a mapping whose only
/// key no field has: serde's error then says what is expected there — for a struct, its
/// fields (as an unknown-field error). Returns what to call it and how to fix the value.
fn probe<T: DeserializeOwned>(document: &Value, steps: &[Step]) -> Option<(String, String)> {
    const PROBE: &str = "\u{1}";
    let mut copy = document.clone();
    let slot = at_mut(&mut copy, steps)?;
    let site = site_of(slot).unwrap_or(Site {
        pos: Pos::default(),
        key: Pos::default(),
        path: String::new(),
    });
    let mut probe = Mapping::new();
    probe.insert(Value::String(PROBE.into()), Value::Null);
    *slot = tagged(Value::Mapping(probe), &site);
    let message = serde_path_to_error::deserialize::<_, T>(&copy)
        .err()?
        .inner()
        .to_string();
    if let Some(fields) = message.strip_prefix(&format!("unknown field `{PROBE}`, expected ")) {
        let fields = backticked(fields).join(", ");
        return Some((
            "a mapping".into(),
            format!("write a mapping with some of: {fields}"),
        ));
    }
    let wanted = message.strip_prefix("invalid type: map, expected ")?;
    let want = expected(wanted)?;
    Some((want.clone(), format!("write {want} here")))
}

/// The key of `value` (a mapping) that serde refused as an unknown field, and the fields it
/// allows there.
fn unknown_field(value: &Value, message: &str) -> Option<(Value, Vec<String>)> {
    let map = value.as_mapping()?;
    map.keys()
        .find_map(|key| Some((key.clone(), unknown_field_message(key, message)?)))
}

/// The allowed fields, if `message` is serde's unknown-field error for `key`.
fn unknown_field_message(key: &Value, message: &str) -> Option<Vec<String>> {
    let rest = message.strip_prefix(&format!("unknown field `{}`, ", key_text(key)))?;
    Some(
        rest.strip_prefix("expected ")
            .map(backticked)
            .unwrap_or_default(),
    )
}

/// The names between backticks in one of serde's lists ("`a`, `b` or `c`").
fn backticked(list: &str) -> Vec<String> {
    list.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// What a node is, for "expected X, found Y".
fn found(value: &Value) -> String {
    match value {
        Value::Null => "nothing (null)".into(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => {
            let shown: String = s.chars().take(60).collect();
            let more = if shown.len() < s.len() { "..." } else { "" };
            format!("the text \"{}{more}\"", shown.escape_debug())
        }
        Value::Sequence(_) => "a list".into(),
        Value::Mapping(_) => "a mapping".into(),
        Value::Tagged(t) => format!("a value tagged {}", t.tag),
    }
}

/// A mapping key as written (keys of config mappings are plain words).
fn key_text(key: &Value) -> String {
    match key {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => "~".into(),
        _ => "?".into(),
    }
}

/// The candidate within two edits of `word` (a likely typo of it), the nearest first.
pub(crate) fn closest<'c>(
    word: &str,
    candidates: impl IntoIterator<Item = &'c str>,
) -> Option<&'c str> {
    candidates
        .into_iter()
        .map(|c| (edit_distance(c, word), c))
        .filter(|(distance, _)| *distance <= 2)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == *cb {
                prev
            } else {
                1 + prev.min(cur).min(row[j])
            };
            prev = cur;
        }
    }
    row[b.len()]
}

// ---- sites: where each value was written ----

#[derive(Debug, Clone, PartialEq, Eq)]
struct Site {
    pos: Pos,
    key: Pos,
    path: String,
}

impl Site {
    fn to_tag(&self) -> String {
        let Site { pos, key, path } = self;
        format!(
            "{SITE}{}:{}:{}:{}:{path}",
            pos.line, pos.column, key.line, key.column
        )
    }

    fn from_tag(tag: &str) -> Option<Site> {
        let rest = tag.strip_prefix('!').unwrap_or(tag).strip_prefix(SITE)?;
        let mut parts = rest.splitn(5, ':');
        let mut number = || parts.next()?.parse::<usize>().ok();
        let pos = Pos {
            line: number()?,
            column: number()?,
        };
        let key = Pos {
            line: number()?,
            column: number()?,
        };
        Some(Site {
            pos,
            key,
            path: parts.next()?.to_string(),
        })
    }
}

fn tagged(value: Value, site: &Site) -> Value {
    Value::Tagged(Box::new(TaggedValue {
        tag: Tag::new(site.to_tag()),
        value,
    }))
}

/// Wraps every non-null node of `value` in its site, taking positions from the yaml-rust2
/// tree (`node`, the same document read by the other parser). Where the two trees differ
/// (they should not), a node takes the position of its parent. Nulls stay bare: an empty
/// field is an absent field.
fn place(value: Value, node: Option<&Node>, fallback: Pos, key: Pos, path: &str) -> Value {
    let pos = node.map_or(fallback, |n| n.pos);
    let value = match value {
        Value::Sequence(items) => Value::Sequence(
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| {
                    let item_node = node.and_then(|n| n.item(i));
                    place(item, item_node, pos, Pos::default(), &element(path, i))
                })
                .collect(),
        ),
        Value::Mapping(map) => Value::Mapping(
            map.into_iter()
                .map(|(k, v)| {
                    let name = key_text(&k);
                    let entry = node.and_then(|n| n.entry(&name));
                    let key_pos = entry.map_or(pos, |(k, _)| k.pos);
                    let v = place(
                        v,
                        entry.map(|(_, v)| v),
                        key_pos,
                        key_pos,
                        &child(path, &name),
                    );
                    (k, v)
                })
                .collect(),
        ),
        other => other,
    };
    if value.is_null() {
        return value;
    }
    let site = Site {
        pos,
        key,
        path: path.to_string(),
    };
    tagged(value, &site)
}

fn site_of(value: &Value) -> Option<Site> {
    match value {
        Value::Tagged(t) => Site::from_tag(&t.tag.to_string()),
        _ => None,
    }
}

fn untagged(value: &Value) -> &Value {
    match value {
        Value::Tagged(t) if site_of(value).is_some() => &t.value,
        other => other,
    }
}

fn untagged_mut(value: &mut Value) -> &mut Value {
    if site_of(value).is_none() {
        return value;
    }
    match value {
        Value::Tagged(t) => &mut t.value,
        other => other,
    }
}

/// One step from a node to its child.
#[derive(Debug, Clone)]
enum Step {
    Key(Value),
    Index(usize),
}

/// serde's path as steps through the document (enum segments are our sites, not steps).
fn steps(document: &Value, segments: &[Segment]) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut node = document;
    for segment in segments {
        let inner = untagged(node);
        let (step, next) = match (segment, inner) {
            (Segment::Map { key }, Value::Mapping(map)) => {
                match map.iter().find(|(k, _)| key_text(k) == *key) {
                    Some((k, v)) => (Step::Key(k.clone()), v),
                    None => break,
                }
            }
            (Segment::Seq { index }, Value::Sequence(items)) => match items.get(*index) {
                Some(item) => (Step::Index(*index), item),
                None => break,
            },
            (Segment::Enum { .. }, _) => continue,
            _ => break,
        };
        steps.push(step);
        node = next;
    }
    steps
}

fn at<'v>(document: &'v Value, steps: &[Step]) -> &'v Value {
    let mut node = document;
    for step in steps {
        node = match (step, untagged(node)) {
            (Step::Key(k), Value::Mapping(map)) => map.get(k).unwrap_or(node),
            (Step::Index(i), Value::Sequence(items)) => items.get(*i).unwrap_or(node),
            _ => node,
        };
    }
    node
}

fn at_mut<'v>(document: &'v mut Value, steps: &[Step]) -> Option<&'v mut Value> {
    let Some((step, rest)) = steps.split_first() else {
        return Some(document);
    };
    let next = match (step, untagged_mut(document)) {
        (Step::Key(k), Value::Mapping(map)) => map.get_mut(k)?,
        (Step::Index(i), Value::Sequence(items)) => items.get_mut(*i)?,
        _ => return None,
    };
    at_mut(next, rest)
}

/// The site of the nearest tagged node on the way to `steps` (a null has none of its own).
fn nearest_site(document: &Value, steps: &[Step], root_path: &str) -> Site {
    let mut site = site_of(document).unwrap_or(Site {
        pos: Pos { line: 1, column: 1 },
        key: Pos { line: 1, column: 1 },
        path: root_path.to_string(),
    });
    let mut node = document;
    for step in steps {
        let next = match (step, untagged(node)) {
            (Step::Key(k), Value::Mapping(map)) => map.get(k),
            (Step::Index(i), Value::Sequence(items)) => items.get(*i),
            _ => None,
        };
        let Some(next) = next else { break };
        match site_of(next) {
            Some(s) => site = s,
            None => {
                // A bare null: it sits at its key, under its parent's path.
                site.path = match step {
                    Step::Key(k) => child(&site.path, &key_text(k)),
                    Step::Index(i) => element(&site.path, *i),
                };
            }
        }
        node = next;
    }
    site
}

// ---- serde: the lenient document, Located and Entries ----

/// A YAML document as serde_yaml reads it, except that a repeated key keeps its first value
/// instead of failing the whole load (yaml-rust2 has reported it with its position).
struct Lenient(Value);

impl<'de> Deserialize<'de> for Lenient {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(LenientVisitor).map(Lenient)
    }
}

struct LenientVisitor;

impl<'de> Visitor<'de> for LenientVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Value, E> {
        Ok(Value::Number(n.into()))
    }

    fn visit_u64<E>(self, n: u64) -> Result<Value, E> {
        Ok(Value::Number(n.into()))
    }

    fn visit_f64<E>(self, n: f64) -> Result<Value, E> {
        Ok(Value::Number(n.into()))
    }

    fn visit_str<E>(self, s: &str) -> Result<Value, E> {
        Ok(Value::String(s.to_string()))
    }

    fn visit_string<E>(self, s: String) -> Result<Value, E> {
        Ok(Value::String(s))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Lenient::deserialize(d).map(|l| l.0)
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Lenient(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Sequence(items))
    }

    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries = Mapping::new();
        while let Some(Lenient(key)) = map.next_key()? {
            let Lenient(value) = map.next_value()?;
            if !entries.contains_key(&key) {
                entries.insert(key, value);
            }
        }
        Ok(Value::Mapping(entries))
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Value, A::Error> {
        let (tag, variant): (String, _) = data.variant()?;
        let Lenient(value) = variant.newtype_variant()?;
        let tag = if tag.is_empty() { "!".to_string() } else { tag };
        Ok(Value::Tagged(Box::new(TaggedValue {
            tag: Tag::new(tag),
            value,
        })))
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Located<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_enum(LOCATED, &[], LocatedVisitor(PhantomData))
    }
}

struct LocatedVisitor<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for LocatedVisitor<T> {
    type Value = Located<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a value with its position")
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Located<T>, A::Error> {
        let (tag, variant): (String, _) = data.variant()?;
        let site = Site::from_tag(&tag)
            .ok_or_else(|| de::Error::custom("internal: a value without its position"))?;
        let value = variant.newtype_variant()?;
        Ok(Located {
            value,
            pos: site.pos,
            path: site.path,
            key: site.key,
        })
    }
}

impl<'de, V: Deserialize<'de> + Keyed> Deserialize<'de> for Entries<V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(EntriesVisitor(PhantomData))
    }
}

/// A value that knows where its key was written (a [`Located`] map value).
pub(crate) trait Keyed {
    fn key_site(&self) -> (Pos, &str);
}

impl<T> Keyed for Located<T> {
    fn key_site(&self) -> (Pos, &str) {
        (self.key, &self.path)
    }
}

struct EntriesVisitor<V>(PhantomData<V>);

impl<'de, V: Deserialize<'de> + Keyed> Visitor<'de> for EntriesVisitor<V> {
    type Value = Entries<V>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map")
    }

    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Entries<V>, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Value>()? {
            let value: V = map.next_value()?;
            let (pos, path) = value.key_site();
            let key = Located {
                value: key_text(&key),
                pos,
                path: path.to_string(),
                key: pos,
            };
            entries.push((key, value));
        }
        Ok(Entries(entries))
    }
}

// ---- JSON Schema: a located value is described by its value ----

impl<T: schemars::JsonSchema> schemars::JsonSchema for Located<T> {
    fn inline_schema() -> bool {
        T::inline_schema()
    }

    fn schema_name() -> std::borrow::Cow<'static, str> {
        T::schema_name()
    }

    fn schema_id() -> std::borrow::Cow<'static, str> {
        T::schema_id()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        T::json_schema(generator)
    }
}

impl<V: schemars::JsonSchema> schemars::JsonSchema for Entries<V> {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> std::borrow::Cow<'static, str> {
        format!("Entries_of_{}", V::schema_name()).into()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "object",
            "additionalProperties": generator.subschema_for::<V>(),
        })
    }
}
