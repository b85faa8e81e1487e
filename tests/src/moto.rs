//! A real AWS implementation for the AWS tests: moto's server (`moto[server]` from PyPI) on an
//! ephemeral loopback port, serving HTTPS with a certificate for the AWS host names the
//! tests use (signed by a CA made here), with authentication on: its first [`SETUP_ACTIONS`]
//! actions create an IAM user with a policy that allows everything and that user's access key
//! (the source keys keyswap signs with), and a role ([`ROLE_ARN`]) that allows everything too
//! (what `assume_role` tests assume); every later request must carry a correct SigV4
//! signature made with a key moto issued (the source keys or an STS session's).
//!
//! The keys are moto's own, random: they are no test secret with the `KSREAL` prefix, so the
//! tests look for them explicitly in everything they keep ([`Moto::key_material`]).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use base64::Engine;
use keyswap_certs::CertificateAuthority;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, ChildStderr, Command};

/// The host names moto's certificate carries and the tests route to it.
pub const MOTO_HOSTS: &[&str] = &[
    "s3.amazonaws.com",
    "s3.us-east-1.amazonaws.com",
    "ks-bucket.s3.amazonaws.com",
    "ks-bucket.s3.us-east-1.amazonaws.com",
    "sts.amazonaws.com",
    "sts.us-east-1.amazonaws.com",
    "iam.amazonaws.com",
];

/// The bucket the tests use (virtual-hosted: its name is in [`MOTO_HOSTS`]).
pub const BUCKET: &str = "ks-bucket";

/// How many unauthenticated actions the setup makes: create the user, give it a policy,
/// create its access key, create the role, give it a policy. Every action after these is
/// authenticated.
pub const SETUP_ACTIONS: u32 = 5;

/// The role the setup creates (moto's default account).
pub const ROLE_ARN: &str = "arn:aws:iam::123456789012:role/keyswap-agent";

/// The server moto runs, in Python: TLS on an ephemeral port, the setup through boto3 against
/// itself, one JSON line on stdout (port and the source keys), then it serves until its
/// stdin closes.
const SERVER: &str = r#"
import json, os, sys, threading
cert, key, ca, setup = sys.argv[1:5]
os.environ["INITIAL_NO_AUTH_ACTION_COUNT"] = setup
from werkzeug.serving import make_server
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
import boto3
app = DomainDispatcherApplication(create_backend_app)
server = make_server("127.0.0.1", 0, app, threaded=True, ssl_context=(cert, key))
port = server.server_address[1]
threading.Thread(target=server.serve_forever, daemon=True).start()
iam = boto3.client("iam", region_name="us-east-1", endpoint_url=f"https://127.0.0.1:{port}",
                   verify=ca, aws_access_key_id="setup", aws_secret_access_key="setup")
iam.create_user(UserName="keyswap-source")
policy = {"Version": "2012-10-17",
          "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
iam.put_user_policy(UserName="keyswap-source", PolicyName="all",
                    PolicyDocument=json.dumps(policy))
k = iam.create_access_key(UserName="keyswap-source")["AccessKey"]
trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
         "Principal": {"AWS": "arn:aws:iam::123456789012:user/keyswap-source"}, "Action": "sts:AssumeRole"}]}
iam.create_role(RoleName="keyswap-agent", AssumeRolePolicyDocument=json.dumps(trust))
iam.put_role_policy(RoleName="keyswap-agent", PolicyName="all",
                    PolicyDocument=json.dumps(policy))
print(json.dumps({"port": port, "key_id": k["AccessKeyId"], "secret": k["SecretAccessKey"]}),
      flush=True)
sys.stdin.read()
"#;

/// moto's server, killed when dropped.
pub struct Moto {
    child: Child,
    /// What moto wrote to stderr (werkzeug's request lines), read as it comes so the pipe
    /// never fills.
    log: tokio::task::JoinHandle<String>,
    pub port: u16,
    /// The source keys moto issued to the IAM user (what keyswap signs with).
    pub key_id: String,
    pub secret: String,
    /// The CA that signed moto's certificate (keyswap's `upstream.extra_roots`).
    pub ca_file: PathBuf,
}

