//! Scenario 12: AWS re-signing. A keyswap process of its own with an `aws:` secret (source keys,
//! no STS) and a static secret, in front of one in-process HTTPS upstream that answers for an
//! S3 endpoint name and for a plain API name:
//!
//! - 12a: keyswap's CPU per request (µs, from `/proc/PID/stat`) and the request's latency
//!   (p50, p99) for GETs signed with the placeholder key pair (SigV4, re-signed with the real
//!   keys) against GETs whose bearer placeholder is swapped, each on one kept-alive connection;
//! - 12b: one large upload (1 GiB; quick: 64 MiB) signed with `UNSIGNED-PAYLOAD`, re-signed,
//!   against the same upload with a swapped bearer: throughput and keyswap's peak resident
//!   memory during it (the body streams: it must not grow with the upload).
//!
//! The upstream does not check signatures (the tests against moto do): the bench measures what
//! keyswap spends. Never prints a value: the real keys reach keyswap through its environment.

use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use http::header;
use keyswap::admin::client::{AdminClient, AdminTarget};
use keyswap::api::{IssueRequest, IssuedTask};
use keyswap_certs::CertificateAuthority;
use keyswap_tests::client::{empty, pattern_body, request, Alpn, BoxBody, ProxyConnection};
use keyswap_tests::upstream::{Upstream, UpstreamOptions};
use rustls::pki_types::CertificateDer;

use crate::leases::{open_tunnel, spawn_keyswap_run, Keyswap};
use crate::procfs;
use crate::report::{quantile, sorted, Row, KEYSWAP};
use crate::scenarios::progress;
use crate::setup::random_token;

const S3_HOST: &str = "bench.s3.us-east-1.amazonaws.com";
const API_HOST: &str = "api.swap.test";
const STATIC_PLACEHOLDER: &str = "static_keyswap_bench_placeholder_0000";
const KEY_ID_ENV: &str = "KS_BENCH_AWS_KEY_ID";
const SECRET_ENV: &str = "KS_BENCH_AWS_SECRET";
const STATIC_ENV: &str = "KS_BENCH_AWS_STATIC";

struct Sizes {
    /// GETs of each kind, for the CPU and latency figures.
    requests: usize,
    /// Bytes of each upload.
    upload: u64,
}

/// The rows of scenario 12; a run that fails gives a "not measured" row saying why.
pub async fn run(quick: bool, binary: Option<&Path>) -> Vec<Row> {
    let sizes = match quick {
        true => Sizes {
            requests: 1_000,
            upload: 64 << 20,
        },
        false => Sizes {
            requests: 5_000,
            upload: 1 << 30,
        },
    };
    match measure(&sizes, binary).await {
        Ok(rows) => rows,
        Err(why) => {
            let mut row = Row::new("12. AWS re-signing", "µs", false);
            row.notes.push(format!("keyswap: not measured: {why:#}"));
            vec![row]
        }
    }
}

/// How one kind of request is made.
#[derive(Clone, Copy)]
enum Kind {
    /// Signed with the placeholder key pair; keyswap signs it again.
    Resigned,
    /// A bearer placeholder; keyswap swaps it.
    Swapped,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Resigned => "re-signed (SigV4)",
            Kind::Swapped => "header swap",
        }
    }

    fn host(self) -> &'static str {
        match self {
            Kind::Resigned => S3_HOST,
            Kind::Swapped => API_HOST,
        }
    }
}

struct Lab {
    keyswap: Keyswap,
    trust: Vec<CertificateDer<'static>>,
    task: IssuedTask,
    key_id: String,
    _upstream: Upstream,
    _dir: tempfile::TempDir,
}

