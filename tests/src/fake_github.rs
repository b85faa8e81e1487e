//! A fake GitHub, strict to the documented contracts keyswap's GitHub App leases rely on:
//! `POST /app/installations/{id}/access_tokens` takes only a JWT signed RS256 with the App's
//! key (verified with its public key), with `iat` not in the future, `exp` after now and at
//! most 10 minutes after `iat`, and `iss` the App's id; it issues a token limited to the
//! requested repositories (a subset of the installation's, else 422) and permissions.
//! `DELETE /installation/token` with a token invalidates it. `GET/POST /repos/{owner}/{repo}/…`
//! answers 401 to a token that is unknown, revoked or expired and 403 outside the token's
//! repositories (and to a write its permissions do not give), as GitHub does.
//! `/repos/{owner}/{repo}/echo` answers with the credential it was sent (an upstream that
//! reflects it, for the scrubber). Issued tokens start with `KSREAL`. Once
//! [`FakeGithub::serve_git`] names a root, `https://github.test/{owner}/{repo}.git` is git's
//! smart HTTP over the bare repository `root/{owner}/{repo}.git` ([`crate::fake_git`]): 401
//! with a Basic challenge without a live token (the password of `x-access-token:<token>`), a
//! clone needs the repository in the token, a push also `contents: write`.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use http::{Method, Request, Response};
use keyswap_certs::CertificateAuthority;
use rsa::pkcs1::{EncodeRsaPrivateKey, EncodeRsaPublicKey};
use serde_json::{json, Value};

use crate::fake_server::{credential, issue_value, json, FakeServer};

/// The owner of every repository of the fake installation.
pub const OWNER: &str = "acme";

/// An App's RSA key pair, generated per test.
pub struct AppKey {
    /// PKCS#1 PEM, as GitHub hands it out.
    pub pem: String,
    /// PKCS#1 DER of the public key.
    pub public_der: Vec<u8>,
}

impl AppKey {
    pub fn generate() -> AppKey {
        let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).expect("RSA key");
        let pem = key
            .to_pkcs1_pem(rsa::pkcs8::LineEnding::LF)
            .expect("PEM")
            .to_string();
        let public_der = key
            .to_public_key()
            .to_pkcs1_der()
            .expect("public DER")
            .as_bytes()
            .to_vec();
        AppKey { pem, public_der }
    }

    /// The base64 lines of the PEM: none of them may appear in any output.
    pub fn body_lines(&self) -> Vec<String> {
        self.pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .map(str::to_string)
            .collect()
    }
}

/// One issued installation token.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    pub token: String,
    pub repositories: Vec<String>,
    pub permissions: BTreeMap<String, String>,
    pub revoked: bool,
    pub expires: SystemTime,
}

struct State {
    app_id: u64,
    installation_id: u64,
    public_der: Vec<u8>,
    repositories: Vec<String>,
    lifetime: Mutex<Duration>,
    tokens: Mutex<Vec<IssuedToken>>,
    mints: AtomicUsize,
    /// Answer 503 to revocations (GitHub is down).
    down: AtomicBool,
    /// Revocations asked for, answered 204 (the token was live) or 401.
    revocations: Mutex<Vec<(String, u16)>>,
    /// (token, path) of every API request that passed.
    served: Mutex<Vec<(String, String)>>,
    /// Where the git repositories are (`None`: no git endpoint).
    git_root: Mutex<Option<std::path::PathBuf>>,
}

pub struct FakeGithub {
    pub server: FakeServer,
    state: Arc<State>,
}

impl FakeGithub {
    pub async fn start(
        ca: &CertificateAuthority,
        key: &AppKey,
        app_id: u64,
        installation_id: u64,
        repositories: &[&str],
    ) -> FakeGithub {
        let state = Arc::new(State {
            app_id,
            installation_id,
            public_der: key.public_der.clone(),
            repositories: repositories.iter().map(|r| r.to_string()).collect(),
            lifetime: Mutex::new(Duration::from_secs(3600)),
            tokens: Mutex::default(),
            mints: AtomicUsize::new(0),
            down: AtomicBool::new(false),
            revocations: Mutex::default(),
            served: Mutex::default(),
            git_root: Mutex::default(),
        });
        let handler_state = state.clone();
        let server = FakeServer::start(
            ca,
            &["api.github.test", "github.test"],
            Arc::new(move |req| handle(&handler_state, req)),
        )
        .await;
        FakeGithub { server, state }
    }

    /// Serves the bare repositories under `root` (`root/{owner}/{repo}.git`) over git's
    /// smart HTTP.
    pub fn serve_git(&self, root: &std::path::Path) {
        *self.state.git_root.lock().unwrap() = Some(root.to_path_buf());
    }

