//! What a reload changed, for its one log line: static tasks added, removed and changed,
//! policies changed, runtime tasks revoked, and which secrets were re-read (every one is: a
//! reload reads each source again) and which of those now hold a different value.
//!
//! Names only: never a value, never a token. Whether a value or a token changed is decided
//! by comparing them here; neither is formatted.

use std::collections::BTreeSet;
use std::fmt;

use keyswap_config::{Config, Rule, Secret};
use secrecy::{ExposeSecret, SecretString};

use crate::api::Reloaded;

/// The differences between two configs that an operator wants to see after a reload.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ConfigDiff {
    pub tasks_added: Vec<String>,
    pub tasks_removed: Vec<String>,
    /// Present before and after with other rules, token, expiry or policy.
    pub tasks_changed: Vec<String>,
    pub policies_changed: Vec<String>,
    /// Runtime tasks ended because their policy went away.
    pub runtime_tasks_revoked: Vec<String>,
    /// How many secrets the new config read from their sources.
    pub secrets_reread: usize,
    pub secrets_added: Vec<String>,
    pub secrets_removed: Vec<String>,
    /// Secrets whose value (or placeholder) differs from the one in force before.
    pub secrets_changed: Vec<String>,
}

impl ConfigDiff {
    pub fn between(old: &Config, new: &Config, reloaded: &Reloaded) -> ConfigDiff {
        let mut diff = ConfigDiff {
            secrets_reread: new.secrets.len(),
            ..ConfigDiff::default()
        };
        for (id, task) in &new.tasks {
            match old.tasks.get(id) {
                None => diff.tasks_added.push(id.clone()),
                Some(before) => {
                    let same = same_token(before.token.as_ref(), task.token.as_ref())
                        && before.expires == task.expires
                        && before.policy == task.policy
                        && rules_fingerprint(old, &before.rules)
                            == rules_fingerprint(new, &task.rules);
                    if !same {
                        diff.tasks_changed.push(id.clone());
                    }
                }
            }
        }
        diff.tasks_removed = old
            .tasks
            .keys()
            .filter(|id| !new.tasks.contains_key(*id))
            .cloned()
            .collect();
        let policies: BTreeSet<&String> = old.policies.keys().chain(new.policies.keys()).collect();
        for name in policies {
            let before = old.policies.get(name);
            let after = new.policies.get(name);
            let same = match (before, after) {
                (Some(b), Some(a)) => {
                    b.ttl == a.ttl
                        && b.max_ttl == a.max_ttl
                        && rules_fingerprint(old, &b.rules) == rules_fingerprint(new, &a.rules)
                }
                _ => false,
            };
            if !same {
                diff.policies_changed.push(name.clone());
            }
        }
        diff.runtime_tasks_revoked = reloaded.tasks_revoked.clone();
        for secret in &new.secrets {
            match old.secrets.iter().find(|s| s.name == secret.name) {
                None => diff.secrets_added.push(secret.name.clone()),
                Some(before) if !same_secret(before, secret) => {
                    diff.secrets_changed.push(secret.name.clone())
                }
                Some(_) => {}
            }
        }
        diff.secrets_removed = old
            .secrets
            .iter()
            .filter(|s| !new.secrets.iter().any(|n| n.name == s.name))
            .map(|s| s.name.clone())
            .collect();
        diff
    }

    /// Writes the reload's one INFO line.
    pub fn log(&self) {
        tracing::info!(
            tasks_added = %List(&self.tasks_added),
            tasks_removed = %List(&self.tasks_removed),
            tasks_changed = %List(&self.tasks_changed),
            policies_changed = %List(&self.policies_changed),
            runtime_tasks_revoked = %List(&self.runtime_tasks_revoked),
            secrets_reread = self.secrets_reread,
            secrets_added = %List(&self.secrets_added),
            secrets_removed = %List(&self.secrets_removed),
            secrets_changed = %List(&self.secrets_changed),
            "config reloaded"
        );
    }
}

/// `[a, b]`, `[]`: names as a short list for a log field.
struct List<'a>(&'a [String]);

impl fmt::Display for List<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}]", self.0.join(", "))
    }
}

fn same_token(a: Option<&SecretString>, b: Option<&SecretString>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => a.expose_secret() == b.expose_secret(),
        _ => false,
    }
}

fn same_secret(a: &Secret, b: &Secret) -> bool {
    a.placeholder == b.placeholder
        && a.headers == b.headers
        && a.value.expose_secret() == b.value.expose_secret()
}

/// The rules as text with secret ids replaced by names (ids are positions in the secrets
/// list, which a reload may reorder without changing any grant).
fn rules_fingerprint(config: &Config, rules: &[Rule]) -> String {
    let mut out = String::new();
    for rule in rules {
        let mut bare = rule.clone();
        bare.secrets.clear();
        let names: Vec<&str> = rule
            .secrets
            .iter()
            .map(|id| config.secret(*id).name.as_str())
            .collect();
        out.push_str(&format!("{bare:?} secrets={names:?}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::path::Path;

    fn load(yaml: &str, value: &str) -> Config {
        let env = HashMap::from([
            ("KS_DIFF_A".to_string(), value.to_string()),
            (
                "KS_DIFF_TOKEN".to_string(),
                "token-0123456789abcdef".to_string(),
            ),
        ]);
        keyswap_config::load_str(yaml, Path::new("keyswap.yaml"), &env)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    const BASE: &str = r#"
version: 1
secrets:
  a:
    from_env: KS_DIFF_A
    placeholder: ph_a_0000000000000000
tasks:
  keep:
    token_env: KS_DIFF_TOKEN
    allow:
      - host: a.test
        secrets: [a]
  change:
    token_env: KS_DIFF_TOKEN
    allow:
      - host: b.test
  drop:
    token_env: KS_DIFF_TOKEN
    allow:
      - host: c.test
"#;

    #[test]
    fn names_what_changed_and_never_a_value() {
        let old = load(BASE, "KSREAL_diff_value_one");
        let new_yaml = BASE
            .replace(
                "      - host: b.test",
                "      - host: b.test\n        methods: [GET]",
            )
            .replace(
                "  drop:\n    token_env: KS_DIFF_TOKEN\n    allow:\n      - host: c.test\n",
                "  fresh:\n    token_env: KS_DIFF_TOKEN\n    allow:\n      - host: d.test\n",
            );
        let new = load(&new_yaml, "KSREAL_diff_value_two");
        let reloaded = Reloaded {
            tasks_added: Vec::new(),
            tasks_removed: Vec::new(),
            tasks_revoked: vec!["runtime-1".into()],
        };
        let diff = ConfigDiff::between(&old, &new, &reloaded);
        assert_eq!(diff.tasks_added, vec!["fresh"]);
        assert_eq!(diff.tasks_removed, vec!["drop"]);
        assert_eq!(diff.tasks_changed, vec!["change"]);
        assert_eq!(diff.runtime_tasks_revoked, vec!["runtime-1"]);
        assert_eq!(diff.secrets_reread, 1);
        assert_eq!(diff.secrets_changed, vec!["a"]);
        assert!(!format!("{diff:?}").contains("KSREAL"));

        let same = ConfigDiff::between(&old, &load(BASE, "KSREAL_diff_value_one"), &reloaded);
        assert!(same.tasks_changed.is_empty() && same.secrets_changed.is_empty());
        assert!(same.tasks_added.is_empty() && same.tasks_removed.is_empty());
    }
}
