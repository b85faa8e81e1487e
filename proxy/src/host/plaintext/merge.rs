//! The `secrets:` entries `keyswap import-env` prints, and their merge into a config file's
//! text: the user's text is kept as it is, the entries go at the end of its block-style
//! `secrets:` mapping (or a new one at the end of the file), and the rule skeletons follow
//! as comments. Names, paths and placeholders only: no value passes through here.

use std::fmt::Write;
use std::path::PathBuf;

/// One imported secret, as it goes into the config.
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: String,
    pub from_file: PathBuf,
    pub placeholder: String,
    /// The variable `keyswap exec` sets to the placeholder (the `.env`'s variable).
    pub env: String,
    /// The host a rule would grant it on, if known.
    pub host: Option<String>,
}

/// Why the entries could not be merged into the text.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct MergeError(pub String);

/// A double-quoted YAML scalar (JSON string syntax is valid YAML).
fn quoted(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_else(|_| format!("\"{}\"", text.escape_default()))
}

/// The entries under a `secrets:` key, each line indented by `indent` per level.
pub fn entries_yaml(entries: &[Entry], indent: usize) -> String {
    let one = " ".repeat(indent);
    let two = " ".repeat(indent * 2);
    let mut out = String::new();
    for e in entries {
        let _ = writeln!(out, "{one}{}:", e.name);
        let _ = writeln!(
            out,
            "{two}from_file: {}",
            quoted(&e.from_file.to_string_lossy())
        );
        let _ = writeln!(out, "{two}placeholder: {}", quoted(&e.placeholder));
        let _ = writeln!(out, "{two}env: {}", e.env);
    }
    out
}

/// A commented rule per secret, to paste into a task's or policy's `allow:`.
pub fn rules_comment(entries: &[Entry]) -> String {
    let mut out = String::from(
        "# Rules for the imported secrets: add them to a task's or policy's allow: and\n\
         # uncomment (narrow methods and paths to what the task needs).\n",
    );
    for e in entries {
        let host = e.host.as_deref().unwrap_or("HOST-OF-THE-API");
        let _ = writeln!(out, "#   - host: {host}");
        let _ = writeln!(out, "#     secrets: [{}]", e.name);
    }
    out
}

/// What `keyswap import-env` prints: a `secrets:` section and the rule skeletons.
pub fn printed(entries: &[Entry]) -> String {
    format!(
        "secrets:\n{}{}",
        entries_yaml(entries, 2),
        rules_comment(entries)
    )
}

/// The names of the secrets already in `text`'s top-level block `secrets:` mapping.
pub fn existing_names(text: &str) -> Vec<String> {
    let Some(block) = secrets_block(text) else {
        return Vec::new();
    };
    let lines: Vec<&str> = text.lines().collect();
    lines[block.first..block.end]
        .iter()
        .filter(|l| indent_of(l) == block.indent && !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            l.trim()
                .split_once(':')
                .map(|(n, _)| n.trim_matches(['"', '\'']))
        })
        .map(str::to_string)
        .collect()
}

/// `text` with `entries` added to its `secrets:` (created at the end if there is none) and the
/// rule skeletons appended as comments.
pub fn merge(text: &str, entries: &[Entry]) -> Result<String, MergeError> {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    match find_secrets_key(&lines) {
        Some(at) => {
            let inline = lines[at]["secrets:".len()..].trim();
            if inline == "{}" {
                lines[at] = "secrets:".into();
            } else if !inline.is_empty() && !inline.starts_with('#') {
                return Err(MergeError(
                    "its secrets: is written inline (flow style); add the printed entries by hand"
                        .into(),
                ));
            }
            let block = secrets_block(&lines.join("\n")).unwrap_or(Block {
                first: at + 1,
                end: at + 1,
                indent: 2,
            });
            let insert_at =
                last_content_line(&lines, block.first, block.end).map_or(at + 1, |l| l + 1);
            let new: Vec<String> = entries_yaml(entries, block.indent)
                .lines()
                .map(str::to_string)
                .collect();
            lines.splice(insert_at..insert_at, new);
        }
        None => {
            lines.push("secrets:".into());
            lines.extend(entries_yaml(entries, 2).lines().map(str::to_string));
        }
    }
    let mut out = lines.join("\n");
    out.push('\n');
    out.push_str(&rules_comment(entries));
    Ok(out)
}

/// The lines of the `secrets:` block: `first..end`, entries at `indent` spaces.
struct Block {
    first: usize,
    end: usize,
    indent: usize,
}

fn find_secrets_key(lines: &[impl AsRef<str>]) -> Option<usize> {
    lines.iter().position(|l| {
        let l = l.as_ref();
        l.starts_with("secrets:")
    })
}

fn secrets_block(text: &str) -> Option<Block> {
    let lines: Vec<&str> = text.lines().collect();
    let at = find_secrets_key(&lines)?;
    let first = at + 1;
    // The block ends at the next line that starts in column 0 with something other than a
    // comment (the next top-level key).
    let end = (first..lines.len())
        .find(|&i| {
            let l = lines[i];
            !l.is_empty() && indent_of(l) == 0 && !l.starts_with('#')
        })
        .unwrap_or(lines.len());
    let indent = lines[first..end]
        .iter()
        .find(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map_or(2, |l| indent_of(l));
    Some(Block {
        first,
        end,
        indent: indent.max(1),
    })
}

/// The last line in `first..end` that is indented content (not blank, not a comment).
fn last_content_line(lines: &[String], first: usize, end: usize) -> Option<usize> {
    (first..end).rev().find(|&i| {
        let l = lines[i].trim_start();
        !l.is_empty() && !l.starts_with('#')
    })
}

fn indent_of(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str) -> Entry {
        Entry {
            name: name.into(),
            from_file: PathBuf::from("/state/keyswap/secrets").join(name),
            placeholder: "ghp_abc123abc123abc123".into(),
            env: name.to_ascii_uppercase(),
            host: Some("api.github.com".into()),
        }
    }

    #[test]
    fn entries_go_at_the_end_of_the_secrets_block_keeping_the_users_text() {
        let text = "version: 1\nsecrets:\n    old:\n        from_env: X   # mine\n        placeholder: p-0000000000\n\n# trailing\ntasks: {}\n";
        let merged = merge(text, &[entry("new")]).expect("merged");
        assert!(merged.starts_with(
            "version: 1\nsecrets:\n    old:\n        from_env: X   # mine\n        placeholder: p-0000000000\n    new:\n        from_file: \"/state/keyswap/secrets/new\"\n"
        ), "{merged}");
        assert!(merged.contains("\n\n# trailing\ntasks: {}\n# Rules"));
        assert_eq!(existing_names(&merged), ["old", "new"]);
    }

    #[test]
    fn a_config_without_secrets_gets_a_section() {
        let merged = merge("version: 1\n", &[entry("a")]).expect("merged");
        assert!(merged.starts_with("version: 1\nsecrets:\n  a:\n    from_file:"));
        let merged = merge("version: 1\nsecrets: {}\n", &[entry("a")]).expect("merged");
        assert!(merged.starts_with("version: 1\nsecrets:\n  a:\n"));
        assert!(merge("secrets: {a: {}}\n", &[entry("b")]).is_err());
    }
}
