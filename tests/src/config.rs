//! One builder for the configs the tests start keyswap with, instead of a YAML text copied
//! into each test file with a few lines changed:
//!
//! ```
//! use keyswap_tests::config::{ConfigBuilder, Entry, Rule, Secret};
//! let yaml = ConfigBuilder::new()
//!     .secret("github", Secret::github())
//!     .policy("github-ro", Entry::new().rule(Rule::host("api.upstream.test").methods(&["GET"])))
//!     .task("agent", Entry::with_token().rule(Rule::host("api.upstream.test").secrets(&["github"])))
//!     .yaml();
//! assert!(yaml.contains("token_env: KS_TEST_TOKEN"));
//! ```
//!
//! The text keeps the harness's slots (`{dir}`, `{https_port}`, ...), which
//! [`crate::harness::TestEnv::start_with`] fills. Configs that test the config parser itself
//! stay files (`config/tests/fixtures`).

use crate::harness::API_HOST;
use crate::secrets::{GITHUB_PLACEHOLDER, OPENAI_PLACEHOLDER};

/// A config under construction: `version`, `listen` on an ephemeral port, the CA and audit
/// file in the test's directory, the upstream CA and `api.upstream.test` resolved to the
/// harness's HTTPS upstream; everything else is added.
pub struct ConfigBuilder {
    sections: Vec<(String, String)>,
    resolve: Vec<(String, String)>,
    secrets: Vec<(String, Secret)>,
    policies: Vec<(String, Entry)>,
    tasks: Vec<(String, Entry)>,
}

/// One `secrets:` entry: its fields in order, as YAML values.
#[derive(Clone, Default)]
pub struct Secret {
    fields: Vec<(String, String)>,
}

/// A task or a policy: its own fields, then its `allow:` rules.
#[derive(Clone, Default)]
pub struct Entry {
    fields: Vec<(String, String)>,
    rules: Vec<Rule>,
}

/// One `allow:` rule: `host` first, then the fields given.
#[derive(Clone)]
pub struct Rule {
    fields: Vec<(String, String)>,
}

/// `["a", "b"]`: a flow sequence of double-quoted strings.
fn list(items: &[&str]) -> String {
    let quoted: Vec<String> = items.iter().map(|i| format!("{i:?}")).collect();
    format!("[{}]", quoted.join(", "))
}

impl Secret {
    /// Read from the environment variable `var`.
    pub fn env(var: &str, placeholder: &str) -> Secret {
        Secret::default()
            .field("from_env", var)
            .field("placeholder", placeholder)
    }

    /// Printed by a command (`argv`): needs no variable, so a config reloaded from disk
    /// reads it too.
    pub fn command(argv: &[&str], placeholder: &str) -> Secret {
        Secret::default()
            .field("from_command", &list(argv))
            .field("placeholder", placeholder)
    }

    /// The suite's `github` secret, from `KS_TEST_GITHUB` (see `harness::test_env_values`).
    pub fn github() -> Secret {
        Secret::env("KS_TEST_GITHUB", GITHUB_PLACEHOLDER)
    }

    /// The suite's `openai` secret, from `KS_TEST_OPENAI`.
    pub fn openai() -> Secret {
        Secret::env("KS_TEST_OPENAI", OPENAI_PLACEHOLDER)
    }

    /// Any other field, `value` written as YAML.
    pub fn field(mut self, key: &str, value: &str) -> Secret {
        self.fields.push((key.to_string(), value.to_string()));
        self
    }
}

impl Entry {
    pub fn new() -> Entry {
        Entry::default()
    }

    /// A static task whose token is the suite's (`token_env: KS_TEST_TOKEN`).
    pub fn with_token() -> Entry {
        Entry::new().field("token_env", "KS_TEST_TOKEN")
    }

    /// Any field before the rules (`ttl`, `on_unlisted`, `expires`), `value` written as YAML.
    pub fn field(mut self, key: &str, value: &str) -> Entry {
        self.fields.push((key.to_string(), value.to_string()));
        self
    }

    pub fn rule(mut self, rule: Rule) -> Entry {
        self.rules.push(rule);
        self
    }

    fn write(&self, out: &mut String, name: &str) {
        out.push_str(&format!("  {name}:\n"));
        for (key, value) in &self.fields {
            out.push_str(&format!("    {key}: {value}\n"));
        }
        if !self.rules.is_empty() {
            out.push_str("    allow:\n");
        }
        for rule in &self.rules {
            for (i, (key, value)) in rule.fields.iter().enumerate() {
                let lead = if i == 0 { "      - " } else { "        " };
                out.push_str(&format!("{lead}{key}: {value}\n"));
            }
        }
    }
}

