//! A serde `Deserializer` over the located YAML tree ([`crate::locate::Node`]) that finds
//! *every* schema error in one load, each with its field path and position.
//!
//! serde stops at the first error, so loading runs in passes: an error is recorded with the
//! path and position of the node it surfaced at, that node is marked "skip", and the next
//! pass deserializes the document again without it (an optional field becomes `None`, a
//! list element or map entry disappears). Unknown fields are filtered out before serde sees
//! them (using the `fields` list serde passes to `deserialize_struct`) and recorded, so
//! `deny_unknown_fields` on the raw types is a second line of defence, not the reporter.
//!
//! [`Located<T>`] hands a value's position and field path to the raw types (the pattern of
//! `serde_spanned`), so validation can point at the exact line without searching the tree.
//!
//! This module knows nothing about keyswap's schema and never sees a secret value (the
//! config file holds only names of secrets and their sources). `node` is the deserializer,
//! `access` the list/map walkers and the `Located`/`Entries` visitors.

mod access;
mod node;

use std::cell::RefCell;
use std::collections::HashSet;
use std::fmt;

use serde::de::{self, DeserializeOwned};

use crate::locate::{Node, Pos};
use node::NodeDe;

/// Every failed pass skips at least one more node; this bounds the work on a file with
/// very many errors (the errors found so far are still reported).
const MAX_PASSES: usize = 256;

/// The magic struct name and fields by which [`Located`] asks this deserializer for a
/// position (other deserializers would simply fail on it).
const LOCATED: &str = "$keyswap::private::Located";
const LOCATED_LINE: &str = "$line";
const LOCATED_COLUMN: &str = "$column";
const LOCATED_PATH: &str = "$path";
const LOCATED_VALUE: &str = "$value";
const LOCATED_FIELDS: &[&str] = &[LOCATED_LINE, LOCATED_COLUMN, LOCATED_PATH, LOCATED_VALUE];

/// A value with where it was written: 1-based position and field path.
#[derive(Debug, Clone)]
pub(crate) struct Located<T> {
    pub value: T,
    pub pos: Pos,
    pub path: String,
}

/// A mapping with arbitrary keys (secret names, task ids, resolve entries), in file order.
#[derive(Debug, Clone)]
pub(crate) struct Entries<V>(pub Vec<(Located<String>, V)>);

/// One schema problem: wrong type, unknown field, unknown word, missing field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SchemaError {
    pub path: String,
    pub pos: Pos,
    pub message: String,
    pub fix: String,
}

/// Deserializes `node` as `T`, recovering from errors. Returns the value built from the
/// parts that were valid (`None` only if the document as a whole is unusable) and every
/// error found. `root_path` prefixes every field path (e.g. `tasks.fix-42` for a task file).
pub(crate) fn from_node<T: DeserializeOwned>(
    node: &Node,
    root_path: &str,
) -> (Option<T>, Vec<SchemaError>) {
    let ctx = Ctx::default();
    let mut value = None;
    for _ in 0..MAX_PASSES {
        let skipped_before = ctx.skip.borrow().len();
        let de = NodeDe {
            node,
            path: root_path.to_string(),
            ctx: &ctx,
        };
        match T::deserialize(de) {
            Ok(v) => {
                value = Some(v);
                break;
            }
            Err(_) if ctx.skip.borrow().len() == skipped_before => break,
            Err(_) if ctx.skipped(root_path) => break,
            Err(_) => {}
        }
    }
    let mut errors = ctx.errors.into_inner();
    if value.is_none() && errors.is_empty() {
        errors.push(SchemaError {
            path: root_path.to_string(),
            pos: node.pos,
            message: "this document could not be read".into(),
            fix: "compare it with the config reference".into(),
        });
    }
    (value, errors)
}

#[derive(Default)]
struct Ctx {
    errors: RefCell<Vec<SchemaError>>,
    seen: RefCell<HashSet<(String, String)>>,
    skip: RefCell<HashSet<String>>,
}

impl Ctx {
    /// Records an error once, however many passes find it again.
    fn record(&self, path: &str, pos: Pos, message: String, fix: String) {
        if self
            .seen
            .borrow_mut()
            .insert((path.to_string(), message.clone()))
        {
            let path = path.to_string();
            self.errors.borrow_mut().push(SchemaError {
                path,
                pos,
                message,
                fix,
            });
        }
    }

    fn skip(&self, path: &str) {
        self.skip.borrow_mut().insert(path.to_string());
    }

    fn skipped(&self, path: &str) -> bool {
        self.skip.borrow().contains(path)
    }
}

/// The error type the raw types see. `Recorded` means "already reported, unwind".
#[derive(Debug)]
pub(crate) enum DeError {
    Invalid { message: String, fix: String },
    MissingField(&'static str),
    Recorded,
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeError::Invalid { message, .. } => f.write_str(message),
            DeError::MissingField(field) => write!(f, "missing field \"{field}\""),
            DeError::Recorded => f.write_str("error already recorded"),
        }
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError::Invalid {
            message: msg.to_string(),
            fix: "compare this value with the config reference".into(),
        }
    }

    fn invalid_type(unexp: de::Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        let want = human(exp);
        DeError::Invalid {
            message: format!("expected {want}, found {unexp}"),
            fix: format!("write {want}"),
        }
    }

    fn invalid_value(unexp: de::Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        let want = human(exp);
        DeError::Invalid {
            message: format!("{unexp} is out of range"),
            fix: format!("write {want}"),
        }
    }

    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        DeError::Invalid {
            message: format!("unknown value \"{variant}\""),
            fix: format!("use one of: {}", expected.join(", ")),
        }
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        let (message, fix) = unknown_field(field, expected);
        DeError::Invalid { message, fix }
    }

    fn missing_field(field: &'static str) -> Self {
        DeError::MissingField(field)
    }
}