    /// Tokens issued from now on live this long (GitHub's: 1 hour).
    pub fn set_lifetime(&self, lifetime: Duration) {
        *self.state.lifetime.lock().unwrap() = lifetime;
    }

    /// While `down`, revocations are answered 503.
    pub fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::SeqCst);
    }

    pub fn mints(&self) -> usize {
        self.state.mints.load(Ordering::SeqCst)
    }

    pub fn tokens(&self) -> Vec<IssuedToken> {
        self.state.tokens.lock().unwrap().clone()
    }

    pub fn revocations(&self) -> Vec<(String, u16)> {
        self.state.revocations.lock().unwrap().clone()
    }

    /// The tokens API requests to `path_prefix…` passed with.
    pub fn tokens_used_for(&self, path_prefix: &str) -> Vec<String> {
        let served = self.state.served.lock().unwrap();
        served
            .iter()
            .filter(|(_, p)| p.starts_with(path_prefix))
            .map(|(t, _)| t.clone())
            .collect()
    }

    /// What GitHub answers `token` on `GET /repos/acme/{repo}` now (the same check as a
    /// request over the wire).
    pub fn status_for(&self, token: &str, repo: &str) -> u16 {
        authorize(&self.state, token, repo, &Method::GET)
            .err()
            .unwrap_or(200)
    }
}

fn handle(state: &State, req: Request<Bytes>) -> Response<Bytes> {
    let path = req.uri().path().to_string();
    let mint_path = format!("/app/installations/{}/access_tokens", state.installation_id);
    if req.method() == Method::POST && path == mint_path {
        return mint(state, &req);
    }
    if req.method() == Method::DELETE && path == "/installation/token" {
        return revoke(state, &req);
    }
    if let Some(response) = git(state, &req) {
        return response;
    }
    let Some(rest) = path.strip_prefix(&format!("/repos/{OWNER}/")) else {
        return json(404, json!({"message": "Not Found"}));
    };
    let repo = rest.split('/').next().unwrap_or("");
    let Some(token) = credential(&req) else {
        return json(401, json!({"message": "Requires authentication"}));
    };
    if let Err(status) = authorize(state, &token, repo, req.method()) {
        return json(
            status,
            json!({"message": "Resource not accessible by integration"}),
        );
    }
    state
        .served
        .lock()
        .unwrap()
        .push((token.clone(), path.clone()));
    if rest.ends_with("/echo") {
        return json(
            200,
            json!({"full_name": format!("{OWNER}/{repo}"), "you_sent": token}),
        );
    }
    json(200, json!({"full_name": format!("{OWNER}/{repo}")}))
}

/// git's smart HTTP under `/{OWNER}/{repo}.git/`, when a root is set.
fn git(state: &State, req: &Request<Bytes>) -> Option<Response<Bytes>> {
    let root = state.git_root.lock().unwrap().clone()?;
    let rest = req.uri().path().strip_prefix(&format!("/{OWNER}/"))?;
    let repo = rest.split('/').next()?.strip_suffix(".git")?;
    let Some(token) = credential(req) else {
        return Some(crate::fake_git::answer(401, "Authentication required\n"));
    };
    let method = match crate::fake_git::is_push(req) {
        true => Method::POST,
        false => Method::GET,
    };
    if let Err(status) = authorize(state, &token, repo, &method) {
        let text = match status {
            401 => "Invalid username or token\n",
            _ => "Permission denied\n",
        };
        return Some(crate::fake_git::answer(status, text));
    }
    let path = req.uri().path().to_string();
    state.served.lock().unwrap().push((token, path));
    Some(crate::fake_git::serve(&root, req))
}

/// 401 for a token that is not live, 403 outside its repositories or permissions.
fn authorize(state: &State, token: &str, repo: &str, method: &Method) -> Result<(), u16> {
    let tokens = state.tokens.lock().unwrap();
    let issued = tokens
        .iter()
        .find(|t| t.token == token && !t.revoked && t.expires > SystemTime::now())
        .ok_or(401u16)?;
    if !issued.repositories.iter().any(|r| r == repo) {
        return Err(403);
    }
    let write = method != Method::GET && method != Method::HEAD;
    let level = issued
        .permissions
        .get("contents")
        .or(issued.permissions.get("issues"));
    if write && !matches!(level.map(String::as_str), Some("write" | "admin")) {
        return Err(403);
    }
    Ok(())
}