async fn measure(sizes: &Sizes, binary: Option<&Path>) -> anyhow::Result<Vec<Row>> {
    let lab = start(binary).await?;
    let pid = lab.keyswap.child.id();
    let mut rows = Vec::new();
    for kind in [Kind::Swapped, Kind::Resigned] {
        progress("scenario 12", &format!("{} GETs", kind.label()));
        let mut conn = open(&lab, kind.host()).await?;
        // One request first, so the connection and the upstream's are both open.
        get(&mut conn, &lab, kind).await?;
        let cpu_before = procfs::cpu_time(pid).context("keyswap's CPU time")?;
        let mut times = Vec::with_capacity(sizes.requests);
        for _ in 0..sizes.requests {
            times.push(get(&mut conn, &lab, kind).await?);
        }
        let cpu = procfs::cpu_time(pid).context("keyswap's CPU time")? - cpu_before;
        let mut row = Row::new(
            format!("12a. AWS: keyswap CPU per request, {}", kind.label()),
            "µs",
            false,
        );
        row.set(
            KEYSWAP,
            Some(cpu.as_secs_f64() * 1e6 / sizes.requests as f64),
        );
        row.notes.push(format!(
            "keyswap: {} GETs on one kept-alive HTTP/1.1 connection; CPU from /proc (10 ms ticks)",
            sizes.requests
        ));
        rows.push(row);
        let times = sorted(times);
        for (q, name) in [(0.5, "p50"), (0.99, "p99")] {
            let mut row = Row::new(
                format!("12a. AWS: request latency, {}, {name}", kind.label()),
                "ms",
                false,
            );
            row.set(KEYSWAP, quantile(&times, q));
            rows.push(row);
        }
    }
    for kind in [Kind::Swapped, Kind::Resigned] {
        progress("scenario 12", &format!("{} upload", kind.label()));
        let mut conn = open(&lab, kind.host()).await?;
        procfs::reset_peak_rss(pid);
        let before = procfs::rss(pid).context("keyswap's RSS")?;
        let started = Instant::now();
        upload(&mut conn, &lab, kind, sizes.upload).await?;
        let seconds = started.elapsed().as_secs_f64();
        let peak = procfs::peak_rss(pid).context("keyswap's peak RSS")?;
        let mib = sizes.upload as f64 / (1 << 20) as f64;
        let mut row = Row::new(
            format!("12b. AWS: {mib:.0} MiB upload, {}", kind.label()),
            "MiB/s",
            true,
        );
        row.set(KEYSWAP, Some(mib / seconds));
        row.notes.push(format!(
            "keyswap: RSS {} KiB before, peak {} KiB during the upload",
            before / 1024,
            peak / 1024
        ));
        rows.push(row);
    }
    Ok(rows)
}

async fn start(binary: Option<&Path>) -> anyhow::Result<Lab> {
    let dir = tempfile::Builder::new()
        .prefix("keyswap-bench-aws-")
        .tempdir()?;
    let upstream_ca = CertificateAuthority::generate("bench AWS upstream CA")?;
    std::fs::write(dir.path().join("roots.pem"), upstream_ca.cert_pem())?;
    let upstream = Upstream::start(
        &upstream_ca,
        UpstreamOptions {
            names: vec![S3_HOST.into(), API_HOST.into()],
            alpn: Alpn::Both,
            record: false,
            ..UpstreamOptions::default()
        },
    )
    .await;
    let proxy_ca = CertificateAuthority::load_or_create(&dir.path().join("ca"))?;
    let config = dir.path().join("keyswap.yaml");
    std::fs::write(&config, config_text(dir.path(), upstream.port()))?;
    let env = [
        (KEY_ID_ENV, random_token("KSREAL")?.to_uppercase()),
        (SECRET_ENV, random_token("KSREAL-bench-aws-")?),
        (STATIC_ENV, random_token("KSREAL-bench-static-")?),
    ];
    let keyswap = spawn_keyswap_run(binary, &config, &env)?;
    let admin = AdminClient::new(AdminTarget::Socket(dir.path().join("admin.sock")));
    let request = IssueRequest {
        policy: "bench-aws".into(),
        ttl: Some("1h".into()),
        ..IssueRequest::default()
    };
    let task = admin.issue(&request).await?;
    let key_id = task
        .env
        .get("AWS_ACCESS_KEY_ID")
        .context("the issued task has no AWS_ACCESS_KEY_ID placeholder")?
        .clone();
    Ok(Lab {
        keyswap,
        trust: vec![proxy_ca.cert_der().clone()],
        task,
        key_id,
        _upstream: upstream,
        _dir: dir,
    })
}

