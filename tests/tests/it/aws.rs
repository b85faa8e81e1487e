//! AWS requests re-signed with SigV4: the agent holds an `aws:` secret's placeholder key pair
//! and signs with it; keyswap signs again with the real keys. The AWS behind keyswap is moto's
//! server with authentication on ([`keyswap_tests::moto`]): only a correct signature made with
//! the keys moto issued passes. The agents are boto3 and the AWS CLI, with placeholders only.
//!
//! Needs python3 with `moto[server]`, boto3 and the AWS CLI (`.ci/run` installs them); without
//! them the tests print a notice and pass, except under `CI=true`, where they fail.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use keyswap::api::{IssueRequest, IssuedTask};
use keyswap::state::tasks::RevokeWhy;
use keyswap::ProxyOptions;
use keyswap_tests::client::{self, Tunnel};
use keyswap_tests::harness::{test_env_values, TestEnv, AGENT_TOKEN, API_HOST};
use keyswap_tests::moto::{Moto, BUCKET, ROLE_ARN};
use keyswap_tests::secrets::{assert_no_real_secret, assert_none_of};
use keyswap_tests::upstream::Alpn;
use secrecy::ExposeSecret;

const CONFIG: &str = r#"
version: 1
listen: 127.0.0.1:0
ca_dir: {dir}/ca
audit_log: {dir}/audit.jsonl
upstream:
  extra_roots: MOTO_CA
  resolve:
    "api.upstream.test:443": "127.0.0.1:{https_port}"
MOTO_RESOLVE
secrets:
  aws-dev:
    aws:
      access_key_id: {from_env: KS_TEST_AWS_KEY_ID}
      secret_access_key: {from_env: KS_TEST_AWS_SECRET}
      region: us-east-1
tasks:
  agent:
    token_env: KS_TEST_TOKEN
    allow:
      - host: s3.amazonaws.com
        secrets: [aws-dev]
      - host: "*.s3.amazonaws.com"
        secrets: [aws-dev]
      - host: s3.us-east-1.amazonaws.com
        secrets: [aws-dev]
      - host: "*.s3.us-east-1.amazonaws.com"
        secrets: [aws-dev]
      - host: sts.amazonaws.com
        secrets: [aws-dev]
      - host: sts.us-east-1.amazonaws.com
        secrets: [aws-dev]
      - host: iam.amazonaws.com
        secrets: [aws-dev]
      - host: api.upstream.test
"#;

/// keyswap in front of moto, and what the agent's environment gets.
struct AwsEnv {
    env: TestEnv,
    moto: Moto,
    /// The variables `keyswap exec` and `task issue` give the agent for the aws secret.
    agent_vars: Vec<(String, String)>,
    /// moto's certificate, key and CA.
    _files: tempfile::TempDir,
}

async fn start() -> Option<AwsEnv> {
    start_with(CONFIG).await
}

/// keyswap in front of moto with `config` (its `MOTO_CA`, `MOTO_RESOLVE`, `ROLE_ARN` and
/// `SESSION_POLICY` slots filled).
async fn start_with(config: &str) -> Option<AwsEnv> {
    let files = tempfile::tempdir().expect("tempdir");
    let moto = Moto::start(files.path()).await?;
    let session_policy = files.path().join("session-policy.json");
    std::fs::write(&session_policy, SESSION_POLICY).expect("write the session policy");
    let template = config
        .replace("MOTO_CA", &moto.ca_file.display().to_string())
        .replace("MOTO_RESOLVE", moto.resolve_yaml("    ").trim_end())
        .replace("ROLE_ARN", ROLE_ARN)
        .replace("SESSION_POLICY", &session_policy.display().to_string());
    let extra = [
        ("KS_TEST_AWS_KEY_ID", moto.key_id.as_str()),
        ("KS_TEST_AWS_SECRET", moto.secret.as_str()),
    ];
    let env = TestEnv::start_with_env(&template, Alpn::Both, ProxyOptions::default(), &extra).await;
    let mut values: HashMap<String, String> = test_env_values();
    values.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let config =
        keyswap_config::load_str(&env.config_yaml, &env.dir.path().join("k.yaml"), &values)
            .expect("config loads");
    let agent_vars = config.secrets[0].agent_env();
    Some(AwsEnv {
        env,
        moto,
        agent_vars,
        _files: files,
    })
}

