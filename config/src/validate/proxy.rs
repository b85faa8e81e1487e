//! `upstream.proxy`: the parent proxy's URL, its credentials (read here through
//! [`crate::secrets`], so no message can contain them) and `no_proxy`.

use super::Checker;
use crate::error::Sink;
use crate::model::{NoProxy, ParentAuth, ParentProxy};
use crate::parent_proxy::parse_url;
use crate::raw::RawParentProxy;
use crate::read::Located;
use crate::secrets;

pub(super) fn check_parent_proxy(
    raw: &Located<RawParentProxy>,
    sink: &mut Sink<'_>,
    checker: &mut Checker<'_>,
) -> Option<ParentProxy> {
    let proxy = &raw.value;
    let parsed = match &proxy.url {
        None => {
            sink.at(
                raw,
                "upstream.proxy has no url",
                "add url: http://proxy.corp.example:3128 (or https://, socks5h://)",
            );
            None
        }
        Some(url) => parse_url(&url.value)
            .map_err(|(message, fix)| sink.at(url, message, fix))
            .ok(),
    };
    let auth = proxy.auth_env.as_ref().and_then(|name| {
        secrets::read_proxy_auth(&name.value, checker.env)
            .map_err(|e| sink.at(name, e.message, e.fix))
            .ok()
            .map(|credentials| ParentAuth {
                env: name.value.clone(),
                credentials,
            })
    });
    let mut no_proxy = Vec::new();
    for entry in proxy.no_proxy.iter().flat_map(|list| list.value.iter()) {
        match NoProxy::parse(&entry.value) {
            Ok(parsed) => no_proxy.push(parsed),
            Err(message) => sink.at(
                entry,
                message,
                "write \".corp.example\" (it and its subdomains), \"host.corp.example\", an IP, or a CIDR such as \"10.0.0.0/8\"",
            ),
        }
    }
    let (kind, host, port) = parsed?;
    if proxy.auth_env.is_some() && auth.is_none() {
        return None;
    }
    Some(ParentProxy {
        kind,
        host,
        port,
        auth,
        no_proxy,
    })
}