fn config_text(dir: &Path, port: u16) -> String {
    format!(
        r#"version: 1
listen: 127.0.0.1:0
ca_dir: {dir}/ca
audit_log: {dir}/audit.jsonl
state_dir: {dir}/state
admin:
  socket: {dir}/admin.sock
upstream:
  extra_roots: {dir}/roots.pem
  resolve:
    "{S3_HOST}:443": "127.0.0.1:{port}"
    "{API_HOST}:443": "127.0.0.1:{port}"
secrets:
  aws-bench:
    aws:
      access_key_id: {{from_env: {KEY_ID_ENV}}}
      secret_access_key: {{from_env: {SECRET_ENV}}}
      region: us-east-1
  static:
    from_env: {STATIC_ENV}
    placeholder: {STATIC_PLACEHOLDER}
policies:
  bench-aws:
    allow:
      - host: {S3_HOST}
        secrets: [aws-bench]
      - host: {API_HOST}
        secrets: [static]
"#,
        dir = dir.display()
    )
}

/// The task's connection to `host` through keyswap (HTTP/1.1).
async fn open(lab: &Lab, host: &str) -> anyhow::Result<ProxyConnection> {
    open_tunnel(lab.keyswap.addr, &lab.task, host, &lab.trust).await
}

/// A request of `kind` as its agent would send it: signed with the placeholder key pair (the
/// signature's bytes do not matter: keyswap drops it), or with a bearer placeholder.
fn signed(
    lab: &Lab,
    kind: Kind,
    method: &str,
    path: &str,
    body: BoxBody,
) -> anyhow::Result<http::Request<BoxBody>> {
    let builder = request(method, kind.host(), path, false);
    let builder = match kind {
        Kind::Swapped => builder.header(
            header::AUTHORIZATION,
            format!("Bearer {STATIC_PLACEHOLDER}"),
        ),
        Kind::Resigned => builder
            .header("x-amz-date", "20261207T120000Z")
            .header("x-amz-content-sha256", "UNSIGNED-PAYLOAD")
            .header(
                header::AUTHORIZATION,
                format!(
                    "AWS4-HMAC-SHA256 Credential={}/20261207/us-east-1/s3/aws4_request, \
                     SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature={}",
                    lab.key_id,
                    "0".repeat(64)
                ),
            ),
    };
    Ok(builder.body(body)?)
}

/// One GET of `kind`; its time in ms, if it answered 200.
async fn get(conn: &mut ProxyConnection, lab: &Lab, kind: Kind) -> anyhow::Result<f64> {
    let req = signed(lab, kind, "GET", "/status/200", empty())?;
    let started = Instant::now();
    let response = conn.send(req).await?;
    let status = response.status().as_u16();
    let reason = response.headers().get("x-keyswap-reason").cloned();
    http_body_util::BodyExt::collect(response.into_body()).await?;
    let ms = started.elapsed().as_secs_f64() * 1e3;
    anyhow::ensure!(
        status == 200,
        "keyswap answered {status} ({reason:?}) to a {} GET",
        kind.label()
    );
    Ok(ms)
}

/// One PUT of `len` streamed bytes of `kind` to the upstream's `/discard`, which counts them.
async fn upload(conn: &mut ProxyConnection, lab: &Lab, kind: Kind, len: u64) -> anyhow::Result<()> {
    let mut req = signed(lab, kind, "PUT", "/discard", pattern_body(len))?;
    req.headers_mut().insert(header::CONTENT_LENGTH, len.into());
    let response = conn.send(req).await?;
    let status = response.status().as_u16();
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await?
        .to_bytes();
    let counted = String::from_utf8_lossy(&body).trim().parse::<u64>().ok();
    anyhow::ensure!(
        status == 200 && counted == Some(len),
        "the {} upload ended {status} with {counted:?} of {len} bytes counted",
        kind.label()
    );
    Ok(())
}