impl Rule {
    pub fn host(host: &str) -> Rule {
        Rule {
            fields: vec![("host".into(), host.to_string())],
        }
    }

    /// A rule for the harness's HTTPS upstream, `api.upstream.test`.
    pub fn api() -> Rule {
        Rule::host(API_HOST)
    }

    pub fn methods(self, methods: &[&str]) -> Rule {
        self.field("methods", &list(methods))
    }

    pub fn paths(self, paths: &[&str]) -> Rule {
        self.field("paths", &list(paths))
    }

    pub fn secrets(self, secrets: &[&str]) -> Rule {
        self.field("secrets", &list(secrets))
    }

    /// Any other field (`port`, `tunnel`, `budget`, `approve`, ...), `value` written as YAML.
    pub fn field(mut self, key: &str, value: &str) -> Rule {
        self.fields.push((key.to_string(), value.to_string()));
        self
    }
}

impl Default for ConfigBuilder {
    fn default() -> Self {
        ConfigBuilder::new()
    }
}

impl ConfigBuilder {
    pub fn new() -> ConfigBuilder {
        ConfigBuilder {
            sections: Vec::new(),
            resolve: vec![(format!("{API_HOST}:443"), "127.0.0.1:{https_port}".into())],
            secrets: Vec::new(),
            policies: Vec::new(),
            tasks: Vec::new(),
        }
    }

    /// `admin.socket` in the test's directory.
    pub fn admin_socket(self) -> ConfigBuilder {
        self.section("admin", "socket: {dir}/admin.sock")
    }

    /// `admin.socket`, and `admin.listen` on an ephemeral port with its bearer token read
    /// from `token_env`.
    pub fn admin_socket_and_tcp(self, token_env: &str) -> ConfigBuilder {
        self.section(
            "admin",
            &format!("socket: {{dir}}/admin.sock\nlisten: 127.0.0.1:0\ntoken_env: {token_env}"),
        )
    }

    /// `metrics.listen` on an ephemeral port.
    pub fn metrics(self) -> ConfigBuilder {
        self.section("metrics", "listen: 127.0.0.1:0")
    }

    /// One more `upstream.resolve` entry, e.g. (`"other.upstream.test:443"`,
    /// `"127.0.0.1:{https_port}"`).
    pub fn resolve(mut self, authority: &str, target: &str) -> ConfigBuilder {
        self.resolve
            .push((authority.to_string(), target.to_string()));
        self
    }

    /// Any other top-level section (`approval`, `audit`, ...): `body` is its lines, unindented.
    pub fn section(mut self, key: &str, body: &str) -> ConfigBuilder {
        self.sections.push((key.to_string(), body.to_string()));
        self
    }

    pub fn secret(mut self, name: &str, secret: Secret) -> ConfigBuilder {
        self.secrets.push((name.to_string(), secret));
        self
    }

    pub fn policy(mut self, name: &str, policy: Entry) -> ConfigBuilder {
        self.policies.push((name.to_string(), policy));
        self
    }

    pub fn task(mut self, name: &str, task: Entry) -> ConfigBuilder {
        self.tasks.push((name.to_string(), task));
        self
    }

    /// The config's text, with the harness's slots left for it to fill.
    pub fn yaml(&self) -> String {
        let mut out = String::from(
            "version: 1\nlisten: 127.0.0.1:0\nca_dir: {dir}/ca\naudit_log: {dir}/audit.jsonl\n",
        );
        for (key, body) in &self.sections {
            out.push_str(&format!("{key}:\n"));
            for line in body.lines() {
                out.push_str(&format!("  {line}\n"));
            }
        }
        out.push_str("upstream:\n  extra_roots: {dir}/upstream-ca.pem\n  resolve:\n");
        for (authority, target) in &self.resolve {
            out.push_str(&format!("    \"{authority}\": \"{target}\"\n"));
        }
        if !self.secrets.is_empty() {
            out.push_str("secrets:\n");
        }
        for (name, secret) in &self.secrets {
            out.push_str(&format!("  {name}:\n"));
            for (key, value) in &secret.fields {
                out.push_str(&format!("    {key}: {value}\n"));
            }
        }
        for (title, entries) in [("policies", &self.policies), ("tasks", &self.tasks)] {
            if !entries.is_empty() {
                out.push_str(&format!("{title}:\n"));
            }
            for (name, entry) in entries.iter() {
                entry.write(&mut out, name);
            }
        }
        out
    }
}