impl AwsEnv {
    /// The agent's environment: the proxy, keyswap's CA, the placeholders; a fresh HOME
    /// (no ~/.aws).
    fn command(&self, program: &str) -> tokio::process::Command {
        let proxy = format!("http://agent:{AGENT_TOKEN}@{}", self.env.proxy.addr());
        self.command_via(program, proxy)
    }

    /// [`AwsEnv::command`] as a task issued at runtime.
    fn command_as(&self, program: &str, task: &IssuedTask) -> tokio::process::Command {
        self.command_via(program, task.proxy_url.clone())
    }

    fn command_via(&self, program: &str, proxy: String) -> tokio::process::Command {
        let home = self.env.dir.path().join("home");
        std::fs::create_dir_all(&home).expect("home");
        let ca = self.env.dir.path().join("keyswap-ca.pem");
        std::fs::write(&ca, &self.env.proxy_ca_pem).expect("write CA");
        let vars: BTreeMap<String, String> = self
            .agent_vars
            .iter()
            .cloned()
            .chain([
                ("HTTPS_PROXY".into(), proxy),
                ("AWS_CA_BUNDLE".into(), ca.display().to_string()),
                ("SSL_CERT_FILE".into(), ca.display().to_string()),
                ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
                ("HOME".into(), home.display().to_string()),
                ("PATH".into(), std::env::var("PATH").unwrap_or_default()),
            ])
            .collect();
        let mut cmd = tokio::process::Command::new(program);
        cmd.env_clear()
            .envs(&vars)
            .current_dir(self.env.dir.path())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    }

    /// Runs the agent's command; what it printed must hold no real key material (moto's keys
    /// and the suite's), and is kept for the leak check.
    async fn run(&self, what: &str, mut cmd: tokio::process::Command) -> Ran {
        let out = tokio::time::timeout(Duration::from_secs(600), cmd.output())
            .await
            .unwrap_or_else(|_| panic!("{what} did not finish"))
            .unwrap_or_else(|e| panic!("{what} did not start: {e}"));
        let keys = self.moto.key_material();
        for (stream, bytes) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
            let name = format!("{what} {stream}");
            assert_no_real_secret(&name, bytes);
            assert_none_of(&name, bytes, "AWS source key", &keys);
        }
        let ran = Ran {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        self.env.keep(&[], &ran.stdout);
        self.env.keep(&[], &ran.stderr);
        ran
    }

    async fn python(&self, what: &str, script: &str, args: &[&str]) -> Ran {
        let mut cmd = self.command("python3");
        cmd.arg("-c").arg(script).args(args);
        self.run(what, cmd).await
    }

    /// A file the agent wrote: no real key material in it, kept for the leak check.
    fn check_file(&self, path: &Path) {
        let bytes = std::fs::read(path).expect("agent's file");
        let name = path.display().to_string();
        assert_no_real_secret(&name, &bytes);
        assert_none_of(&name, &bytes, "AWS source key", &self.moto.key_material());
    }

    fn placeholder(&self, var: &str) -> String {
        self.agent_vars
            .iter()
            .find(|(k, _)| k == var)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("the agent's environment has no {var}"))
    }

    async fn finish(self) {
        self.env.assert_no_leaks();
        self.moto.stop().await;
    }
}

struct Ran {
    success: bool,
    stdout: String,
    stderr: String,
}

impl Ran {
    fn shown(&self) -> String {
        format!("stdout:\n{}\nstderr:\n{}", self.stdout, self.stderr)
            .replace(AGENT_TOKEN, "<token>")
    }
}

/// The start of every boto3 agent: an S3 client whose every response (status, headers, and the
/// body unless streamed) is appended to argv[1], and the bucket named by argv[2].
const BOTO3_PRELUDE: &str = r#"
import json, sys
import boto3
received = open(sys.argv[1], "ab")
def keep(http_response=None, model=None, **kw):
    received.write(f"{http_response.status_code}\n".encode())
    for k, v in http_response.headers.items():
        received.write(f"{k}: {v}\n".encode())
    if not model.has_streaming_output:
        received.write(http_response.content + b"\n")
s3 = boto3.client("s3")
s3.meta.events.register("after-call", keep)
bucket = sys.argv[2]
"#;