impl Moto {
    /// Starts moto's server with its files in `dir`. `None` when python3 with moto, boto3
    /// and werkzeug is not installed (outside CI only: under `CI=true` that fails the test).
    pub async fn start(dir: &Path) -> Option<Moto> {
        if !installed().await {
            return None;
        }
        let ca = CertificateAuthority::generate("keyswap test moto CA").expect("moto CA");
        let mut names: Vec<&str> = MOTO_HOSTS.to_vec();
        names.push("127.0.0.1");
        let (chain, key) = ca.issue_server_cert(&names).expect("moto certificate");
        let cert_file = dir.join("moto-cert.pem");
        let key_file = dir.join("moto-key.pem");
        let ca_file = dir.join("moto-ca.pem");
        std::fs::write(&cert_file, pem("CERTIFICATE", chain[0].as_ref())).expect("write cert");
        std::fs::write(&key_file, pem("PRIVATE KEY", key.secret_der())).expect("write key");
        std::fs::write(&ca_file, ca.cert_pem()).expect("write CA");
        let mut child = Command::new("python3")
            .arg("-c")
            .arg(SERVER)
            .arg(&cert_file)
            .arg(&key_file)
            .arg(&ca_file)
            .arg(SETUP_ACTIONS.to_string())
            .env_remove("HTTPS_PROXY")
            .env_remove("https_proxy")
            .env_remove("HTTP_PROXY")
            .env_remove("http_proxy")
            .env("HOME", dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start moto's server");
        let stdout = child.stdout.take().expect("moto stdout");
        let stderr = child.stderr.take().expect("moto stderr");
        let mut first = String::new();
        let mut stdout = BufReader::new(stdout);
        let read = stdout.read_line(&mut first);
        let read = tokio::time::timeout(Duration::from_secs(120), read).await;
        if !matches!(read, Ok(Ok(n)) if n > 0) {
            let _ = child.start_kill();
            panic!("moto's server did not start: {}", drain(stderr).await);
        }
        let log = tokio::spawn(drain(stderr));
        let line: serde_json::Value = serde_json::from_str(first.trim()).expect("moto's JSON line");
        let text = |key: &str| line[key].as_str().expect("moto's keys").to_string();
        Some(Moto {
            port: u16::try_from(line["port"].as_u64().expect("port")).expect("port"),
            key_id: text("key_id"),
            secret: text("secret"),
            ca_file,
            child,
            log,
        })
    }

    /// The source keys, for the leak checks: neither may appear in anything the agent saw,
    /// nor in keyswap's log or audit.
    pub fn key_material(&self) -> Vec<String> {
        vec![self.key_id.clone(), self.secret.clone()]
    }

    /// `upstream.resolve` entries that route [`MOTO_HOSTS`] to moto, as YAML lines.
    pub fn resolve_yaml(&self, indent: &str) -> String {
        MOTO_HOSTS
            .iter()
            .map(|h| format!("{indent}\"{h}:443\": \"127.0.0.1:{}\"\n", self.port))
            .collect()
    }
}

impl Moto {
    /// Stops moto and keeps its log for the run's leak grep.
    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        let log = (&mut self.log).await.unwrap_or_default();
        crate::output::keep("moto.log", log.as_bytes());
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Whether python3 can import moto's server, boto3 and the AWS CLI's botocore.
async fn installed() -> bool {
    let probe = Command::new("python3")
        .args([
            "-c",
            "import moto.moto_server.werkzeug_app, boto3, werkzeug",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await;
    let found =
        matches!(probe, Ok(s) if s.success()) && crate::tools::available("aws", "--version");
    if !found {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("python3 with moto[server], boto3 and the AWS CLI must be installed in CI");
        }
        eprintln!(
            "\n*** NOTICE: moto, boto3 or the AWS CLI is missing: an AWS test did NOT run ***\n"
        );
    }
    found
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

async fn drain(mut stderr: ChildStderr) -> String {
    let mut buf = Vec::new();
    let _ = stderr.read_to_end(&mut buf).await;
    String::from_utf8_lossy(&buf).into_owned()
}
