//! Path generalisation: the recorded (normalised) paths of one rule become the fewest
//! `paths:` patterns that cover them, never wider than the run showed a need for.
//!
//! - a segment that is an id — a number, a UUID, a hex digest (7 or more hex digits with a
//!   digit among them), a date (`2026-12-07`) — becomes `*` (exactly one segment);
//! - a prefix with more than `max_children` distinct next segments becomes `prefix/**`
//!   (and `prefix` itself stays, if it was requested: `/a/**` does not match `/a`);
//! - every other segment stays literal, glob characters escaped.

use std::collections::BTreeMap;

/// One segment of a pattern.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Segment {
    Literal(String),
    /// An id: `*`.
    Any,
}

#[derive(Debug, Default)]
struct Node {
    children: BTreeMap<Segment, Node>,
    /// A recorded path ends here.
    end: bool,
}

/// Whether a path segment is an id that varies from request to request.
pub fn is_id(segment: &str) -> bool {
    let bytes = segment.as_bytes();
    let all = |f: fn(&u8) -> bool| !bytes.is_empty() && bytes.iter().all(f);
    let numeric = all(u8::is_ascii_digit);
    let digest =
        bytes.len() >= 7 && all(u8::is_ascii_hexdigit) && bytes.iter().any(u8::is_ascii_digit);
    numeric || digest || is_uuid(segment) || is_date(segment)
}

fn is_uuid(segment: &str) -> bool {
    let groups: Vec<&str> = segment.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, len)| g.len() == len && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// `YYYY-MM-DD`, optionally followed by a time (`2026-12-07T10:00:00Z`).
fn is_date(segment: &str) -> bool {
    let b = segment.as_bytes();
    b.len() >= 10
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[5..7].iter().all(u8::is_ascii_digit)
        && b[7] == b'-'
        && b[8..10].iter().all(u8::is_ascii_digit)
        && (b.len() == 10 || b[10] == b'T')
}

/// A literal segment with the glob characters escaped.
fn escape(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for c in segment.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '{' | '}' | '\\' | ',') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The patterns covering `paths` (normalised, each starting with `/`), sorted.
pub fn generalise<S: AsRef<str>>(paths: &[S], max_children: usize) -> Vec<String> {
    let mut root = Node::default();
    for path in paths {
        let path = path.as_ref();
        let Some(rest) = path.strip_prefix('/') else {
            continue;
        };
        let mut node = &mut root;
        if !rest.is_empty() {
            for segment in rest.split('/') {
                let key = match is_id(segment) {
                    true => Segment::Any,
                    false => Segment::Literal(segment.to_string()),
                };
                node = node.children.entry(key).or_default();
            }
        }
        node.end = true;
    }
    let mut out = Vec::new();
    emit(&root, "", max_children, &mut out);
    out.sort();
    out.dedup();
    out
}

fn emit(node: &Node, prefix: &str, max_children: usize, out: &mut Vec<String>) {
    if node.end {
        out.push(if prefix.is_empty() {
            "/".into()
        } else {
            prefix.to_string()
        });
    }
    if node.children.len() > max_children {
        out.push(format!("{prefix}/**"));
        return;
    }
    for (segment, child) in &node.children {
        let shown = match segment {
            Segment::Any => "*".to_string(),
            Segment::Literal(text) => escape(text),
        };
        emit(child, &format!("{prefix}/{shown}"), max_children, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_uuids_digests_and_dates_become_one_segment() {
        let paths = [
            "/repos/acme/widget/issues/42",
            "/repos/acme/widget/issues/43/comments",
            "/users/1f0c5a9e-3b1d-4c2e-9f0a-1234567890ab",
            "/commits/9fceb02d0ae598e95dc970b74767f19372d61af8",
            "/reports/2026-12-07",
            "/repos/acme/widget",
        ];
        assert_eq!(
            generalise(&paths, 10),
            vec![
                "/commits/*",
                "/reports/*",
                "/repos/acme/widget",
                "/repos/acme/widget/issues/*",
                "/repos/acme/widget/issues/*/comments",
                "/users/*",
            ]
        );
    }

    #[test]
    fn words_stay_literal_and_glob_characters_are_escaped() {
        assert!(!is_id("cafe") && !is_id("deadbeef") && !is_id("v1") && !is_id(""));
        assert!(is_id("0042") && is_id("abc1234") && is_id("2026-12-07T10:00:00Z"));
        assert_eq!(
            generalise(&["/a*b/{x}", "/"], 10),
            vec!["/", "/a\\*b/\\{x\\}"]
        );
    }

    #[test]
    fn a_prefix_with_many_children_becomes_a_wildcard_and_keeps_itself() {
        let mut paths: Vec<String> = (0..4)
            .map(|i| format!("/pkg/name-{}", ["a", "b", "c", "d"][i]))
            .collect();
        paths.push("/pkg".into());
        paths.push("/other".into());
        assert_eq!(generalise(&paths, 3), vec!["/other", "/pkg", "/pkg/**"]);
        assert_eq!(generalise(&paths, 4).len(), 6);
    }

    #[test]
    fn the_same_paths_in_any_order_give_the_same_patterns() {
        let a = generalise(&["/x/1", "/y", "/x/2/z"], 10);
        let b = generalise(&["/x/2/z", "/x/1", "/y"], 10);
        assert_eq!(a, b);
    }
}