/// boto3 as the agent, after [`BOTO3_PRELUDE`]: a bucket, a small object, 50 MiB streamed up
/// and down, a listing, a multipart upload.
const BOTO3_AGENT: &str = r#"
import hashlib, os
from boto3.s3.transfer import TransferConfig
s3.create_bucket(Bucket=bucket)
s3.put_object(Bucket=bucket, Key="hello.txt", Body=b"hello from the agent")
big = os.urandom(50 * 1024 * 1024)
s3.put_object(Bucket=bucket, Key="big.bin", Body=big)
body = s3.get_object(Bucket=bucket, Key="big.bin")["Body"]
h, n = hashlib.sha256(), 0
for chunk in body.iter_chunks(1024 * 1024):
    h.update(chunk)
    n += len(chunk)
big_ok = h.hexdigest() == hashlib.sha256(big).hexdigest() and n == len(big)
with open("multi.bin", "wb") as f:
    f.write(os.urandom(12 * 1024 * 1024))
config = TransferConfig(multipart_threshold=5 * 1024 * 1024, multipart_chunksize=5 * 1024 * 1024)
s3.upload_file("multi.bin", bucket, "multi.bin", Config=config)
got = s3.get_object(Bucket=bucket, Key="multi.bin")["Body"].read()
multi_ok = got == open("multi.bin", "rb").read()
keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"])
print(json.dumps({"big_ok": big_ok, "multi_ok": multi_ok, "keys": keys}))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_and_aws_cli_work_with_placeholders_only() {
    let Some(aws) = start().await else { return };
    let keys = aws.moto.key_material();
    let vars: Vec<String> = aws
        .agent_vars
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    assert_none_of(
        "the agent's environment",
        vars.join("\n").as_bytes(),
        "AWS source key",
        &keys,
    );
    let placeholder_key_id = aws.placeholder("AWS_ACCESS_KEY_ID");
    assert_eq!(aws.placeholder("AWS_REGION"), "us-east-1");

    let received = aws.env.dir.path().join("boto3-received.txt");
    let received_arg = received.display().to_string();
    let ran = aws
        .python(
            "boto3",
            &format!("{BOTO3_PRELUDE}{BOTO3_AGENT}"),
            &[&received_arg, BUCKET],
        )
        .await;
    assert!(ran.success, "boto3 failed through keyswap: {}", ran.shown());
    let result: serde_json::Value =
        serde_json::from_str(ran.stdout.trim()).unwrap_or_else(|_| panic!("{}", ran.shown()));
    assert_eq!(result["big_ok"], true, "50 MiB did not come back whole");
    assert_eq!(
        result["multi_ok"], true,
        "the multipart upload did not come back whole"
    );
    assert_eq!(
        result["keys"],
        serde_json::json!(["big.bin", "hello.txt", "multi.bin"])
    );
    aws.check_file(&received);
    aws.env.keep(
        &[],
        &String::from_utf8_lossy(&std::fs::read(&received).expect("received")),
    );

    // The AWS CLI: an upload and a download, and who the signature says the caller is.
    let file = aws.env.dir.path().join("cli.txt");
    std::fs::write(&file, "uploaded by aws s3 cp").expect("write");
    let mut cp = aws.command("aws");
    cp.args([
        "s3",
        "cp",
        &file.display().to_string(),
        &format!("s3://{BUCKET}/cli.txt"),
    ]);
    let ran = aws.run("aws s3 cp up", cp).await;
    assert!(ran.success, "aws s3 cp failed: {}", ran.shown());
    let mut cp = aws.command("aws");
    cp.args(["s3", "cp", &format!("s3://{BUCKET}/cli.txt"), "-"]);
    let ran = aws.run("aws s3 cp down", cp).await;
    assert!(ran.success, "aws s3 cp failed: {}", ran.shown());
    assert_eq!(ran.stdout, "uploaded by aws s3 cp");
    let mut who = aws.command("aws");
    who.args(["sts", "get-caller-identity", "--output", "json"]);
    let ran = aws.run("aws sts get-caller-identity", who).await;
    assert!(ran.success, "get-caller-identity failed: {}", ran.shown());
    assert!(
        ran.stdout.contains("user/keyswap-source"),
        "moto did not see the source keys' user: {}",
        ran.shown()
    );

    // IAM quotes the real key id back: the agent reads the placeholder instead.
    let mut list = aws.command("aws");
    list.args([
        "iam",
        "list-access-keys",
        "--user-name",
        "keyswap-source",
        "--output",
        "json",
    ]);
    let ran = aws.run("aws iam list-access-keys", list).await;
    assert!(ran.success, "list-access-keys failed: {}", ran.shown());
    assert!(
        ran.stdout.contains(&placeholder_key_id),
        "the real key id was not scrubbed to the placeholder: {}",
        ran.shown()
    );

    let audit = aws.env.audit();
    let signed = audit
        .iter()
        .filter(|r| r["reason"] == "allowed" && r["secrets"] == serde_json::json!(["aws-dev"]))
        .count();
    assert!(
        signed >= 10,
        "too few requests audited as signed with aws-dev: {signed}"
    );
    aws.finish().await;
}

