//! Request trailers are headers (RFC 9110 §6.5): every rule for the request head applies to
//! them, whichever protocol brought them (h2 trailers, HTTP/1.1 chunked trailers) and
//! whichever protocol carries them on.
//!
//! In order: hop-by-hop fields and every `Proxy-*` field are removed
//! ([`strip_hop_by_hop`], as for the head); trailers larger than a head may be are refused;
//! the task's own token refuses the request; so does the placeholder of a secret the rule
//! does not grant. A granted placeholder is swapped for its value **under the header rules**,
//! not the body's: only where the rule's `swap_in` names `headers`, and only in a field that
//! the rule's and the secret's `headers:` name, else the request is refused
//! (`placeholder_not_allowed`), exactly as in the head. Where the rule does not swap in
//! headers, a granted placeholder passes as it is. A trailer is a header field that arrives
//! late, and an operator who scoped a secret to `authorization` meant every field so named;
//! swapping trailers where the body is swapped would let a field the operator excluded carry
//! the value.
//!
//! A refusal fails the request body, which aborts the upstream request (see
//! [`crate::pipeline::swap_body`]). Like [`crate::pipeline::swap`], this writes real values
//! into the outgoing request and nowhere else.

use std::collections::BTreeSet;
use std::sync::{Arc, OnceLock};

use http::HeaderMap;
use keyswap_config::{Rule, Secret, SecretId};
use keyswap_scrub::replace::Replacer;

use crate::pipeline::swap::{swap_headers, token_in_headers, HeaderGrants, Misplaced};
use crate::pipeline::swap_body::{BodyRefused, TrailerCheck};
use crate::state::snapshot::Snapshot;
use crate::state::tasks::LiveTask;
use crate::wire::headers::{strip_hop_by_hop, trailers_too_large};

/// The secrets swapped into a request's trailers, once they have arrived: the audit names
/// them with the head's.
pub type TrailerSecrets = Arc<OnceLock<BTreeSet<SecretId>>>;

/// The header rules of one request's rule, held for its trailers.
struct TrailerRules {
    snapshot: Arc<Snapshot>,
    task: Arc<LiveTask>,
    secrets: Vec<SecretId>,
    /// The rule's own `headers:` scope.
    headers: Option<Vec<String>>,
    /// The rule swaps in headers.
    swap: bool,
    swapped: TrailerSecrets,
    /// The task's own matcher when it holds leases (their placeholders stand for its
    /// credentials), else the snapshot's is used.
    placeholders: Option<Arc<Replacer>>,
}

impl HeaderGrants for TrailerRules {
    fn grants(&self, id: SecretId) -> bool {
        self.secrets.contains(&id)
    }

    fn swaps_into_header(&self, secret: &Secret, name: &str) -> bool {
        let allows = |list: &Option<Vec<String>>| {
            list.as_ref()
                .is_none_or(|names| names.iter().any(|n| n == name))
        };
        allows(&self.headers) && allows(&secret.headers)
    }
}

/// The check a request's trailers get, for its [`crate::pipeline::swap_body::ScanBody`]:
/// `rule`'s header rules, the task's token; the secrets swapped go to `swapped`; swapped
/// with `placeholders` (the task's, with its leases) or else the snapshot's.
pub fn trailer_check(
    snapshot: Arc<Snapshot>,
    task: Arc<LiveTask>,
    rule: &Rule,
    swapped: TrailerSecrets,
    placeholders: Option<Arc<Replacer>>,
) -> TrailerCheck {
    let rules = TrailerRules {
        snapshot,
        task,
        secrets: rule.secrets.clone(),
        headers: rule.headers.clone(),
        swap: rule.swap_in.headers,
        swapped,
        placeholders,
    };
    Box::new(move |trailers| rules.apply(trailers))
}

impl TrailerRules {
    fn apply(&self, trailers: &mut HeaderMap) -> Result<(), BodyRefused> {
        strip_hop_by_hop(trailers, false);
        if trailers_too_large(trailers) {
            return Err(BodyRefused::TrailersTooLarge);
        }
        if let Some(token) = self.task.token_finder() {
            if token_in_headers(token, trailers) {
                return Err(BodyRefused::Misplaced(Misplaced::TaskToken {
                    part: "trailers",
                }));
            }
        }
        let snapshot = &self.snapshot;
        // Swapped on a copy: a secret that cannot be sent must not be written at all.
        let mut swapped = trailers.clone();
        let placeholders = self
            .placeholders
            .as_deref()
            .unwrap_or(&snapshot.placeholders);
        let used = swap_headers(
            placeholders,
            &mut swapped,
            self,
            &snapshot.config,
            self.swap,
        )
        .map_err(BodyRefused::Misplaced)?
        .used;
        if let Some(stale) = used.iter().find(|id| snapshot.stale[id.0]) {
            return Err(BodyRefused::SecretUnavailable(*stale));
        }
        if !used.is_empty() {
            *trailers = swapped;
            let _ = self.swapped.set(used);
        }
        Ok(())
    }
}
