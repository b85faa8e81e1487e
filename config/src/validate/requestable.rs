//! `requestable:` of a policy or a task: raw → [`Requestable`]. Each field is checked like the
//! same field of an `allow:` rule (host pattern, port, methods, path globs, defined secrets).
//! Never sees a secret value.

use super::rules::{check_granted, check_host, check_methods, check_paths, check_port};
use super::tasks::Defined;
use crate::error::Sink;
use crate::raw::RawRequestable;
use crate::read::Located;
use crate::requestable::Requestable;

/// The bounds without errors, indexed by their position in the list.
pub(super) fn check_requestable(
    list: Option<&Located<Vec<Located<RawRequestable>>>>,
    defined: &Defined<'_>,
    sink: &mut Sink<'_>,
) -> Vec<Requestable> {
    let mut bounds = Vec::new();
    for (index, raw) in list
        .map(|l| l.value.as_slice())
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let r = &raw.value;
        let errors_before = sink.errors.len();
        let host = check_host(raw, r.host.as_ref(), sink);
        let port = r.port.as_ref().and_then(|p| check_port(p, sink));
        let methods = r.methods.as_ref().map(|list| check_methods(list, sink));
        let paths = r.paths.as_ref().and_then(|list| check_paths(list, sink));
        let secrets = r
            .secrets
            .as_ref()
            .map(|list| check_granted(list, defined, sink))
            .unwrap_or_default();
        if sink.errors.len() > errors_before {
            continue;
        }
        let Some(host) = host else { continue };
        bounds.push(Requestable {
            index,
            host,
            port,
            methods,
            paths,
            secrets,
        });
    }
    bounds
}