/// What a request carrying the placeholder key id gets, from keyswap or from moto.
const REFUSALS_AGENT: &str = r#"
import json, os, sys, urllib.request, urllib.error
import boto3, botocore.exceptions
from botocore.config import Config
out = {}
# Signed with the placeholder, sent to a host no rule grants the aws secret on.
other = boto3.client("s3", endpoint_url="https://" + sys.argv[1])
try:
    other.list_buckets()
    out["ungranted"] = "passed"
except botocore.exceptions.ClientError as e:
    out["ungranted"] = e.response["ResponseMetadata"]["HTTPHeaders"].get("x-keyswap-reason")
# A presigned URL made with the placeholder keys.
s3 = boto3.client("s3", config=Config(signature_version="s3v4"))
url = s3.generate_presigned_url("get_object", Params={"Bucket": sys.argv[2], "Key": "k"})
try:
    urllib.request.urlopen(url, timeout=60)
    out["presigned"] = "passed"
except urllib.error.HTTPError as e:
    out["presigned"] = e.headers.get("x-keyswap-reason")
# Straight to moto, not through keyswap: moto checks signatures, so the placeholder fails.
direct = boto3.client("s3", endpoint_url="https://127.0.0.1:" + sys.argv[3], verify=sys.argv[4])
try:
    direct.list_buckets()
    out["direct"] = "passed"
except botocore.exceptions.ClientError as e:
    out["direct"] = e.response["Error"]["Code"]
print(json.dumps(out))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placeholder_key_id_is_refused_where_not_granted_or_not_resignable() {
    let Some(aws) = start().await else { return };
    let port = aws.moto.port.to_string();
    let ca = aws.moto.ca_file.display().to_string();
    let mut cmd = aws.command("python3");
    cmd.arg("-c")
        .arg(REFUSALS_AGENT)
        .args([API_HOST, BUCKET, &port, &ca])
        .env("NO_PROXY", "127.0.0.1");
    let ran = aws.run("refusals", cmd).await;
    assert!(ran.success, "{}", ran.shown());
    let out: serde_json::Value =
        serde_json::from_str(ran.stdout.trim()).unwrap_or_else(|_| panic!("{}", ran.shown()));
    assert_eq!(
        out["ungranted"],
        "placeholder_not_allowed",
        "{}",
        ran.shown()
    );
    assert_eq!(out["presigned"], "signature_unsupported", "{}", ran.shown());
    // Authentication is on: a placeholder signature reaching moto itself is refused.
    assert_eq!(out["direct"], "InvalidAccessKeyId", "{}", ran.shown());

    // Signatures keyswap does not re-sign, sent by a raw client.
    let key_id = aws.placeholder("AWS_ACCESS_KEY_ID");
    let host = format!("{BUCKET}.s3.amazonaws.com");
    let scope = |region: &str, service: &str| {
        format!(
            "AWS4-HMAC-SHA256 Credential={key_id}/20260101/{region}/{service}/aws4_request, \
             SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature=00"
        )
    };
    let opts = aws.env.agent(&format!("{host}:443"), Alpn::Http1Only);
    let cases: [(&str, String, &str, u16, &str); 4] = [
        (
            "chunk-signed upload",
            scope("us-east-1", "s3"),
            "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
            400,
            "signature_unsupported",
        ),
        (
            "SigV4A",
            format!(
                "AWS4-ECDSA-P256-SHA256 Credential={key_id}/20260101/s3/aws4_request, \
                 SignedHeaders=host, Signature=00"
            ),
            "UNSIGNED-PAYLOAD",
            400,
            "signature_unsupported",
        ),
        (
            "scope of another region",
            scope("eu-west-1", "s3"),
            "UNSIGNED-PAYLOAD",
            400,
            "bad_request",
        ),
        (
            "scope of another service",
            scope("us-east-1", "sts"),
            "UNSIGNED-PAYLOAD",
            400,
            "bad_request",
        ),
    ];
    for (what, authorization, payload, status, reason) in cases {
        let reply = aws
            .env
            .request(
                &opts,
                "PUT",
                "/object",
                &[
                    ("authorization", &authorization),
                    ("x-amz-content-sha256", payload),
                    ("x-amz-date", "20260101T000000Z"),
                ],
            )
            .await;
        assert_eq!(reply.status, status, "{what}: {reply:?}");
        assert_eq!(reply.reason(), Some(reason), "{what}");
    }
    aws.finish().await;
}

