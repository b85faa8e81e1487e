//! One consistent view of the configuration and everything derived from it: the matchers
//! that find placeholders and real values, and the upstream clients. A reload builds a new
//! snapshot completely before swapping it in, so a bad config never replaces a good one and
//! no request ever sees half of each.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use keyswap_config::{Config, Requestable, Rule, SecretId};
use secrecy::{ExposeSecret, SecretString};

use crate::error::ProxyError;
use crate::state::tasks::{LiveTask, TaskSource};
use crate::upstream::UpstreamClients;
use keyswap_scrub::encodings;
use keyswap_scrub::replace::Replacer;

pub struct Snapshot {
    pub config: Config,
    /// Pattern `i` is the placeholder of `SecretId(i)`; its replacement the real value.
    pub placeholders: Replacer,
    /// Every form of every real value ([`keyswap_scrub::encodings`]), matched regardless of ASCII
    /// case, each replaced by the same form of its placeholder (or by something that reveals
    /// nothing). Values replaced by a refresh are included (an upstream may still echo them).
    /// Built once per snapshot: no request builds an automaton.
    pub scrubber: Arc<Replacer>,
    pub upstream: UpstreamClients,
    /// Per secret: when its current value was read (the config load, or its last refresh).
    pub loaded_at: Vec<Instant>,
    /// Per secret: its refresh has failed for longer than one more `refresh` period, so its
    /// value is no longer swapped in.
    pub stale: Vec<bool>,
    /// The value each refreshed secret had before its value last changed, still scrubbed.
    retired: Vec<(SecretId, SecretString)>,
}

impl Snapshot {
    /// The rules `task` acts under in this snapshot: a static task's own (after its
    /// policy's), a runtime task's policy's. `None` if this config no longer has them.
    pub fn rules_of(&self, task: &LiveTask) -> Option<&[Rule]> {
        match &task.source {
            TaskSource::Config => self.config.task(&task.id).map(|t| t.rules.as_slice()),
            TaskSource::Runtime { policy } => {
                self.config.policy(policy).map(|p| p.rules.as_slice())
            }
        }
    }

    /// What `task`'s agent may ask for in this snapshot: a static task's `requestable:` (or its
    /// policy's), a runtime task's policy's. Empty if none (or the config no longer has it).
    pub fn requestable_of(&self, task: &LiveTask) -> &[Requestable] {
        match &task.source {
            TaskSource::Config => self.config.task(&task.id).map(|t| t.requestable.as_slice()),
            TaskSource::Runtime { policy } => {
                self.config.policy(policy).map(|p| p.requestable.as_slice())
            }
        }
        .unwrap_or_default()
    }

    /// The rules `task` acts under: its configured ones, then those its approved grants make
    /// (inside the current bounds).
    pub fn granted_rules_of(&self, task: &LiveTask) -> Vec<Rule> {
        task.agent.rules(&self.config, self.requestable_of(task))
    }

    pub fn build(
        config: Config,
        provider: Arc<rustls::crypto::CryptoProvider>,
    ) -> Result<Snapshot, ProxyError> {
        let upstream = UpstreamClients::build(&config, provider)?;
        let now = Instant::now();
        let count = config.secrets.len();
        Snapshot::assemble(
            config,
            upstream,
            vec![now; count],
            vec![false; count],
            Vec::new(),
        )
    }

    /// This snapshot with secret `id`'s value replaced by a refresh (the upstream clients and
    /// their pooled connections are kept; the old value stays in the scrubber).
    pub fn with_refreshed(
        &self,
        id: SecretId,
        value: SecretString,
    ) -> Result<Snapshot, ProxyError> {
        let mut config = self.config.clone();
        let old = std::mem::replace(&mut config.secrets[id.0].value, value);
        let mut retired = self.retired.clone();
        // A refresh that reads the same value again keeps the value retired before it: an
        // upstream may still echo that one.
        if old.expose_secret() != config.secrets[id.0].value.expose_secret() {
            retired.retain(|(r, _)| *r != id);
            retired.push((id, old));
        }
        let mut loaded_at = self.loaded_at.clone();
        loaded_at[id.0] = Instant::now();
        let mut stale = self.stale.clone();
        stale[id.0] = false;
        Snapshot::assemble(config, self.upstream.clone(), loaded_at, stale, retired)
    }

    /// This snapshot with secret `id` marked stale (no longer swapped in) or fresh again.
    pub fn with_stale(&self, id: SecretId, is_stale: bool) -> Result<Snapshot, ProxyError> {
        let mut stale = self.stale.clone();
        stale[id.0] = is_stale;
        Snapshot::assemble(
            self.config.clone(),
            self.upstream.clone(),
            self.loaded_at.clone(),
            stale,
            self.retired.clone(),
        )
    }

    /// Every form of every real value → the same form of its placeholder (what
    /// [`Snapshot::scrubber`] was built from), for a scrubber that adds lease values
    /// ([`crate::state::leases`]).
    pub fn scrub_pairs(&self) -> Vec<(Vec<u8>, Bytes)> {
        scrub_pairs(&self.config, &self.retired)
    }

    fn assemble(
        config: Config,
        upstream: UpstreamClients,
        loaded_at: Vec<Instant>,
        stale: Vec<bool>,
        retired: Vec<(SecretId, SecretString)>,
    ) -> Result<Snapshot, ProxyError> {
        let placeholders = Replacer::new(
            config
                .secrets
                .iter()
                .map(|s| {
                    // An `aws:` key id is never swapped in (it is signed with, by
                    // pipeline::sign_aws): its placeholder is found, and replaced by itself.
                    let value = match &s.aws {
                        Some(_) => s.placeholder.as_bytes(),
                        None => s.value.expose_secret().as_bytes(),
                    };
                    (
                        s.placeholder.as_bytes().to_vec(),
                        Bytes::copy_from_slice(value),
                    )
                })
                .collect(),
        )
        .map_err(ProxyError::Matcher)?;
        let scrubber = Replacer::with_case_variants(scrub_pairs(&config, &retired))
            .map_err(ProxyError::Matcher)?;
        Ok(Snapshot {
            config,
            placeholders,
            scrubber: Arc::new(scrubber),
            upstream,
            loaded_at,
            stale,
            retired,
        })
    }
}

/// Every form of every real value → the same form of its placeholder: current values first,
/// in secret order, then the values refreshes replaced. A form shared by two values is
/// scrubbed once, to the first one's replacement (the scrubber keeps the first).
fn scrub_pairs(config: &Config, retired: &[(SecretId, SecretString)]) -> Vec<(Vec<u8>, Bytes)> {
    let current = config.secrets.iter().map(|s| (&s.value, &s.placeholder));
    // An `aws:` secret's secret access key is scrubbed like its key id (the secret's value).
    let aws_keys = config.secrets.iter().filter_map(|s| {
        let aws = s.aws.as_ref()?;
        Some((&aws.secret_access_key, &aws.secret_access_key_placeholder))
    });
    let old = retired
        .iter()
        .map(|(id, value)| (value, &config.secret(*id).placeholder));
    current
        .chain(aws_keys)
        .chain(old)
        .flat_map(|(value, placeholder)| encodings::forms(value.expose_secret(), placeholder))
        .collect()
}
