//! What the in-process upstream serves from a directory once [`Upstream::serve_files`] names
//! one: `/files/…` as static files (a PEP 503 package index, wheels) and `/git/…` through the
//! real `git http-backend` as a CGI program (git's smart HTTP protocol). Real clients — pip,
//! git — then run against the upstream through keyswap.
//!
//! A test server: bodies are read whole (CGI wants a length), nothing secret is logged.
//!
//! [`Upstream::serve_files`]: crate::upstream::Upstream::serve_files

use std::path::{Component, Path, PathBuf};
use std::process::Stdio;

use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::io::AsyncWriteExt;

use crate::client::{full, BoxBody};

/// Answers a request under `/files/` or `/git/`; gives any other request back.
pub async fn serve(
    req: Request<Incoming>,
    root: &Path,
) -> Result<Response<BoxBody>, Request<Incoming>> {
    let path = req.uri().path().to_string();
    if let Some(rest) = path.strip_prefix("/files/") {
        return Ok(static_file(root, rest));
    }
    if let Some(rest) = path.strip_prefix("/git/") {
        return Ok(git_http_backend(req, &root.join("git"), &format!("/{rest}")).await);
    }
    Err(req)
}

fn plain(status: StatusCode, text: &str) -> Response<BoxBody> {
    let mut response = Response::new(full(text.to_string()));
    *response.status_mut() = status;
    response
}

/// `rest` under `root`; `…/` serves `index.html`. No `..`, no absolute paths.
fn static_file(root: &Path, rest: &str) -> Response<BoxBody> {
    let relative = PathBuf::from(rest);
    if relative
        .components()
        .any(|c| !matches!(c, Component::Normal(_)))
    {
        return plain(StatusCode::BAD_REQUEST, "bad path\n");
    }
    let mut path = root.join("files").join(&relative);
    if rest.is_empty() || rest.ends_with('/') {
        path.push("index.html");
    }
    match std::fs::read(&path) {
        Ok(bytes) => {
            let kind = match path.extension().and_then(|e| e.to_str()) {
                Some("html") => "text/html",
                _ => "application/octet-stream",
            };
            Response::builder()
                .header(header::CONTENT_TYPE, kind)
                .body(full(bytes))
                .expect("file response")
        }
        Err(_) => plain(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// Runs `git http-backend` for one request (RFC 3875 CGI) over the repositories in `root`.
async fn git_http_backend(
    req: Request<Incoming>,
    root: &Path,
    path_info: &str,
) -> Response<BoxBody> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return plain(StatusCode::BAD_REQUEST, "body\n"),
    };
    let header_text = |name: &header::HeaderName| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let mut cmd = tokio::process::Command::new("git");
    cmd.arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .env("REQUEST_METHOD", parts.method.as_str())
        .env("PATH_INFO", path_info)
        .env("QUERY_STRING", parts.uri.query().unwrap_or_default())
        .env("CONTENT_TYPE", header_text(&header::CONTENT_TYPE))
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("REMOTE_ADDR", "127.0.0.1")
        .env(
            "HTTP_CONTENT_ENCODING",
            header_text(&header::CONTENT_ENCODING),
        )
        .env(
            "HTTP_GIT_PROTOCOL",
            parts
                .headers
                .get("git-protocol")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default(),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let Ok(mut child) = cmd.spawn() else {
        return plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            "git http-backend did not start\n",
        );
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(&body).await;
    }
    let Ok(out) = child.wait_with_output().await else {
        return plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            "git http-backend failed\n",
        );
    };
    cgi_response(&out.stdout)
}

/// A CGI program's output (header lines, a blank line, the body) as an HTTP response.
fn cgi_response(out: &[u8]) -> Response<BoxBody> {
    match cgi_split(out) {
        Some((builder, body)) => builder
            .body(full(body.to_vec()))
            .unwrap_or_else(|_| plain(StatusCode::BAD_GATEWAY, "bad CGI header\n")),
        None => plain(StatusCode::BAD_GATEWAY, "no CGI header\n"),
    }
}

/// A CGI program's output (RFC 3875: header lines, a blank line, the body) split into a
/// response builder holding its status and headers, and its body; `None` without a blank line.
pub fn cgi_split(out: &[u8]) -> Option<(http::response::Builder, &[u8])> {
    let (head_end, body_start) = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, i + 4))
        .or_else(|| {
            out.windows(2)
                .position(|w| w == b"\n\n")
                .map(|i| (i, i + 2))
        })?;
    let mut builder = Response::builder();
    for line in String::from_utf8_lossy(&out[..head_end]).lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value.split(' ').next().and_then(|c| c.parse::<u16>().ok());
            builder = builder.status(code.unwrap_or(500));
        } else if let Ok(v) = HeaderValue::from_str(value) {
            builder = builder.header(name.trim(), v);
        }
    }
    Some((builder, &out[body_start..]))
}

/// A Python script that writes the wheel `ksdemo-0.1-py3-none-any.whl` (one pure-Python
/// module) into the directory given as its argument and prints the wheel's SHA-256.
pub const WHEEL_BUILDER: &str = r#"
import base64, hashlib, sys, zipfile
out = sys.argv[1]
name = "ksdemo-0.1-py3-none-any.whl"
entries = {
    "ksdemo/__init__.py": b"MESSAGE = 'installed through keyswap'\n",
    "ksdemo-0.1.dist-info/METADATA": b"Metadata-Version: 2.1\nName: ksdemo\nVersion: 0.1\n",
    "ksdemo-0.1.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: keyswap-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
record = []
for path, data in entries.items():
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    record.append(f"{path},sha256={digest},{len(data)}")
record.append("ksdemo-0.1.dist-info/RECORD,,")
entries["ksdemo-0.1.dist-info/RECORD"] = ("\n".join(record) + "\n").encode()
with zipfile.ZipFile(f"{out}/{name}", "w") as z:
    for path, data in entries.items():
        z.writestr(path, data)
sha = hashlib.sha256(open(f"{out}/{name}", "rb").read()).hexdigest()
print(sha)
"#;

/// The PEP 503 pages of an index under `files/simple/` listing that wheel, whose SHA-256 is
/// `sha` (the directories must exist).
pub fn write_pep503_pages(files: &Path, sha: &str) {
    std::fs::write(
        files.join("simple/index.html"),
        "<!DOCTYPE html><html><body><a href=\"ksdemo/\">ksdemo</a></body></html>\n",
    )
    .expect("root index");
    std::fs::write(
        files.join("simple/ksdemo/index.html"),
        format!(
            "<!DOCTYPE html><html><body>\
             <a href=\"../../ksdemo-0.1-py3-none-any.whl#sha256={sha}\">ksdemo-0.1-py3-none-any.whl</a>\
             </body></html>\n"
        ),
    )
    .expect("project page");
}