/// A session policy (moto accepts it; it does not enforce session policies).
const SESSION_POLICY: &str = r#"{
  "Version": "2012-10-17",
  "Statement": [{"Effect": "Allow", "Action": ["s3:*", "sts:GetCallerIdentity"], "Resource": "*"}]
}"#;

const STS_CONFIG: &str = r#"
version: 1
listen: 127.0.0.1:0
ca_dir: {dir}/ca
audit_log: {dir}/audit.jsonl
upstream:
  extra_roots: MOTO_CA
  resolve:
MOTO_RESOLVE
secrets:
  aws-dev:
    aws:
      access_key_id: {from_env: KS_TEST_AWS_KEY_ID}
      secret_access_key: {from_env: KS_TEST_AWS_SECRET}
      region: us-east-1
      assume_role:
        role_arn: ROLE_ARN
        duration: 1h
      endpoints: {sts: https://sts.amazonaws.com}
policies:
  s3-agent:
    aws: {session_policy_file: SESSION_POLICY}
    allow:
      - host: sts.amazonaws.com
        secrets: [aws-dev]
      - host: sts.us-east-1.amazonaws.com
        secrets: [aws-dev]
      - host: s3.amazonaws.com
        secrets: [aws-dev]
      - host: "*.s3.amazonaws.com"
        secrets: [aws-dev]
      - host: s3.us-east-1.amazonaws.com
        secrets: [aws-dev]
      - host: "*.s3.us-east-1.amazonaws.com"
        secrets: [aws-dev]
"#;

/// boto3 as the agent with an STS session, after [`BOTO3_PRELUDE`]: a bucket, an object up and
/// down, a listing.
const STS_BOTO3_AGENT: &str = r#"
s3.create_bucket(Bucket=bucket)
s3.put_object(Bucket=bucket, Key="session.txt", Body=b"written with a minted session")
got = s3.get_object(Bucket=bucket, Key="session.txt")["Body"].read()
keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
print(json.dumps({"got": got.decode(), "keys": keys}))
"#;

impl AwsEnv {
    fn issue(&self) -> IssuedTask {
        let issued = self
            .env
            .proxy
            .issue(&IssueRequest {
                policy: "s3-agent".into(),
                ttl: Some("30m".into()),
                ..IssueRequest::default()
            })
            .expect("task issued");
        self.env.remember_token(&issued.token);
        issued
    }

    /// `aws sts get-caller-identity` as `task`: the ARN moto says signed.
    async fn caller_arn(&self, task: &IssuedTask) -> String {
        let mut who = self.command_as("aws", task);
        who.args(["sts", "get-caller-identity", "--output", "json"]);
        let ran = self.run("aws sts get-caller-identity", who).await;
        assert!(ran.success, "get-caller-identity failed: {}", ran.shown());
        let out: serde_json::Value =
            serde_json::from_str(ran.stdout.trim()).unwrap_or_else(|_| panic!("{}", ran.shown()));
        out["Arn"].as_str().unwrap_or_default().to_string()
    }

    /// The values of `task`'s live session (key id, secret key, token), as keyswap got them
    /// from moto: looked for like real secrets in everything kept.
    fn remember_session(&self, task: &IssuedTask) -> usize {
        let leases = self.env.proxy.shared().leases.of_task(&task.id);
        for lease in &leases {
            self.env.remember_secret(lease.value.expose_secret());
            for part in &lease.parts {
                self.env.remember_secret(part.value.expose_secret());
            }
        }
        leases.iter().map(|l| 1 + l.parts.len()).sum()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_task_signs_with_its_own_sts_session_named_after_it() {
    let Some(aws) = start_with(STS_CONFIG).await else {
        return;
    };
    // exec and task issue give the agent a session token placeholder besides the key pair.
    let token_placeholder = aws.placeholder("AWS_SESSION_TOKEN");
    assert_eq!(aws.placeholder("AWS_REGION"), "us-east-1");
    let (a, b) = (aws.issue(), aws.issue());
    assert_eq!(a.env.get("AWS_SESSION_TOKEN"), Some(&token_placeholder));
    assert_eq!(
        a.env.get("AWS_ACCESS_KEY_ID").map(String::as_str),
        Some(aws.placeholder("AWS_ACCESS_KEY_ID").as_str())
    );

    let arn_a = aws.caller_arn(&a).await;
    assert_eq!(
        arn_a,
        format!(
            "arn:aws:sts::123456789012:assumed-role/keyswap-agent/keyswap-{}",
            a.id
        ),
        "moto did not see task a's own session"
    );
    let received = aws.env.dir.path().join("sts-boto3-received.txt");
    let received_arg = received.display().to_string();
    let mut boto3 = aws.command_as("python3", &a);
    boto3
        .arg("-c")
        .arg(format!("{BOTO3_PRELUDE}{STS_BOTO3_AGENT}"))
        .args([&received_arg, BUCKET]);
    let ran = aws.run("boto3 with a session", boto3).await;
    assert!(ran.success, "boto3 failed through keyswap: {}", ran.shown());
    let out: serde_json::Value =
        serde_json::from_str(ran.stdout.trim()).unwrap_or_else(|_| panic!("{}", ran.shown()));
    assert_eq!(out["got"], "written with a minted session");
    assert_eq!(out["keys"], serde_json::json!(["session.txt"]));
    aws.env.keep(
        &[],
        &String::from_utf8_lossy(&std::fs::read(&received).expect("received")),
    );
    let arn_b = aws.caller_arn(&b).await;
    assert!(
        arn_b.ends_with(&format!("/keyswap-{}", b.id)),
        "task b did not sign with its own session: {arn_b}"
    );

    // One mint per task (single flight over all of a's requests), each its own session.
    let minted = |task: &IssuedTask| {
        let id = task.id.clone();
        move |r: &serde_json::Value| r["event"] == "credential_minted" && r["task"] == id.as_str()
    };
    let (ma, mb) = (
        aws.env.audit_where(minted(&a)).await,
        aws.env.audit_where(minted(&b)).await,
    );
    assert_eq!(aws.env.audit().iter().filter(|r| minted(&a)(r)).count(), 1);
    for (record, task) in [(&ma, &a), (&mb, &b)] {
        assert_eq!(record["kind"], "aws_sts");
        assert_eq!(record["secret"], "aws-dev");
        assert_eq!(record["role"], ROLE_ARN);
        assert_eq!(record["session"], format!("keyswap-{}", task.id));
        assert_eq!(record["key_id_last4"].as_str().map(str::len), Some(4));
        assert!(record["expires"].is_string());
    }
    assert_ne!(
        ma["key_id_last4"], mb["key_id_last4"],
        "two tasks share a session"
    );
    assert_eq!(
        aws.remember_session(&a),
        3,
        "a's session: key id, secret key, token"
    );
    assert_eq!(aws.remember_session(&b), 3);

    // a ends: its session is dropped (STS cannot revoke it) and its credentials get 407.
    aws.env.proxy.revoke(&a.id, RevokeWhy::Api).expect("revoke");
    let dropped = aws
        .env
        .audit_where(|r| r["event"] == "credential_dropped" && r["task"] == a.id.as_str())
        .await;
    assert_eq!(dropped["why"], "api");
    assert_eq!(dropped["session"], format!("keyswap-{}", a.id));
    assert_eq!(dropped["key_id_last4"], ma["key_id_last4"]);
    let opts = aws.env.client(
        Some((&a.id, &a.token)),
        "sts.amazonaws.com:443",
        keyswap_tests::upstream::Alpn::Http1Only,
    );
    match client::connect_tunnel(&opts).await.expect("CONNECT io") {
        Tunnel::Refused { status, .. } => assert_eq!(status, 407),
        Tunnel::Open(_) => panic!("the ended task's credentials were let through"),
    }
    // b goes on with its session.
    assert_eq!(aws.caller_arn(&b).await, arn_b);
    aws.finish().await;
}
