//! The YAML text as a tree of nodes that remember where they start (line and column), built
//! from yaml-rust2's marked events.
//!
//! This module owns everything positional: turning the text into [`Node`]s, reporting YAML
//! syntax errors, duplicate keys and alias abuse with their line and column, and naming
//! fields as paths (`tasks.fix-42.allow[0].host`). It knows nothing about keyswap's schema
//! and never interprets a value: the values are read by serde_yaml (`crate::read`), which
//! reports where an error is but not where each value is.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// Documents larger than this (counting nodes after alias expansion) are refused: a config
/// file never needs it, and aliases can otherwise expand exponentially ("billion laughs").
const MAX_NODES: usize = 100_000;

/// A 1-based line and column in a YAML text.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Pos {
    pub line: usize,
    pub column: usize,
}

impl From<Marker> for Pos {
    fn from(m: Marker) -> Self {
        // yaml-rust2 markers are 1-based for lines but 0-based for columns.
        Pos {
            line: m.line(),
            column: m.col() + 1,
        }
    }
}

/// One YAML node with the position where it starts.
#[derive(Clone, Debug)]
pub(crate) struct Node {
    pub kind: NodeKind,
    pub pos: Pos,
}

#[derive(Clone, Debug)]
pub(crate) enum NodeKind {
    /// `plain` is false for quoted, block and `!!str`-tagged scalars: those are always text.
    Scalar {
        text: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

impl Node {
    /// A plain scalar that YAML 1.2's core schema reads as null.
    pub fn is_null(&self) -> bool {
        matches!(&self.kind, NodeKind::Scalar { text, plain: true }
            if matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }

    fn empty_map(pos: Pos) -> Node {
        Node {
            kind: NodeKind::Map(Vec::new()),
            pos,
        }
    }

    fn size(&self) -> usize {
        match &self.kind {
            NodeKind::Scalar { .. } => 1,
            NodeKind::Seq(items) => 1 + items.iter().map(Node::size).sum::<usize>(),
            NodeKind::Map(entries) => {
                1 + entries
                    .iter()
                    .map(|(k, v)| k.size() + v.size())
                    .sum::<usize>()
            }
        }
    }

    /// The keys of the mapping at `key` in this mapping, in file order (scalar keys only).
    pub fn keys_of(&self, key: &str) -> Vec<String> {
        let NodeKind::Map(entries) = &self.kind else {
            return Vec::new();
        };
        let Some((_, value)) = entries.iter().find(|(k, _)| k.scalar() == Some(key)) else {
            return Vec::new();
        };
        match &value.kind {
            NodeKind::Map(inner) => inner
                .iter()
                .filter_map(|(k, _)| k.scalar())
                .map(String::from)
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The key and value of the entry `key` of this mapping (the first, if repeated).
    pub fn entry(&self, key: &str) -> Option<(&Node, &Node)> {
        let NodeKind::Map(entries) = &self.kind else {
            return None;
        };
        entries
            .iter()
            .find(|(k, _)| k.scalar() == Some(key))
            .map(|(k, v)| (k, v))
    }

    /// The element `index` of this list.
    pub fn item(&self, index: usize) -> Option<&Node> {
        match &self.kind {
            NodeKind::Seq(items) => items.get(index),
            _ => None,
        }
    }

    pub fn scalar(&self) -> Option<&str> {
        match &self.kind {
            NodeKind::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }
}

/// A problem found while reading the YAML text itself (not its meaning).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SyntaxProblem {
    pub pos: Pos,
    pub field: String,
    pub message: String,
    pub fix: String,
}

/// Parses `text` into one document tree. `Err` means the text is not usable YAML at all;
/// `Ok` may still carry problems (duplicate keys, unknown aliases) that were recovered from.
pub(crate) fn parse(text: &str) -> Result<(Node, Vec<SyntaxProblem>), SyntaxProblem> {
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(text);
    if let Err(e) = parser.load(&mut builder, true) {
        return Err(SyntaxProblem {
            pos: (*e.marker()).into(),
            field: "(yaml)".into(),
            message: format!("YAML syntax error: {}", e.info()),
            fix: "fix the YAML syntax at this position (check indentation, quotes and colons)"
                .into(),
        });
    }
    let mut docs = builder.docs.into_iter();
    let root = docs
        .next()
        .unwrap_or_else(|| Node::empty_map(Pos { line: 1, column: 1 }));
    if let Some(extra) = docs.next() {
        builder.problems.push(SyntaxProblem {
            pos: extra.pos,
            field: "(yaml)".into(),
            message: "the file holds more than one YAML document".into(),
            fix: "keep one document: remove the second `---` and what follows it".into(),
        });
    }
    // An empty file (or one with only comments) reads as an empty mapping, so that the
    // schema reports what is missing instead of a type error.
    let root = if root.is_null() {
        Node::empty_map(root.pos)
    } else {
        root
    };
    Ok((root, builder.problems))
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    anchors: HashMap<usize, Node>,
    docs: Vec<Node>,
    problems: Vec<SyntaxProblem>,
    nodes: usize,
    too_large: bool,
}

enum Frame {
    Seq {
        items: Vec<Node>,
        pos: Pos,
        anchor: usize,
        path: String,
    },
    Map {
        entries: Vec<(Node, Node)>,
        key: Option<Node>,
        pos: Pos,
        anchor: usize,
        path: String,
    },
}

impl Builder {
    /// The field path of the node that starts next (used to name duplicate keys).
    fn next_path(&self) -> String {
        match self.stack.last() {
            None => String::new(),
            Some(Frame::Seq { items, path, .. }) => element(path, items.len()),
            Some(Frame::Map { key, path, .. }) => {
                child(path, key.as_ref().and_then(Node::scalar).unwrap_or("?"))
            }
        }
    }

    fn finish(&mut self, node: Node, anchor: usize) {
        self.nodes = self.nodes.saturating_add(1);
        if anchor != 0 {
            self.anchors.insert(anchor, node.clone());
        }
        self.push(node);
    }

    fn push(&mut self, node: Node) {
        let path = self.next_path();
        match self.stack.last_mut() {
            None => self.docs.push(node),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map { entries, key, .. }) => match key.take() {
                None => *key = Some(node),
                Some(k) => {
                    let duplicate = k.scalar().is_some()
                        && entries
                            .iter()
                            .any(|(other, _)| other.scalar() == k.scalar());
                    if duplicate {
                        // Two values for one key are ambiguous: refuse rather than guess
                        // which one a reader (or another YAML library) would use.
                        let name = k.scalar().unwrap_or_default().to_string();
                        self.problems.push(SyntaxProblem {
                            pos: k.pos,
                            field: path,
                            message: format!("duplicate key \"{name}\" in this mapping"),
                            fix: "keep only one of the entries with this key".into(),
                        });
                    } else {
                        entries.push((k, node));
                    }
                }
            },
        }
    }

    fn alias(&mut self, id: usize, pos: Pos) {
        let Some(node) = self.anchors.get(&id) else {
            self.problems.push(SyntaxProblem {
                pos,
                field: "(yaml)".into(),
                message: "alias refers to an unknown anchor".into(),
                fix: "define the anchor (&name) before using it (*name)".into(),
            });
            self.push(Node {
                kind: NodeKind::Scalar {
                    text: String::new(),
                    plain: true,
                },
                pos,
            });
            return;
        };
        let size = node.size();
        if self.too_large || self.nodes.saturating_add(size) > MAX_NODES {
            if !self.too_large {
                self.problems.push(SyntaxProblem {
                    pos,
                    field: "(yaml)".into(),
                    message: format!("the document expands to more than {MAX_NODES} nodes"),
                    fix: "write the config without deeply nested aliases".into(),
                });
            }
            self.too_large = true;
            self.push(Node {
                kind: NodeKind::Scalar {
                    text: String::new(),
                    plain: true,
                },
                pos,
            });
            return;
        }
        self.nodes += size;
        let copy = Node {
            kind: node.kind.clone(),
            pos: node.pos,
        };
        self.push(copy);
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let pos = Pos::from(mark);
        match ev {
            Event::Scalar(text, style, anchor, tag) => {
                let str_tag = tag.as_ref().is_some_and(|t| t.suffix == "str");
                let plain = style == TScalarStyle::Plain && !str_tag;
                self.finish(
                    Node {
                        kind: NodeKind::Scalar { text, plain },
                        pos,
                    },
                    anchor,
                );
            }
            Event::SequenceStart(anchor, _) => {
                let path = self.next_path();
                self.stack.push(Frame::Seq {
                    items: Vec::new(),
                    pos,
                    anchor,
                    path,
                });
            }
            Event::MappingStart(anchor, _) => {
                let path = self.next_path();
                self.stack.push(Frame::Map {
                    entries: Vec::new(),
                    key: None,
                    pos,
                    anchor,
                    path,
                });
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (kind, pos, anchor) = match self.stack.pop() {
                    Some(Frame::Seq {
                        items, pos, anchor, ..
                    }) => (NodeKind::Seq(items), pos, anchor),
                    Some(Frame::Map {
                        entries,
                        pos,
                        anchor,
                        ..
                    }) => {
                        // A block mapping's start event is marked at its first ":"; point
                        // at its first key instead (a flow mapping's "{" comes first anyway).
                        let pos = entries.first().map_or(pos, |(key, _)| pos.min(key.pos));
                        (NodeKind::Map(entries), pos, anchor)
                    }
                    None => return,
                };
                self.finish(Node { kind, pos }, anchor);
            }
            Event::Alias(id) => self.alias(id, pos),
            Event::Nothing
            | Event::StreamStart
            | Event::StreamEnd
            | Event::DocumentStart
            | Event::DocumentEnd => {}
        }
    }
}

/// The dotted field path of a child: `parent.key` (or `key` at the root). Keys with
/// characters other than letters, digits, `_` and `-` are quoted (`upstream.resolve."a.b:443"`).
pub(crate) fn child(parent: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    let key = if plain {
        key.to_string()
    } else {
        format!("{key:?}")
    };
    if parent.is_empty() {
        key
    } else {
        format!("{parent}.{key}")
    }
}

/// The field path of a list element: `parent[index]`.
pub(crate) fn element(parent: &str, index: usize) -> String {
    format!("{parent}[{index}]")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos_of<'a>(node: &'a Node, key: &str) -> &'a Node {
        let NodeKind::Map(entries) = &node.kind else {
            panic!("not a map")
        };
        &entries
            .iter()
            .find(|(k, _)| k.scalar() == Some(key))
            .expect("key")
            .1
    }

    #[test]
    fn positions_are_one_based() {
        let (root, problems) = parse("version: 1\nlist:\n  - host: a\n    port: 443\n").unwrap();
        assert!(problems.is_empty());
        assert_eq!(
            pos_of(&root, "version").pos,
            Pos {
                line: 1,
                column: 10
            }
        );
        let NodeKind::Seq(items) = &pos_of(&root, "list").kind else {
            panic!()
        };
        assert_eq!(
            pos_of(&items[0], "host").pos,
            Pos {
                line: 3,
                column: 11
            }
        );
        assert_eq!(
            pos_of(&items[0], "port").pos,
            Pos {
                line: 4,
                column: 11
            }
        );
        assert_eq!(items[0].pos, Pos { line: 3, column: 5 });
        let (flow, _) = parse("a: {b: 1}\n").unwrap();
        assert_eq!(pos_of(&flow, "a").pos, Pos { line: 1, column: 4 });
    }

    #[test]
    fn paths_quote_unusual_keys() {
        assert_eq!(child("", "tasks"), "tasks");
        assert_eq!(child("tasks", "fix-42"), "tasks.fix-42");
        assert_eq!(
            child("upstream.resolve", "a.b:443"),
            "upstream.resolve.\"a.b:443\""
        );
        assert_eq!(element("tasks.t.allow", 2), "tasks.t.allow[2]");
    }

    #[test]
    fn syntax_error_has_position() {
        let err = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(err.pos.line >= 1);
        assert!(err.message.starts_with("YAML syntax error"));
    }

    #[test]
    fn duplicate_keys_are_reported() {
        let (_, problems) = parse("a: 1\nb: 2\na: 3\n").unwrap();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].pos, Pos { line: 3, column: 1 });
    }

    #[test]
    fn aliases_expand_and_empty_is_a_map() {
        let (root, _) = parse("a: &x [1, 2]\nb: *x\n").unwrap();
        assert!(matches!(pos_of(&root, "b").kind, NodeKind::Seq(ref v) if v.len() == 2));
        let (root, _) = parse("# nothing\n").unwrap();
        assert!(matches!(root.kind, NodeKind::Map(ref e) if e.is_empty()));
    }

    #[test]
    fn alias_bombs_are_refused() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..8 {
            let p = i - 1;
            text.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        let (_, problems) = parse(&text).unwrap();
        assert!(problems.iter().any(|p| p.message.contains("expands")));
    }
}