fn mint(state: &State, req: &Request<Bytes>) -> Response<Bytes> {
    if let Err(why) = credential(req)
        .ok_or("no JWT")
        .and_then(|jwt| verify_jwt(state, &jwt))
    {
        return json(401, json!({"message": why}));
    }
    let asked: Value = if req.body().is_empty() {
        json!({})
    } else {
        match serde_json::from_slice(req.body()) {
            Ok(v) => v,
            Err(_) => return json(400, json!({"message": "Problems parsing JSON"})),
        }
    };
    let repositories: Vec<String> = match asked.get("repositories").and_then(Value::as_array) {
        Some(list) => list
            .iter()
            .filter_map(|r| r.as_str().map(str::to_string))
            .collect(),
        None => state.repositories.clone(),
    };
    if repositories.iter().any(|r| !state.repositories.contains(r)) {
        return json(
            422,
            json!({"message": "There is at least one repository that does not exist or is not accessible to the parent installation."}),
        );
    }
    let permissions: BTreeMap<String, String> =
        match asked.get("permissions").and_then(Value::as_object) {
            Some(map) => map
                .iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                .collect(),
            None => BTreeMap::from([("contents".to_string(), "write".to_string())]),
        };
    let lifetime = *state.lifetime.lock().unwrap();
    let expires = SystemTime::now() + lifetime;
    let token = issue_value("ghs");
    state.tokens.lock().unwrap().push(IssuedToken {
        token: token.clone(),
        repositories: repositories.clone(),
        permissions: permissions.clone(),
        revoked: false,
        expires,
    });
    state.mints.fetch_add(1, Ordering::SeqCst);
    let expires_at = humantime::format_rfc3339_seconds(expires).to_string();
    json(
        201,
        json!({"token": token, "expires_at": expires_at, "permissions": permissions, "repository_selection": "selected"}),
    )
}

fn revoke(state: &State, req: &Request<Bytes>) -> Response<Bytes> {
    let token = credential(req).unwrap_or_default();
    if state.down.load(Ordering::SeqCst) {
        state.revocations.lock().unwrap().push((token, 503));
        return json(503, json!({"message": "Service unavailable"}));
    }
    let mut tokens = state.tokens.lock().unwrap();
    let live = tokens
        .iter_mut()
        .find(|t| t.token == token && !t.revoked && t.expires > SystemTime::now());
    let status = match live {
        Some(t) => {
            t.revoked = true;
            204
        }
        None => 401,
    };
    state.revocations.lock().unwrap().push((token, status));
    Response::builder()
        .status(status)
        .body(Bytes::new())
        .expect("response")
}

/// RS256 with the App's public key; `iat` not in the future (60 s of drift allowed), `exp`
/// after now and at most 10 minutes after `iat`, `iss` the App id (number or string).
fn verify_jwt(state: &State, jwt: &str) -> Result<(), &'static str> {
    let mut parts = jwt.split('.');
    let (Some(header), Some(claims), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("A JSON web token could not be decoded");
    };
    let decode = |s: &str| {
        URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| "A JSON web token could not be decoded")
    };
    let header: Value = serde_json::from_slice(&decode(header)?).map_err(|_| "bad JWT header")?;
    if header.get("alg").and_then(Value::as_str) != Some("RS256") {
        return Err("'alg' must be RS256");
    }
    let signed = &jwt[..jwt.len() - signature.len() - 1];
    ring::signature::UnparsedPublicKey::new(
        &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        &state.public_der,
    )
    .verify(signed.as_bytes(), &decode(signature)?)
    .map_err(|_| "'Signature' is invalid")?;
    let claims: Value = serde_json::from_slice(&decode(claims)?).map_err(|_| "bad JWT claims")?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let iat = claims
        .get("iat")
        .and_then(Value::as_u64)
        .ok_or("'iat' is missing")?;
    let exp = claims
        .get("exp")
        .and_then(Value::as_u64)
        .ok_or("'exp' is missing")?;
    if iat > now + 60 {
        return Err("'Issued at' claim ('iat') must be an Integer representing a time in the past");
    }
    if exp <= now || exp > iat + 600 {
        return Err("'Expiration time' claim ('exp') is too far in the future or in the past");
    }
    let iss = match claims.get("iss") {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.parse().ok(),
        _ => None,
    };
    if iss != Some(state.app_id) {
        return Err("'Issuer' claim ('iss') must be the App's id");
    }
    Ok(())
}

/// The placeholders a test's config gives its GitHub App secret (what the agent holds).
pub const PLACEHOLDER: &str = "ghs_keyswap_github_app_000000000000";

/// Kept for tests that look tokens up by value.
pub fn by_token(tokens: &[IssuedToken]) -> HashMap<String, IssuedToken> {
    tokens
        .iter()
        .map(|t| (t.token.clone(), t.clone()))
        .collect()
}
