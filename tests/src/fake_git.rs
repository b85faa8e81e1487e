//! git's smart HTTP for the fakes: one request answered by `git http-backend` (RFC 3875 CGI)
//! over the bare repositories under a root, run to completion (the fakes' handlers are
//! synchronous and their bodies small). Pushes are enabled (`REMOTE_USER` is set): the fake
//! in front of it decides who may push.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use bytes::Bytes;
use http::{Request, Response};

/// Whether `req` (path and query) is a push (`git-receive-pack`) rather than a fetch.
pub fn is_push<B>(req: &Request<B>) -> bool {
    req.uri().path().ends_with("/git-receive-pack")
        || req.uri().query() == Some("service=git-receive-pack")
}

/// `git http-backend`'s answer to `req` over the repositories in `root`.
pub fn serve(root: &Path, req: &Request<Bytes>) -> Response<Bytes> {
    let text = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let child = Command::new("git")
        .arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("REMOTE_USER", "x-access-token")
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .env("REQUEST_METHOD", req.method().as_str())
        .env("PATH_INFO", req.uri().path())
        .env("QUERY_STRING", req.uri().query().unwrap_or_default())
        .env("CONTENT_TYPE", text("content-type"))
        .env("CONTENT_LENGTH", req.body().len().to_string())
        .env("HTTP_CONTENT_ENCODING", text("content-encoding"))
        .env("HTTP_GIT_PROTOCOL", text("git-protocol"))
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn();
    let Ok(mut child) = child else {
        return answer(500, "git http-backend did not start\n");
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(req.body());
    }
    match child.wait_with_output() {
        Ok(out) => cgi_response(&out.stdout),
        Err(_) => answer(500, "git http-backend failed\n"),
    }
}

/// A CGI program's output as an HTTP response ([`crate::files::cgi_split`]).
fn cgi_response(out: &[u8]) -> Response<Bytes> {
    match crate::files::cgi_split(out) {
        Some((builder, body)) => builder
            .body(Bytes::copy_from_slice(body))
            .unwrap_or_else(|_| answer(502, "bad CGI header\n")),
        None => answer(502, "no CGI header\n"),
    }
}

/// A plain-text answer; a 401 asks for Basic credentials, as GitHub does for git.
pub fn answer(status: u16, text: &'static str) -> Response<Bytes> {
    let mut builder = Response::builder()
        .status(status)
        .header("content-type", "text/plain");
    if status == 401 {
        builder = builder.header("www-authenticate", "Basic realm=\"GitHub\"");
    }
    builder
        .body(Bytes::from_static(text.as_bytes()))
        .expect("response")
}
