//! A fake OAuth2 provider with refresh-token rotation (RFC 6749 §6, OAuth 2.0 Security BCP
//! §4.14): `POST /oauth/token` with `grant_type=refresh_token` and the client's credentials
//! in the form answers a new access token and a new refresh token, and the old refresh token
//! is spent; presenting a spent one again revokes the whole grant (every token of it) and is
//! answered `invalid_grant`, as providers with reuse detection do. `GET /api/me` takes a live
//! access token (401 otherwise) and echoes it (an upstream that reflects it, for the
//! scrubber). Every value it issues starts with `KSREAL`.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Method, Request, Response};
use keyswap_certs::CertificateAuthority;
use serde_json::json;

use crate::fake_server::{credential, issue_value, json, FakeServer};

struct State {
    client_id: String,
    client_secret: String,
    /// The refresh token that works now; `None` once the grant is revoked.
    current: Mutex<Option<String>>,
    spent: Mutex<HashSet<String>>,
    access: Mutex<Vec<(String, SystemTime)>>,
    lifetime: Duration,
    refreshes: AtomicUsize,
    /// Every call of the token endpoint, answered or refused.
    token_requests: AtomicUsize,
    reuse_detected: AtomicUsize,
}

pub struct FakeOauth {
    pub server: FakeServer,
    state: Arc<State>,
}

impl FakeOauth {
    /// A provider whose grant starts with refresh token `initial`.
    pub async fn start(
        ca: &CertificateAuthority,
        client_id: &str,
        client_secret: &str,
        initial: &str,
    ) -> FakeOauth {
        let state = Arc::new(State {
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            current: Mutex::new(Some(initial.into())),
            spent: Mutex::default(),
            access: Mutex::default(),
            lifetime: Duration::from_secs(3600),
            refreshes: AtomicUsize::new(0),
            token_requests: AtomicUsize::new(0),
            reuse_detected: AtomicUsize::new(0),
        });
        let handler_state = state.clone();
        let server = FakeServer::start(
            ca,
            &["oauth.test"],
            Arc::new(move |req| handle(&handler_state, req)),
        )
        .await;
        FakeOauth { server, state }
    }

    /// Successful refreshes so far.
    pub fn refreshes(&self) -> usize {
        self.state.refreshes.load(Ordering::SeqCst)
    }

    /// Calls of the token endpoint, answered or refused.
    pub fn token_requests(&self) -> usize {
        self.state.token_requests.load(Ordering::SeqCst)
    }

    /// Times a spent refresh token was presented again.
    pub fn reuse_detected(&self) -> usize {
        self.state.reuse_detected.load(Ordering::SeqCst)
    }

    /// The refresh token that works now.
    pub fn current_refresh_token(&self) -> Option<String> {
        self.state.current.lock().unwrap().clone()
    }

    /// Every access token issued.
    pub fn access_tokens(&self) -> Vec<String> {
        self.state
            .access
            .lock()
            .unwrap()
            .iter()
            .map(|(t, _)| t.clone())
            .collect()
    }

    /// Revokes the grant (the user disconnected the app).
    pub fn revoke_grant(&self) {
        *self.state.current.lock().unwrap() = None;
        self.state.access.lock().unwrap().clear();
    }
}

fn handle(state: &State, req: Request<Bytes>) -> Response<Bytes> {
    match (req.method(), req.uri().path()) {
        (&Method::POST, "/oauth/token") => token(state, &req),
        (&Method::GET, "/api/me") => {
            let sent = credential(&req).unwrap_or_default();
            let live = state
                .access
                .lock()
                .unwrap()
                .iter()
                .any(|(t, expires)| *t == sent && *expires > SystemTime::now());
            if live {
                json(200, json!({"viewer": "agent", "you_sent": sent}))
            } else {
                json(401, json!({"error": "invalid_token"}))
            }
        }
        _ => json(404, json!({"error": "not_found"})),
    }
}

fn token(state: &State, req: &Request<Bytes>) -> Response<Bytes> {
    state.token_requests.fetch_add(1, Ordering::SeqCst);
    let form: Vec<(String, String)> = url_pairs(req.body());
    let get = |key: &str| form.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
    if get("client_id") != Some(&state.client_id)
        || get("client_secret") != Some(&state.client_secret)
    {
        return json(401, json!({"error": "invalid_client"}));
    }
    if get("grant_type") != Some("refresh_token") {
        return json(400, json!({"error": "unsupported_grant_type"}));
    }
    let presented = get("refresh_token").unwrap_or_default().to_string();
    let mut current = state.current.lock().unwrap();
    if current.as_deref() != Some(presented.as_str()) {
        if state.spent.lock().unwrap().contains(&presented) {
            // Reuse of a spent token: the whole grant is revoked.
            state.reuse_detected.fetch_add(1, Ordering::SeqCst);
            *current = None;
            state.access.lock().unwrap().clear();
        }
        return json(400, json!({"error": "invalid_grant"}));
    }
    state.spent.lock().unwrap().insert(presented);
    let (access, refresh) = (issue_value("at"), issue_value("rt"));
    *current = Some(refresh.clone());
    state
        .access
        .lock()
        .unwrap()
        .push((access.clone(), SystemTime::now() + state.lifetime));
    state.refreshes.fetch_add(1, Ordering::SeqCst);
    json(
        200,
        json!({"access_token": access, "token_type": "bearer", "expires_in": state.lifetime.as_secs(), "refresh_token": refresh}),
    )
}

/// `application/x-www-form-urlencoded` pairs, percent-decoded (`+` is a space).
fn url_pairs(body: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(body);
    let decode = |s: &str| {
        let s = s.replace('+', " ");
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            let hex = |b: u8| (b as char).to_digit(16);
            match (
                bytes[i],
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) {
                (b'%', Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                }
                (b, _, _) => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    text.split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}
