//! The approval webhook: a held request is posted to `approval.webhook`, fire-and-forget,
//! through the upstream client (same trust roots and address rules as upstreams). The body is
//! the listing of the request: names, host, method and path, never a secret value or a token.

use std::time::Duration;

use crate::api::ApprovalInfo;
use crate::error::ErrorChain;
use crate::state::snapshot::Snapshot;

/// How long the webhook receiver may take to answer before keyswap stops waiting.
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(5);

/// Posts the waiting request to `approval.webhook`, fire-and-forget, through the upstream
/// client (same trust roots and address rules as upstreams). The body is the listing of
/// the request: names, host, method and path, never a secret value or a token.
pub(crate) fn notify(snapshot: &Snapshot, url: &str, info: &Option<ApprovalInfo>) {
    let Some(info) = info else {
        return;
    };
    let Ok(body) = serde_json::to_vec(info) else {
        return;
    };
    let request = http::Request::post(url)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::USER_AGENT, "keyswap-approval")
        .body(keyswap_scrub::body::full(body));
    let Ok(request) = request else {
        tracing::warn!(webhook = %url, "approval webhook URL cannot be used");
        return;
    };
    // Through UpstreamClients::request: the parent proxy (and its credentials) apply here too.
    let upstream = snapshot.upstream.clone();
    let url = url.to_string();
    let id = info.id.clone();
    tokio::spawn(async move {
        match tokio::time::timeout(WEBHOOK_TIMEOUT, upstream.request(request, false)).await {
            Ok(Ok(response)) => {
                tracing::debug!(approval = %id, webhook = %url, status = response.status().as_u16(), "approval webhook answered")
            }
            Ok(Err(e)) => {
                tracing::warn!(approval = %id, webhook = %url, error = %ErrorChain(&e), "approval webhook failed")
            }
            Err(_) => tracing::warn!(approval = %id, webhook = %url, "approval webhook timed out"),
        }
    });
}
