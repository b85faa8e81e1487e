//! A `.env` file's assignments, found without disturbing anything else in the file: each
//! line is kept byte for byte, and only the span of a value is replaced. Lines it does not
//! understand (multi-line values, escapes inside double quotes) are left alone and named.
//!
//! The file's text is held in a zeroizing buffer; values are handed out as spans, and this
//! module never formats one.

use secrecy::zeroize::Zeroizing;

/// One `NAME=VALUE` line (optionally `export NAME=VALUE`, the value optionally quoted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// 1-based line number.
    pub line: usize,
    pub name: String,
    /// Byte range of the value (inside its quotes) in the whole file.
    pub value: std::ops::Range<usize>,
}

/// A line that assigns a variable in a way this parser does not rewrite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported {
    pub line: usize,
    pub name: String,
    pub why: &'static str,
}

/// A `.env` file's text and its assignments.
pub struct DotEnv {
    pub text: Zeroizing<String>,
    pub assignments: Vec<Assignment>,
    pub unsupported: Vec<Unsupported>,
}

impl DotEnv {
    pub fn parse(text: Zeroizing<String>) -> DotEnv {
        let mut assignments = Vec::new();
        let mut unsupported = Vec::new();
        let mut offset = 0;
        for (n, raw) in text.split_inclusive('\n').enumerate() {
            let line = raw.trim_end_matches('\n').trim_end_matches('\r');
            match parse_line(line) {
                Parsed::Nothing => {}
                Parsed::Value(name, range) => assignments.push(Assignment {
                    line: n + 1,
                    name,
                    value: offset + range.start..offset + range.end,
                }),
                Parsed::Unsupported(name, why) => unsupported.push(Unsupported {
                    line: n + 1,
                    name,
                    why,
                }),
            }
            offset += raw.len();
        }
        DotEnv {
            text,
            assignments,
            unsupported,
        }
    }

    /// The value of `a` (exposed to the caller only, which keeps it in a secret type).
    pub fn value(&self, a: &Assignment) -> &str {
        &self.text[a.value.clone()]
    }

    /// The file's text with each listed value span replaced.
    pub fn rewritten(
        &self,
        replacements: &[(std::ops::Range<usize>, String)],
    ) -> Zeroizing<String> {
        let mut sorted: Vec<_> = replacements.iter().collect();
        sorted.sort_by_key(|(r, _)| r.start);
        let mut out = Zeroizing::new(String::with_capacity(self.text.len()));
        let mut pos = 0;
        for (range, new) in sorted {
            out.push_str(&self.text[pos..range.start]);
            out.push_str(new);
            pos = range.end;
        }
        out.push_str(&self.text[pos..]);
        out
    }
}

enum Parsed {
    Nothing,
    Value(String, std::ops::Range<usize>),
    Unsupported(String, &'static str),
}

fn parse_line(line: &str) -> Parsed {
    let indent = line.len() - line.trim_start().len();
    let mut rest = &line[indent..];
    let mut at = indent;
    if let Some(after) = rest.strip_prefix("export ") {
        let skipped = rest.len() - after.trim_start().len();
        at += skipped;
        rest = &rest[skipped..];
    }
    let name_len = rest
        .bytes()
        .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
        .count();
    if name_len == 0 || rest.as_bytes()[0].is_ascii_digit() {
        return Parsed::Nothing;
    }
    let name = rest[..name_len].to_string();
    let after_name = &rest[name_len..];
    let eq = after_name.len() - after_name.trim_start_matches([' ', '\t']).len();
    if !after_name[eq..].starts_with('=') {
        return Parsed::Nothing;
    }
    let value_at = at + name_len + eq + 1;
    let after_eq = &line[value_at..];
    let lead = after_eq.len() - after_eq.trim_start_matches([' ', '\t']).len();
    let start = value_at + lead;
    let value = &line[start..];
    match value.as_bytes().first() {
        Some(&quote @ (b'"' | b'\'')) => {
            let Some(close) = value[1..].find(quote as char) else {
                return Parsed::Unsupported(name, "its quoted value goes on past the line");
            };
            let inner = &value[1..1 + close];
            if quote == b'"' && inner.contains(['\\', '$']) {
                return Parsed::Unsupported(
                    name,
                    "its double-quoted value has escapes or expansions",
                );
            }
            Parsed::Value(name, start + 1..start + 1 + close)
        }
        Some(b'`') => Parsed::Unsupported(name, "its value is a backquoted command"),
        _ => {
            // Unquoted: up to a comment (" #") or the end, without trailing blanks.
            let end = value
                .find(" #")
                .or_else(|| value.find("\t#"))
                .unwrap_or(value.len());
            let value = value[..end].trim_end();
            if value.starts_with('$') {
                return Parsed::Unsupported(name, "its value refers to another variable");
            }
            Parsed::Value(name, start..start + value.len())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> DotEnv {
        DotEnv::parse(Zeroizing::new(text.to_string()))
    }

    #[test]
    fn values_are_found_in_every_common_spelling() {
        let env = parse(
            "# comment\nA=one-value\nexport B = \"two value\"\r\nC='three'  # note\n\nD=four # c\nE=\n",
        );
        let found: Vec<(&str, &str)> = env
            .assignments
            .iter()
            .map(|a| (a.name.as_str(), env.value(a)))
            .collect();
        assert_eq!(
            found,
            [
                ("A", "one-value"),
                ("B", "two value"),
                ("C", "three"),
                ("D", "four"),
                ("E", "")
            ]
        );
        assert_eq!(env.assignments[1].line, 3);
    }

    #[test]
    fn a_rewrite_changes_only_the_value() {
        let env = parse("X=1\nexport TOKEN='abc'  # keep\r\nY=2");
        let a = &env.assignments[1];
        let out = env.rewritten(&[(a.value.clone(), "new".into())]);
        assert_eq!(out.as_str(), "X=1\nexport TOKEN='new'  # keep\r\nY=2");
    }

    #[test]
    fn what_cannot_be_rewritten_is_named() {
        let env = parse("A=\"x\\ny\"\nB='open\nC=$OTHER\n");
        let names: Vec<&str> = env.unsupported.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["A", "B", "C"]);
        assert!(env.assignments.is_empty());
    }
}