/// serde's names for what it expected, in the words of a config file.
fn human(exp: &dyn de::Expected) -> String {
    let s = exp.to_string();
    match s.as_str() {
        "u8" | "u16" | "u32" | "u64" | "usize" => "a whole number of at least 0".into(),
        "a boolean" => "true or false".into(),
        "a sequence" => "a list".into(),
        "a map" => "a mapping".into(),
        _ if s.starts_with("struct ") => "a mapping".into(),
        _ if s.starts_with("enum ") => "one of the allowed words".into(),
        _ => s,
    }
}

fn unknown_field(field: &str, allowed: &[&str]) -> (String, String) {
    let list = allowed.join(", ");
    let fix = match closest(field, allowed.iter().copied()) {
        Some(name) => format!("did you mean \"{name}\"? allowed fields here: {list}"),
        None => format!("allowed fields here: {list}"),
    };
    (format!("unknown field \"{field}\""), fix)
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

/// Reads YAML 1.2 core-schema integers: decimal, `0x` hex, `0o` octal.
fn parse_int(text: &str) -> Option<i128> {
    let (negative, digits) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let (radix, digits) = if let Some(hex) = digits.strip_prefix("0x") {
        (16, hex)
    } else if let Some(oct) = digits.strip_prefix("0o") {
        (8, oct)
    } else {
        (10, digits)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    let n = i128::from_str_radix(digits, radix).ok()?;
    Some(if negative { -n } else { n })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::locate::parse;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Item {
        name: Option<Located<String>>,
        port: Option<Located<u64>>,
        flag: Option<bool>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Doc {
        items: Option<Vec<Located<Item>>>,
        map: Option<Entries<Located<String>>>,
        required: u64,
    }

    fn load(text: &str) -> (Option<Doc>, Vec<SchemaError>) {
        let (node, problems) = parse(text).expect("yaml");
        assert!(problems.is_empty());
        from_node::<Doc>(&node, "")
    }

    #[test]
    fn collects_every_error_and_keeps_the_rest() {
        let text = "required: 1\nitems:\n  - name: a\n    port: x\n    nmae: b\n  - name: [1]\n    flag: maybe\n  - name: c\n";
        let (doc, errors) = load(text);
        let doc = doc.expect("partial value");
        let items = doc.items.expect("items");
        assert_eq!(items.len(), 3);
        assert_eq!(items[2].path, "items[2]");
        assert_eq!(
            items[2].value.name.as_ref().map(|n| n.value.as_str()),
            Some("c")
        );
        assert!(items[0].value.port.is_none() && items[1].value.flag.is_none());
        assert_eq!(doc.required, 1);
        let found: Vec<(&str, usize, usize)> = errors
            .iter()
            .map(|e| (e.path.as_str(), e.pos.line, e.pos.column))
            .collect();
        assert!(found.contains(&("items[0].port", 4, 11)), "{errors:?}");
        assert!(found.contains(&("items[0].nmae", 5, 5)), "{errors:?}");
        assert!(found.contains(&("items[1].name", 6, 11)), "{errors:?}");
        assert!(found.contains(&("items[1].flag", 7, 11)), "{errors:?}");
        assert_eq!(errors.len(), 4, "{errors:?}");
        let typo = errors.iter().find(|e| e.path == "items[0].nmae").unwrap();
        assert!(typo.fix.contains("did you mean \"name\""), "{}", typo.fix);
    }

    #[test]
    fn missing_required_field_is_reported_at_the_mapping() {
        let (doc, errors) = load("map:\n  b: x\n  a: y\n");
        assert!(doc.is_none());
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].message, "missing field \"required\"");
    }

    #[test]
    fn entries_keep_file_order_and_positions() {
        let (doc, errors) = load("required: 1\nmap:\n  zeta: x\n  alpha: 'y'\n");
        assert!(errors.is_empty(), "{errors:?}");
        let map = doc.unwrap().map.unwrap().0;
        let keys: Vec<_> = map.iter().map(|(k, _)| k.value.as_str()).collect();
        assert_eq!(keys, ["zeta", "alpha"]);
        assert_eq!(
            map[1].1.pos,
            Pos {
                line: 4,
                column: 10
            }
        );
        assert_eq!(map[1].0.path, "map.alpha");
    }

    #[test]
    fn integers_follow_the_core_schema() {
        assert_eq!(parse_int("443"), Some(443));
        assert_eq!(parse_int("0x1bb"), Some(443));
        assert_eq!(parse_int("0o10"), Some(8));
        assert_eq!(parse_int("-1"), Some(-1));
        assert_eq!(parse_int("0x"), None);
        assert_eq!(parse_int("0x+1"), None);
        assert_eq!(parse_int("4a"), None);
    }
}
