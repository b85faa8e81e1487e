//! `keyswap exec`'s sandbox, attacked by a real unprivileged agent: every attack of issue 16
//! is a test named after it. The agent is the user `ksagent` (created when the tests run as
//! root, as in CI; see `keyswap_tests::agent_user`), which also runs keyswap itself — the
//! threat is a hostile process of keyswap's own user. Each attack runs in both modes where
//! that makes sense: an embedded `exec` (keyswap inside exec), and `exec` against a
//! `keyswap run` of the same user found through its admin socket.
//!
//! The attacker is a Python script ([`ATTACKER`]) that reports what it reached as JSON lines
//! — byte counts and which known markers it found, never the bytes themselves. Where an attack
//! works without the sandbox, a `--no-sandbox` control run shows that it does, so each test
//! can fail. The job still has to work inside: curl, Python (urllib, requests) and git reach
//! the in-process upstream through keyswap with the placeholder, files written in the working
//! directory belong to the user, an interactive program keeps its terminal, exit statuses and
//! SIGTERM pass through.
//!
//! Everything each process printed, the running proxy's log and the audit file are checked for
//! the real test secrets and for the task tokens the test learned.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use keyswap::admin::client::{AdminClient, AdminTarget};
use keyswap_tests::agent_user::{agent_user, AgentUser};
use keyswap_tests::harness::{render, test_env_values, ConfigVars, AGENT_TOKEN};
use keyswap_tests::logged_child::{wait_for_file, LoggedChild as Running};
use keyswap_tests::secrets::{assert_no_real_secret, GITHUB_PLACEHOLDER, GITHUB_REAL, OPENAI_REAL};
use keyswap_tests::upstream::{Upstream, UpstreamOptions};
use serde_json::Value;

const KEYSWAP: &str = env!("CARGO_BIN_EXE_keyswap");
const POLICY: &str = "agent-rw";
const API: &str = "https://api.upstream.test";
/// The admin API's bearer token (`admin.token_env`): a credential the agent must not get.
const ADMIN_TOKEN: &str = "ks-admin-token-sandbox-41c7e9d20b5a";
/// The audit chain's key (at least 32 bytes); a marker, not a real test secret.
const AUDIT_KEY: &str = "KSCRED-audit-key-5f0e9d8c7b6a5f4e3d2c1b0a";

/// What the attacker looks for in what it reads; it reports the indices it found. Real values
/// start with `KSREAL`; the markers planted in credential stores and the audit key with
/// `KSCRED` (not real values, so a `--no-sandbox` control may print that it found one).
const NEEDLES: &[&str] = &["KSREAL", "KSCRED", "PRIVATE KEY", "CERTIFICATE"];
const REAL: u64 = 0;
const CRED: u64 = 1;
const PRIVATE_KEY: u64 = 2;
const CERTIFICATE: u64 = 3;

/// A policy runtime tasks are issued from, a `from_env` and a `from_file` secret, a
/// `tasks_dir`, the admin socket (and a TCP admin listener with its token), a keyed audit chain.
const CONFIG: &str = r#"
version: 1
listen: 127.0.0.1:0
ca_dir: {dir}/ca
audit_log: {dir}/audit.jsonl
audit:
  key_file: {dir}/audit.key
admin:
  socket: {dir}/admin.sock
  listen: 127.0.0.1:0
  token_env: KS_TEST_ADMIN
upstream:
  extra_roots: {dir}/upstream-ca.pem
  resolve:
    "api.upstream.test:443": "127.0.0.1:{https_port}"
secrets:
  github:
    from_env: KS_TEST_GITHUB
    placeholder: ghp_keyswap_github_0000000000000000000000
    env: GITHUB_TOKEN
    headers: [authorization]
  openai:
    from_file: {dir}/secrets/openai
    placeholder: sk-keyswap-openai-placeholder
    env: OPENAI_API_KEY
    headers: [authorization]
tasks_dir: {dir}/tasks
policies:
  agent-rw:
    ttl: 10m
    max_ttl: 1h
    allow:
      - host: api.upstream.test
        methods: [GET, POST]
        paths: ["/echo", "/echo/**", "/git/**"]
        secrets: [github]
tasks:
  agent:
    token_env: KS_TEST_TOKEN
    allow:
      - host: api.upstream.test
        methods: [GET]
        paths: ["/echo/**"]
        secrets: [github]
"#;

/// The attacker. `python3 attacker.py MODE ARGS…`; one JSON object per line on stdout.
const ATTACKER: &str = r#"
import ctypes, errno, json, os, socket, stat, struct, sys

NEEDLES = [bytes.fromhex(h) for h in os.environ.get("KS_NEEDLES", "").split(",") if h]
libc = ctypes.CDLL(None, use_errno=True)

def out(**record):
    print(json.dumps(record), flush=True)

def name(e):
    if isinstance(e, OSError) and e.errno:
        return errno.errorcode.get(e.errno, str(e.errno))
    return type(e).__name__

def marks(data):
    return [i for i, n in enumerate(NEEDLES) if n in data]

def scan_mem(pid):
    try:
        maps = open(f"/proc/{pid}/maps").read().splitlines()
        mem = open(f"/proc/{pid}/mem", "rb", buffering=0)
    except OSError as e:
        return {"mem_error": name(e)}
    total, found, failed = 0, set(), 0
    with mem:
        for line in maps:
            fields = line.split()
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            if "r" not in fields[1] or hi - lo > (512 << 20):
                continue
            if len(fields) >= 6 and fields[5] in ("[vvar]", "[vsyscall]", "[vvar_vclock]"):
                continue
            try:
                mem.seek(lo)
                data = mem.read(hi - lo)
            except (OSError, OverflowError, ValueError):
                failed += 1
                continue
            total += len(data or b"")
            found.update(marks(data or b""))
    return {"mem": total, "mem_marks": sorted(found), "mem_failed": failed}

def cmdline(pid):
    try:
        raw = open(f"/proc/{pid}/cmdline", "rb").read()
        return [a.decode("utf-8", "replace") for a in raw.split(b"\0") if a]
    except OSError as e:
        return "error " + name(e)

def ptrace_attach(pid):
    # PTRACE_SEIZE: the same permission check as PTRACE_ATTACH, without stopping the
    # tracee; it is detached when this process exits.
    libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
    libc.ptrace.restype = ctypes.c_long
    ctypes.set_errno(0)
    if libc.ptrace(0x4206, pid, None, None) == 0:
        return "attached"
    return errno.errorcode.get(ctypes.get_errno(), "?")

def proc(pid):
    record = {"pid": pid, "cmdline": cmdline(pid)}
    try:
        data = open(f"/proc/{pid}/environ", "rb").read()
        record["environ"] = len(data)
        record["environ_marks"] = marks(data)
    except OSError as e:
        record["environ_error"] = name(e)
    record.update(scan_mem(pid))
    return record

def procscan(args):
    # Every process this one can see, except itself (it holds the needles).
    me = os.getpid()
    for entry in sorted(os.listdir("/proc")):
        if entry.isdigit() and int(entry) != me:
            out(kind="proc", **proc(int(entry)))

def targets(args):
    # Named processes (pids of the world outside): visible? readable? traceable?
    for pid in map(int, args):
        try:
            os.kill(pid, 0)
            exists = True
        except ProcessLookupError:
            exists = False
        except PermissionError:
            exists = True
        record = {"pid": pid, "exists": exists}
        if exists:
            record.update(proc(pid))
            record["ptrace"] = ptrace_attach(pid)
        out(kind="target", **record)
    out(kind="init", cmdline=cmdline(1))

def read_all(path, record):
    data = b""
    if os.path.isdir(path) and not os.path.islink(path):
        entries = 0
        for root, dirs, files in os.walk(path):
            entries += len(dirs) + len(files)
            for f in files:
                try:
                    data += open(os.path.join(root, f), "rb").read()
                except OSError as e:
                    record.setdefault("errors", []).append(name(e))
        record["type"] = "dir"
        record["entries"] = entries
    else:
        record["type"] = "socket" if stat.S_ISSOCK(os.stat(path).st_mode) else "file"
        data = open(path, "rb").read()
    record["bytes"] = len(data)
    record["marks"] = marks(data)

def files(args):
    for path in args:
        record = {"path": path}
        try:
            read_all(path, record)
        except OSError as e:
            record["error"] = name(e)
        out(kind="file", **record)

def write(args):
    how, path = args
    try:
        if how == "append":
            with open(path, "ab") as f:
                f.write(b"\n# written by the agent\n")
        elif how == "replace":
            tmp = path + ".agent"
            with open(tmp, "wb") as f:
                f.write(b"version: 1\n")
            try:
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        elif how == "create":
            with open(path, "xb") as f:
                f.write(b"allow:\n  - host: '*'\n")
        result = "ok"
    except OSError as e:
        result = name(e)
    out(kind="write", how=how, path=path, result=result)

def net(args):
    for target in args:
        proto, host, port = target.split(":")
        try:
            if proto == "tcp":
                s = socket.create_connection((host, int(port)), timeout=10)
                s.sendall(b"agent was here\n")
                s.close()
                result = "connected"
            else:
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.sendto(b"agent datagram\n", (host, int(port)))
                s.close()
                result = "sent"
        except OSError as e:
            result = name(e)
        out(kind="net", target=target, result=result)

def dns_query():
    header = struct.pack(">HHHHHH", 0x4b53, 0x0100, 1, 0, 0, 0)
    qname = b"".join(bytes([len(p)]) + p for p in b"example.com".split(b".")) + b"\0"
    return header + qname + struct.pack(">HH", 1, 1)

def dns(args):
    try:
        socket.getaddrinfo("keyswap-sandbox-probe.example.com", 443)
        result = "resolved"
    except socket.gaierror as e:
        result = "gaierror"
    except OSError as e:
        result = name(e)
    out(kind="getaddrinfo", result=result)
    servers = list(args)
    try:
        for line in open("/etc/resolv.conf"):
            fields = line.split()
            if len(fields) >= 2 and fields[0] == "nameserver" and ":" not in fields[1]:
                servers.append(fields[1] + ":53")
    except OSError:
        pass
    for server in servers:
        host, port = server.rsplit(":", 1)
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(3)
        try:
            s.sendto(dns_query(), (host, int(port)))
            s.recv(512)
            result = "answered"
        except OSError as e:
            result = name(e)
        out(kind="dns", server=server, result=result)

def tiocsti(args):
    import fcntl, termios
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.setsid()
            master, slave = os.openpty()
            fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
            try:
                fcntl.ioctl(slave, termios.TIOCSTI, b"x")
                result = "injected"
            except OSError as e:
                result = name(e)
        except OSError as e:
            result = "setup " + name(e)
        os.write(w, result.encode())
        os._exit(0)
    os.close(w)
    result = os.read(r, 200).decode()
    os.waitpid(pid, 0)
    out(kind="tiocsti", result=result)

def keyrings(args):
    import platform
    numbers = {"x86_64": (248, 249, 250), "aarch64": (217, 218, 219)}[platform.machine()]
    libc.syscall.restype = ctypes.c_long
    def call(number, *rest):
        ctypes.set_errno(0)
        r = libc.syscall(ctypes.c_long(number), *rest)
        return "ok" if r >= 0 else errno.errorcode.get(ctypes.get_errno(), "?")
    L = ctypes.c_long
    # KEYCTL_GET_KEYRING_ID of KEY_SPEC_USER_KEYRING, creating it.
    out(kind="keyring", call="keyctl", result=call(numbers[2], L(0), L(-4), L(1)))
    # add_key("user", …) to KEY_SPEC_PROCESS_KEYRING.
    out(kind="keyring", call="add_key",
        result=call(numbers[0], b"user", b"keyswap-agent", b"x", ctypes.c_size_t(1), L(-2)))
    out(kind="keyring", call="request_key",
        result=call(numbers[1], b"user", b"keyswap-agent-none", None, L(0)))

{"procscan": procscan, "targets": targets, "files": files, "write": write, "net": net,
 "dns": dns, "tiocsti": tiocsti, "keyrings": keyrings}[sys.argv[1]](sys.argv[2:])
"#;

// ---- what the test saw ----------------------------------------------------------------------

/// Every output, for the leak check at the test's end.
#[derive(Default)]
struct Leaks {
    /// (what, bytes, may hold a task token: an `env` listing shows the task's own).
    seen: Mutex<Vec<(String, Vec<u8>, bool)>>,
    tokens: Mutex<Vec<String>>,
}

impl Leaks {
    fn keep(&self, what: &str, bytes: &[u8]) {
        if let Ok(mut seen) = self.seen.lock() {
            seen.push((what.to_string(), bytes.to_vec(), false));
        }
    }

    fn keep_token_printer(&self, what: &str, bytes: &[u8]) {
        if let Ok(mut seen) = self.seen.lock() {
            seen.push((what.to_string(), bytes.to_vec(), true));
        }
    }

    fn keep_output(&self, what: &str, output: &Output) {
        self.keep(&format!("{what} stdout"), &output.stdout);
        self.keep(&format!("{what} stderr"), &output.stderr);
    }

    fn token(&self, token: &str) {
        assert!(!token.is_empty(), "an empty task token");
        if let Ok(mut tokens) = self.tokens.lock() {
            tokens.push(token.to_string());
        }
    }

    fn check(&self) {
        let tokens = self.tokens.lock().map(|t| t.clone()).unwrap_or_default();
        let seen = self.seen.lock().map(|s| s.clone()).unwrap_or_default();
        for (what, bytes, may_hold_token) in &seen {
            assert_no_real_secret(what, bytes);
            for credential in [AGENT_TOKEN, ADMIN_TOKEN] {
                assert!(
                    !contains(bytes, credential.as_bytes()),
                    "a static credential appeared in {what}"
                );
            }
            if !*may_hold_token {
                for token in &tokens {
                    assert!(
                        !contains(bytes, token.as_bytes()),
                        "a task token appeared in {what}"
                    );
                }
            }
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The attacker's JSON lines.
fn parse_records(out: &Output) -> Vec<Value> {
    text(&out.stdout)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("the attacker prints JSON lines"))
        .collect()
}

fn of_kind<'a>(records: &'a [Value], kind: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["kind"] == kind).collect()
}

fn marks(record: &Value, field: &str) -> Vec<u64> {
    record[field]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default()
}

// ---- the set-up ----------------------------------------------------------------------------

/// Where the task lives while the command runs.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    /// keyswap inside exec (no proxy answers on the admin socket).
    Embedded,
    /// exec against a `keyswap run` of the same user.
    Remote,
}

const BOTH: [Mode; 2] = [Mode::Embedded, Mode::Remote];

/// A test directory (owned by the agent) with the config, the secret file, the upstream.
struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
    upstream: Upstream,
    user: &'static AgentUser,
    keyswap: PathBuf,
    leaks: Leaks,
}

impl Setup {
    async fn new() -> Setup {
        Setup::with_config("").await
    }

    /// `extra` (YAML, `{dir}` filled in) is appended to [`CONFIG`].
    async fn with_config(extra: &str) -> Setup {
        let user = agent_user();
        let dir = tempfile::tempdir().expect("tempdir");
        let upstream_ca = keyswap_certs::CertificateAuthority::generate("sandbox test upstream CA")
            .expect("upstream CA");
        std::fs::write(dir.path().join("upstream-ca.pem"), upstream_ca.cert_pem())
            .expect("write upstream CA");
        let upstream = Upstream::start(
            &upstream_ca,
            UpstreamOptions {
                names: vec!["api.upstream.test".to_string()],
                ..UpstreamOptions::default()
            },
        )
        .await;
        let vars = ConfigVars {
            dir: dir.path(),
            https_port: upstream.port(),
            plain_port: 0,
            tunnel_port: 0,
        };
        let config = dir.path().join("keyswap.yaml");
        let template = format!("{CONFIG}{extra}");
        std::fs::write(&config, render(&template, &vars)).expect("write config");
        std::fs::create_dir_all(dir.path().join("secrets")).expect("secrets dir");
        std::fs::create_dir_all(dir.path().join("tasks")).expect("tasks dir");
        write_private(&dir.path().join("secrets/openai"), OPENAI_REAL);
        write_private(&dir.path().join("audit.key"), AUDIT_KEY);
        std::fs::write(dir.path().join("attacker.py"), ATTACKER).expect("write the attacker");
        user.own(dir.path());
        Setup {
            dir,
            config,
            upstream,
            user,
            keyswap: user.executable(Path::new(KEYSWAP)),
            leaks: Leaks::default(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn path_str(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    /// The variables the config reads credentials from (what keyswap itself needs).
    fn secret_vars() -> Vec<(String, String)> {
        let mut vars: Vec<(String, String)> = test_env_values()
            .into_iter()
            .filter(|(name, _)| CONFIG.contains(name.as_str()))
            .collect();
        vars.push(("KS_TEST_ADMIN".to_string(), ADMIN_TOKEN.to_string()));
        vars
    }

    /// `keyswap exec --config C --policy agent-rw EXTRA -- COMMAND` as the agent user, in the
    /// test directory; embedded, exec gets the secrets' variables (it starts keyswap itself).
    fn exec_command(
        &self,
        mode: Mode,
        extra: &[&str],
        command: &[&str],
    ) -> tokio::process::Command {
        let mut cmd = self.user.tokio_command(&self.keyswap);
        cmd.arg("exec")
            .arg("--config")
            .arg(&self.config)
            .args(["--policy", POLICY])
            .args(extra)
            .arg("--")
            .args(command)
            .current_dir(self.dir.path())
            .env("KEYSWAP_LOG", "info")
            .env("KS_NEEDLES", needles_hex());
        if mode == Mode::Embedded {
            cmd.envs(Setup::secret_vars());
        }
        cmd
    }

    async fn exec(&self, mode: Mode, extra: &[&str], command: &[&str]) -> Output {
        run(self.exec_command(mode, extra, command)).await
    }

    /// The attacker in the sandbox (`extra` may hold `--no-sandbox` for a control run).
    async fn attack(&self, mode: Mode, extra: &[&str], args: &[&str]) -> (Output, Vec<Value>) {
        let mut command = vec!["python3", "attacker.py"];
        command.extend_from_slice(args);
        let out = self.exec(mode, extra, &command).await;
        let what = format!("attacker {} ({mode:?} {extra:?})", args[0]);
        self.leaks.keep_output(&what, &out);
        assert!(
            out.status.success(),
            "{what} failed ({:?}):\n{}",
            out.status,
            text(&out.stderr)
        );
        let records = parse_records(&out);
        (out, records)
    }

    /// The running proxy of `mode` (none embedded), as the agent user.
    fn proxy_for(&self, mode: Mode) -> Option<Running> {
        (mode == Mode::Remote).then(|| {
            let running = start_running(self);
            running.wait_for("keyswap listening");
            running
        })
    }

    /// The leak check over everything kept, the audit file and the running proxy's log.
    fn check_leaks(&self, running: Option<&Running>) {
        let audit = std::fs::read(self.path("audit.jsonl")).unwrap_or_default();
        self.leaks.keep("audit log", &audit);
        if let Some(running) = running {
            self.leaks
                .keep("keyswap run stderr", running.log().as_bytes());
        }
        self.leaks.check();
    }

    /// Waits for an audit record matching `pred` (the writer batches; a running proxy is
    /// another process).
    async fn audit_where(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(self.path("audit.jsonl")).unwrap_or_default();
            let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
            let found = complete
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|r| pred(r));
            if let Some(record) = found {
                return record;
            }
            assert!(Instant::now() < deadline, "no audit record: {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn assert_upstream_got_the_real_value(&self, path: &str, expected: &str) {
        let got = self.upstream.authorization_for(path).unwrap_or_else(|| {
            panic!("{path}: no request with Authorization reached the upstream")
        });
        assert!(
            got == expected,
            "{path}: the upstream did not receive the real value"
        );
    }
}

fn needles_hex() -> String {
    NEEDLES
        .iter()
        .map(|n| n.bytes().map(|b| format!("{b:02x}")).collect::<String>())
        .collect::<Vec<_>>()
        .join(",")
}

fn write_private(path: &Path, contents: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, contents).expect("write a private file");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod 600");
}

/// Runs a command to its end, within a generous bound.
async fn run(mut cmd: tokio::process::Command) -> Output {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let limit = Duration::from_secs(120);
    tokio::time::timeout(limit, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("a command did not finish within {limit:?}"))
        .expect("command runs")
}

/// A `keyswap run` of the agent user whose stderr is collected line by line; killed when
/// dropped.
/// A `keyswap run` of the setup's config as the agent user.
fn start_running(setup: &Setup) -> Running {
    // setpriv execs keyswap: the child's pid is keyswap's.
    let mut cmd = setup.user.command(&setup.keyswap);
    cmd.arg("run")
        .arg("--config")
        .arg(&setup.config)
        .current_dir(setup.dir.path())
        .envs(Setup::secret_vars())
        .env("KEYSWAP_LOG", "info");
    Running::spawn(cmd)
}

fn python_usable(user: &AgentUser) -> bool {
    user.can_run("python3", &["-c", "import ctypes, json, fcntl, termios"])
}

// ---- the attacks ---------------------------------------------------------------------------

/// The agent reads every `/proc/*/environ` and `/proc/*/mem` it can see, looking for a real
/// value: it finds none, and it cannot even see keyswap (only the sandbox's init and itself).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_scanning_proc_environ_and_mem_finds_no_real_value_and_no_keyswap() {
    let setup = Setup::new().await;
    if !python_usable(setup.user) {
        return;
    }
    for mode in BOTH {
        let running = setup.proxy_for(mode);
        let (_, records) = setup.attack(mode, &[], &["procscan"]).await;
        let procs = of_kind(&records, "proc");
        assert!(
            !procs.is_empty(),
            "{mode:?}: the attacker saw no process but itself; is /proc mounted?"
        );
        for p in &procs {
            assert!(
                marks(p, "environ_marks").is_empty() && marks(p, "mem_marks").is_empty(),
                "{mode:?}: the attacker found a real value or marker in pid {}: {p}",
                p["pid"]
            );
            let cmdline: Vec<&str> = p["cmdline"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let is_keyswap = cmdline.first().is_some_and(|c| c.ends_with("keyswap"));
            assert!(
                !(is_keyswap && cmdline.iter().any(|a| *a == "exec" || *a == "run")),
                "{mode:?}: keyswap itself is visible inside the sandbox: {cmdline:?}"
            );
        }
        // Only the sandbox's own processes: init (pid 1) and the attacker's ancestry.
        assert!(
            procs.len() <= 3,
            "{mode:?}: the sandbox shows {} other processes: {procs:?}",
            procs.len()
        );
        assert!(
            procs.iter().any(|p| p["pid"] == 1),
            "{mode:?}: pid 1 of a fresh pid namespace is not visible: {procs:?}"
        );
        setup.check_leaks(running.as_ref());
    }
}

/// The agent names processes outside the sandbox — keyswap exec, keyswap run, the test runner
/// (the user's shell) — and tries `/proc/PID/…`, `kill(PID, 0)` and `ptrace(ATTACH)`: none of
/// them exists for it, and its `/proc/1` is the sandbox's init, not the machine's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_cannot_see_or_ptrace_processes_outside_the_sandbox() {
    let setup = Setup::new().await;
    if !python_usable(setup.user) {
        return;
    }
    let host_init = std::fs::read("/proc/1/cmdline").unwrap_or_default();
    let host_init: Vec<String> = host_init
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(text)
        .collect();
    for mode in BOTH {
        let running = setup.proxy_for(mode);
        // The exec's pid is known only once it runs: the attacker waits for it in a file.
        let pid_file = setup.path(&format!("exec-pid-{mode:?}"));
        let script = format!(
            "while [ ! -s {f} ]; do sleep 0.01; done; exec python3 attacker.py targets $(cat {f}) {runner} {run}",
            f = pid_file.display(),
            runner = std::process::id(),
            run = running.as_ref().map_or(String::new(), |r| r.pid().to_string()),
        );
        let child = setup
            .exec_command(mode, &[], &["sh", "-c", &script])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn exec");
        let exec_pid = child.id().expect("exec pid");
        std::fs::write(&pid_file, format!("{exec_pid}\n")).expect("write the exec pid");
        let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
            .await
            .expect("exec finished")
            .expect("exec output");
        setup
            .leaks
            .keep_output(&format!("attacker targets ({mode:?})"), &out);
        assert!(out.status.success(), "{mode:?}: {}", text(&out.stderr));
        let records = parse_records(&out);
        let targets = of_kind(&records, "target");
        assert!(
            targets.len() >= 2,
            "{mode:?}: the attacker did not report its targets: {}",
            text(&out.stderr)
        );
        for target in targets {
            // A pid number may exist in the sandbox's own namespace: then it is not the
            // outside process, and it holds nothing.
            assert!(
                target["exists"] == false
                    || (marks(target, "environ_marks").is_empty()
                        && marks(target, "mem_marks").is_empty()
                        && !target["cmdline"].to_string().contains("--policy")
                        && !target["cmdline"].to_string().contains("--config")),
                "{mode:?}: an outside process is visible inside the sandbox: {target}"
            );
            assert!(
                target["exists"] == false || target["ptrace"] != "attached",
                "{mode:?}: the agent attached to pid {}",
                target["pid"]
            );
        }
        let init = &of_kind(&records, "init")[0]["cmdline"];
        let inside: Vec<String> = init
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        assert!(
            inside != host_init,
            "{mode:?}: /proc/1 inside the sandbox is the machine's init"
        );
        setup.check_leaks(running.as_ref());
    }
}

/// `keyswap exec` and `keyswap run` are not dumpable: even without the sandbox, a process of
/// the same user cannot read their `/proc/PID/environ` (where `from_env` secrets live) or
/// `/proc/PID/mem`, nor ptrace them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyswap_environ_and_mem_are_refused_to_the_same_user_even_with_no_sandbox() {
    let setup = Setup::new().await;
    if !python_usable(setup.user) {
        return;
    }
    // Embedded: the command's parent is exec, which holds the secrets' variables.
    let script = "exec python3 attacker.py targets $PPID";
    let out = setup
        .exec(Mode::Embedded, &["--no-sandbox"], &["sh", "-c", script])
        .await;
    setup
        .leaks
        .keep_output("attacker targets exec (--no-sandbox)", &out);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let records = parse_records(&out);
    let exec = of_kind(&records, "target")[0].clone();
    assert_eq!(exec["exists"], true, "exec is the command's parent: {exec}");
    assert_refused("keyswap exec (embedded)", &exec);

    // A running proxy of the same user.
    let running = setup.proxy_for(Mode::Remote).expect("a running proxy");
    let run_pid = running.pid().to_string();
    let script = format!("exec python3 attacker.py targets $PPID {run_pid}");
    let out = setup
        .exec(Mode::Remote, &["--no-sandbox"], &["sh", "-c", &script])
        .await;
    setup
        .leaks
        .keep_output("attacker targets run (--no-sandbox)", &out);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let records = parse_records(&out);
    let targets = of_kind(&records, "target");
    assert_eq!(targets.len(), 2, "{targets:?}");
    assert_refused("keyswap exec (against keyswap run)", targets[0]);
    assert_eq!(
        targets[1]["exists"], true,
        "keyswap run is visible unsandboxed"
    );
    assert_refused("keyswap run", targets[1]);
    setup.check_leaks(Some(&running));
}

fn assert_refused(what: &str, target: &Value) {
    assert!(
        target["environ_error"].is_string() && target.get("environ").is_none(),
        "{what}: its /proc/PID/environ was readable by the same user: {target}"
    );
    assert!(
        target["mem_error"].is_string() || target["mem"] == 0,
        "{what}: its /proc/PID/mem was readable by the same user: {target}"
    );
    assert!(
        marks(target, "environ_marks").is_empty() && marks(target, "mem_marks").is_empty(),
        "{what}: a real value was read from it"
    );
    assert!(
        target["ptrace"] != "attached",
        "{what}: the same user could ptrace it"
    );
}

/// The `from_file` secret's file and the CA private key read as empty; so do the audit log
/// and its key; the CA certificate stays readable (clients trust it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_reads_the_secret_file_ca_key_and_audit_files_as_empty() {
    let setup = Setup::new().await;
    if !python_usable(setup.user) {
        return;
    }
    let hidden = [
        "secrets/openai",
        "ca/ca-key.pem",
        "audit.jsonl",
        "audit.key",
    ];
    let mut args = vec!["files".to_string(), setup.path_str("ca/ca.pem")];
    args.extend(hidden.iter().map(|p| setup.path_str(p)));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();

    // Control: without the sandbox the same reads find the secret and the key.
    let (_, control) = setup.attack(Mode::Embedded, &["--no-sandbox"], &args).await;
    let files = of_kind(&control, "file");
    assert!(
        marks(files[1], "marks").contains(&REAL),
        "control: the secret file did not hold a real value: {}",
        files[1]
    );
    assert!(
        marks(files[2], "marks").contains(&PRIVATE_KEY),
        "control: the CA key was not readable: {}",
        files[2]
    );

    for mode in BOTH {
        let running = setup.proxy_for(mode);
        let (_, records) = setup.attack(mode, &[], &args).await;
        let files = of_kind(&records, "file");
        assert_eq!(files.len(), 1 + hidden.len(), "{records:?}");
        assert!(
            marks(files[0], "marks").contains(&CERTIFICATE),
            "{mode:?}: ca.pem must stay readable: {}",
            files[0]
        );
        for (name, file) in hidden.iter().zip(&files[1..]) {
            assert!(
                file["bytes"] == 0 && marks(file, "marks").is_empty(),
                "{mode:?}: {name} is readable inside the sandbox: {file}"
            );
        }
        setup.check_leaks(running.as_ref());
    }
}

/// The user's credential stores (~/.ssh, ~/.aws, ~/.config/gh, ~/.netrc, …) and
/// `$XDG_RUNTIME_DIR` are empty inside.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_cannot_read_the_users_credential_stores() {
    let setup = Setup::new().await;
    if !python_usable(setup.user) {
        return;
    }
    let (home, home_var) = credential_home(&setup);
    let runtime = setup.path("runtime");
    std::fs::create_dir_all(&runtime).expect("runtime dir");
    write_private(&runtime.join("agent.sock.txt"), "KSCRED-runtime-dir\n");
    setup.user.own(&runtime);
    let runtime_str = runtime.display().to_string();
    let mut env: Vec<(&str, &str)> = vec![("XDG_RUNTIME_DIR", runtime_str.as_str())];
    if let Some(home) = home_var.as_deref() {
        env.push(("HOME", home));
    }
    let mut args = vec!["files".to_string()];
    args.extend(
        STORES
            .iter()
            .map(|(p, _)| home.join(p).display().to_string()),
    );
    args.extend([".ssh", ".aws", ".config/gh"].map(|d| home.join(d).display().to_string()));
    args.push(runtime_str.clone());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let attack = |mode: Mode, extra: &'static [&'static str]| {
        let mut command = vec!["python3", "attacker.py"];
        command.extend_from_slice(&args);
        let mut cmd = setup.exec_command(mode, extra, &command);
        cmd.envs(env.iter().copied());
        cmd
    };

    let out = run(attack(Mode::Embedded, &["--no-sandbox"])).await;
    setup
        .leaks
        .keep_output("credential stores (--no-sandbox)", &out);
    let control = parse_records(&out);
    let found = of_kind(&control, "file")
        .iter()
        .filter(|f| marks(f, "marks").contains(&CRED))
        .count();
    assert!(
        found >= STORES.len(),
        "control: only {found} stores were readable without the sandbox: {control:?}"
    );

    for mode in BOTH {
        let running = setup.proxy_for(mode);
        let out = run(attack(mode, &[])).await;
        setup
            .leaks
            .keep_output(&format!("credential stores ({mode:?})"), &out);
        assert!(out.status.success(), "{mode:?}: {}", text(&out.stderr));
        let records = parse_records(&out);
        let files = of_kind(&records, "file");
        assert_eq!(files.len(), args.len() - 1, "{records:?}");
        for file in files {
            assert!(
                marks(file, "marks").is_empty()
                    && file["bytes"].as_u64().unwrap_or(0) == 0
                    && file["entries"].as_u64().unwrap_or(0) == 0,
                "{mode:?}: a credential store is readable inside the sandbox: {file}"
            );
        }
        setup.check_leaks(running.as_ref());
    }
}

/// Stores planted in the agent's home, each with a marker.
const STORES: &[(&str, &str)] = &[
    (".ssh/id_ed25519", "KSCRED-ssh-private-key\n"),
    (
        ".aws/credentials",
        "[default]\naws_secret_access_key = KSCRED-aws\n",
    ),
    (
        ".config/gh/hosts.yml",
        "github.com:\n  oauth_token: KSCRED-gh\n",
    ),
    (
        ".netrc",
        "machine example.com login me password KSCRED-netrc\n",
    ),
    (".git-credentials", "https://me:KSCRED-git@example.com\n"),
    (
        ".docker/config.json",
        "{\"auths\":{\"x\":{\"auth\":\"KSCRED-docker\"}}}\n",
    ),
];

/// The home the credential stores are planted in: the dedicated user's own (the sandbox
/// finds it in `HOME`), or, running as a developer, a fake home in the test directory (never
/// the developer's real one), passed as `HOME`.
fn credential_home(setup: &Setup) -> (PathBuf, Option<String>) {
    let (home, var) = match setup.user.dedicated {
        true => (setup.user.home.clone(), None),
        false => {
            let home = setup.path("home");
            (home.clone(), Some(home.display().to_string()))
        }
    };
    static PLANTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let owner = setup
        .user
        .dedicated
        .then_some((setup.user.uid, setup.user.gid));
    let give = |path: &Path| {
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown");
        }
    };
    for (store, contents) in STORES {
        let path = home.join(store);
        let parent = path.parent().expect("a parent");
        std::fs::create_dir_all(parent).expect("store dir");
        for dir in Path::new(store).ancestors().skip(1) {
            if !dir.as_os_str().is_empty() {
                give(&home.join(dir));
            }
        }
        // Tests share the dedicated user's home: write beside, then rename (atomic).
        let n = PLANTED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let tmp = parent.join(format!(".planting-{}-{n}", std::process::id()));
        write_private(&tmp, contents);
        give(&tmp);
        std::fs::rename(&tmp, &path).expect("plant a credential store");
    }
    if !setup.user.dedicated {
        setup.user.own(&home);
    }
    (home, var)
}

/// The admin socket is hidden: the agent's `curl --unix-socket` cannot issue itself a task
/// nor approve a held request, and the running proxy has no task the agent issued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_cannot_issue_or_approve_through_the_admin_socket() {
    let setup = Setup::new().await;
    if !setup.user.can_run("curl", &["--version"]) {
        return;
    }
    let running = setup.proxy_for(Mode::Remote).expect("a running proxy");
    let socket = setup.path_str("admin.sock");
    let script = format!(
        "curl -sS --max-time 10 --unix-socket {socket} -X POST -H 'content-type: application/json' \
           -d '{{\"policy\":\"{POLICY}\",\"ttl\":\"1h\"}}' -o /dev/null -w 'issue %{{http_code}}\\n' http://keyswap/v1/tasks; \
         echo \"issue exit $?\"; \
         curl -sS --max-time 10 --unix-socket {socket} -X POST -H 'content-type: application/json' \
           -d '{{\"answer\":\"approve\"}}' -o /dev/null -w 'approve %{{http_code}}\\n' http://keyswap/v1/approvals/1; \
         echo \"approve exit $?\""
    );
    let out = setup.exec(Mode::Remote, &[], &["sh", "-c", &script]).await;
    setup.leaks.keep_output("admin socket attack", &out);
    let said = text(&out.stdout);
    for step in ["issue", "approve"] {
        assert!(
            said.contains(&format!("{step} 000")),
            "the agent reached the admin API ({step}):\n{said}\n{}",
            text(&out.stderr)
        );
        assert!(
            !said.contains(&format!("{step} exit 0")),
            "{step}: curl succeeded:\n{said}"
        );
    }
    let admin = AdminClient::new(AdminTarget::Socket(setup.path("admin.sock")));
    let tasks = admin.list().await.expect("admin list");
    assert!(
        tasks
            .iter()
            .all(|t| t.source != "runtime" || t.issued_by == "exec"),
        "the agent issued itself a task: {tasks:?}"
    );
    setup.check_leaks(Some(&running));
}

/// A direct TCP connection and a UDP datagram to listeners the test runs outside (on
/// loopback and on the machine's own address), and to the upstream itself, ignoring
/// `HTTPS_PROXY`: nothing arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_cannot_connect_out_over_tcp_or_udp() {
    let setup = Setup::new().await;
    if !python_usable(setup.user) {
        return;
    }
    let tcp = std::net::TcpListener::bind("0.0.0.0:0").expect("tcp listener");
    let udp = std::net::UdpSocket::bind("0.0.0.0:0").expect("udp socket");
    tcp.set_nonblocking(true).expect("nonblocking");
    udp.set_nonblocking(true).expect("nonblocking");
    let (tcp_port, udp_port) = (
        tcp.local_addr().expect("addr").port(),
        udp.local_addr().expect("addr").port(),
    );
    let mut hosts = vec!["127.0.0.1".to_string()];
    hosts.extend(primary_address());
    let mut targets: Vec<String> = hosts
        .iter()
        .flat_map(|h| [format!("tcp:{h}:{tcp_port}"), format!("udp:{h}:{udp_port}")])
        .collect();
    let upstream = format!("tcp:127.0.0.1:{}", setup.upstream.port());
    targets.push(upstream.clone());
    let mut args = vec!["net"];
    args.extend(targets.iter().map(String::as_str));
    let drain = || {
        let mut accepted = 0;
        while tcp.accept().is_ok() {
            accepted += 1;
        }
        let mut datagrams = 0;
        let mut buf = [0u8; 64];
        while udp.recv_from(&mut buf).is_ok() {
            datagrams += 1;
        }
        (accepted, datagrams)
    };

    // Control: unsandboxed, both arrive (the exec has ended, so they already have).
    let (_, control) = setup.attack(Mode::Embedded, &["--no-sandbox"], &args).await;
    let (accepted, datagrams) = drain();
    assert!(
        accepted >= 1 && datagrams >= 1,
        "control: nothing arrived without the sandbox ({accepted} connections, {datagrams} datagrams): {control:?}"
    );

    for mode in BOTH {
        let running = setup.proxy_for(mode);
        let (_, records) = setup.attack(mode, &[], &args).await;
        let (accepted, datagrams) = drain();
        assert_eq!(
            (accepted, datagrams),
            (0, 0),
            "{mode:?}: the agent reached a listener outside: {records:?}"
        );
        for r in of_kind(&records, "net") {
            if r["target"].as_str().is_some_and(|t| t.starts_with("tcp:")) {
                assert!(
                    r["result"] != "connected",
                    "{mode:?}: the agent connected to {}",
                    r["target"]
                );
            }
        }
        setup.check_leaks(running.as_ref());
    }
}

/// The machine's own (non-loopback) IPv4 address, if it has a route out: connecting a UDP
/// socket sends nothing.
fn primary_address() -> Option<String> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then(|| ip.to_string())
}

/// No resolver is reachable: `getaddrinfo` fails, and a DNS query to a resolver the test runs
/// outside, or to the nameservers of /etc/resolv.conf, gets no answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_has_no_dns_resolver() {
    let setup = Setup::new().await;
    if !python_usable(setup.user) {
        return;
    }
    // A "resolver" outside that answers every query (with the query itself).
    let resolver = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("resolver socket");
    let resolver_addr = resolver.local_addr().expect("addr").to_string();
    let answered = Arc::new(Mutex::new(0usize));
    let count = answered.clone();
    let responder = tokio::spawn(async move {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = resolver.recv_from(&mut buf).await {
            if let Ok(mut c) = count.lock() {
                *c += 1;
            }
            let _ = resolver.send_to(&buf[..n], from).await;
        }
    });
    let (_, control) = setup
        .attack(Mode::Embedded, &["--no-sandbox"], &["dns", &resolver_addr])
        .await;
    let ours = |records: &[Value]| {
        of_kind(records, "dns")
            .into_iter()
            .find(|r| r["server"] == resolver_addr.as_str())
            .cloned()
            .expect("the attacker queried the test's resolver")
    };
    assert_eq!(
        ours(&control)["result"],
        "answered",
        "control: the resolver did not answer without the sandbox"
    );
    let before = answered.lock().map(|c| *c).unwrap_or(0);

    let (_, records) = setup
        .attack(Mode::Embedded, &[], &["dns", &resolver_addr])
        .await;
    responder.abort();
    let lookup = &of_kind(&records, "getaddrinfo")[0];
    assert!(
        lookup["result"] != "resolved",
        "a name resolved inside the sandbox"
    );
    for r in of_kind(&records, "dns") {
        assert!(
            r["result"] != "answered",
            "a resolver answered inside the sandbox: {r}"
        );
    }
    assert_eq!(
        answered.lock().map(|c| *c).unwrap_or(0),
        before,
        "a query from inside reached the resolver outside"
    );
    setup.check_leaks(None);
}

/// `ioctl(TIOCSTI)` on a terminal that is the attacker's controlling terminal (the kernel
/// allows it there) fails with EPERM: the seccomp filter refuses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_cannot_type_into_a_terminal_with_tiocsti() {
    let setup = Setup::new().await;
    if !python_usable(setup.user) {
        return;
    }
    let legacy = std::fs::read_to_string("/proc/sys/dev/tty/legacy_tiocsti").unwrap_or_default();
    let (_, control) = setup
        .attack(Mode::Embedded, &["--no-sandbox"], &["tiocsti"])
        .await;
    let control = of_kind(&control, "tiocsti")[0]["result"].clone();
    if legacy.trim() != "0" {
        assert_eq!(
            control, "injected",
            "control: TIOCSTI on the controlling terminal failed without the sandbox"
        );
    }
    for mode in BOTH {
        let running = setup.proxy_for(mode);
        let (_, records) = setup.attack(mode, &[], &["tiocsti"]).await;
        assert_eq!(
            of_kind(&records, "tiocsti")[0]["result"],
            "EPERM",
            "{mode:?}: TIOCSTI was not refused"
        );
        setup.check_leaks(running.as_ref());
    }
}

/// `keyctl`, `add_key` and `request_key` fail with EPERM (the seccomp filter), where without
/// the sandbox they work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_cannot_use_the_kernel_keyrings() {
    let setup = Setup::new().await;
    if !python_usable(setup.user) {
        return;
    }
    let (_, control) = setup
        .attack(Mode::Embedded, &["--no-sandbox"], &["keyrings"])
        .await;
    let keyctl = of_kind(&control, "keyring")[0]["result"].clone();
    assert_eq!(
        keyctl, "ok",
        "control: keyctl failed without the sandbox: {control:?}"
    );
    let (_, records) = setup.attack(Mode::Embedded, &[], &["keyrings"]).await;
    let calls = of_kind(&records, "keyring");
    assert_eq!(calls.len(), 3, "{records:?}");
    for call in calls {
        assert_eq!(
            call["result"], "EPERM",
            "{} was not refused: {call}",
            call["call"]
        );
    }
    setup.check_leaks(None);
}

/// The config file cannot be appended to or replaced, and no task file can be dropped into
/// `tasks_dir` (a reload would pick either up).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_cannot_edit_the_config_or_write_into_tasks_dir() {
    let setup = Setup::new().await;
    if !python_usable(setup.user) {
        return;
    }
    let config = setup.config.display().to_string();
    let (_, control) = setup
        .attack(
            Mode::Embedded,
            &["--no-sandbox"],
            &["write", "append", &config],
        )
        .await;
    assert_eq!(
        of_kind(&control, "write")[0]["result"],
        "ok",
        "control: the agent's own config was not writable without the sandbox"
    );
    for mode in BOTH {
        let running = setup.proxy_for(mode);
        let before = std::fs::read(&setup.config).expect("config");
        let task_file = setup.path_str(&format!("tasks/agent-{mode:?}.yaml"));
        for (how, path) in [
            ("append", config.as_str()),
            ("replace", config.as_str()),
            ("create", task_file.as_str()),
        ] {
            let (_, records) = setup.attack(mode, &[], &["write", how, path]).await;
            let result = &of_kind(&records, "write")[0]["result"];
            assert!(result != "ok", "{mode:?}: the agent could {how} {path}");
        }
        assert_eq!(
            std::fs::read(&setup.config).expect("config"),
            before,
            "{mode:?}: the config changed"
        );
        assert!(
            !Path::new(&task_file).exists(),
            "{mode:?}: a task file appeared in tasks_dir"
        );
        setup.check_leaks(running.as_ref());
    }
}

/// `sandbox:` in the config: `hide` hides more paths, `read_only` protects more, and `expose`
/// keeps a directory under /tmp visible although the rest of /tmp is private.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_config_hides_protects_and_exposes_paths() {
    let exposed = tempfile::Builder::new()
        .prefix("keyswap-exposed-")
        .tempdir()
        .expect("a directory under the temp dir");
    let extra = format!(
        "sandbox:\n  hide: [\"{{dir}}/notes\"]\n  read_only: [\"{{dir}}/docs\"]\n  expose: [\"{}\"]\n",
        exposed.path().display()
    );
    let setup = Setup::with_config(&extra).await;
    if !python_usable(setup.user) {
        return;
    }
    std::fs::create_dir_all(setup.path("notes")).expect("notes");
    std::fs::create_dir_all(setup.path("docs")).expect("docs");
    std::fs::write(setup.path("notes/plan.txt"), "KSCRED-notes\n").expect("notes file");
    std::fs::write(exposed.path().join("shared.txt"), "KSCRED-exposed\n").expect("exposed file");
    setup.user.own(setup.dir.path());
    setup.user.own(exposed.path());
    let shared = exposed.path().join("shared.txt").display().to_string();
    for mode in BOTH {
        let running = setup.proxy_for(mode);
        let (_, records) = setup
            .attack(mode, &[], &["files", &setup.path_str("notes"), &shared])
            .await;
        let files = of_kind(&records, "file");
        assert_eq!(files.len(), 2, "{records:?}");
        assert!(
            marks(files[0], "marks").is_empty() && files[0]["entries"] == 0,
            "{mode:?}: sandbox.hide did not hide a directory: {}",
            files[0]
        );
        assert!(
            marks(files[1], "marks").contains(&CRED),
            "{mode:?}: sandbox.expose did not keep a /tmp directory visible: {}",
            files[1]
        );
        let new_doc = setup.path_str(&format!("docs/new-{mode:?}.txt"));
        let (_, records) = setup
            .attack(mode, &[], &["write", "create", &new_doc])
            .await;
        assert!(
            of_kind(&records, "write")[0]["result"] != "ok",
            "{mode:?}: the agent wrote into a sandbox.read_only directory"
        );
        setup.check_leaks(running.as_ref());
    }
}

// ---- the job still works inside ------------------------------------------------------------

/// curl with the placeholder reaches the upstream through keyswap, which swaps in the real
/// value; exec exits with the command's status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_inside_reaches_the_upstream_with_the_placeholder_swapped() {
    let setup = Setup::new().await;
    if !setup.user.can_run("curl", &["--version"]) {
        return;
    }
    for mode in BOTH {
        let running = setup.proxy_for(mode);
        let path = format!("/echo/sandbox-curl-{mode:?}");
        let script = format!(
            "curl -sS --max-time 20 -H \"Authorization: Bearer $GITHUB_TOKEN\" {API}{path}; exit 7"
        );
        let out = setup.exec(mode, &[], &["sh", "-c", &script]).await;
        setup.leaks.keep_output(&format!("curl ({mode:?})"), &out);
        assert_eq!(
            out.status.code(),
            Some(7),
            "{mode:?}: exec must exit with the command's status; stderr:\n{}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stdout).contains(GITHUB_PLACEHOLDER),
            "{mode:?}: curl did not get the scrubbed echo:\n{}",
            text(&out.stderr)
        );
        setup.assert_upstream_got_the_real_value(&path, &format!("Bearer {GITHUB_REAL}"));
        setup
            .audit_where("the request under an exec task", |r| {
                r["path"] == path.as_str() && r["decision"] == "allowed"
            })
            .await;
        setup.check_leaks(running.as_ref());
    }
}

/// Python's urllib and requests, unmodified, take the proxy and the CA from the environment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_urllib_and_requests_work_inside() {
    let setup = Setup::new().await;
    if !python_usable(setup.user) || !setup.user.can_run("python3", &["-c", "import requests"]) {
        return;
    }
    for mode in BOTH {
        let running = setup.proxy_for(mode);
        let urllib_path = format!("/echo/sandbox-urllib-{mode:?}");
        let requests_path = format!("/echo/sandbox-requests-{mode:?}");
        let script = format!(
            r#"
import os, urllib.request, requests
auth = {{"Authorization": "Bearer " + os.environ["GITHUB_TOKEN"]}}
req = urllib.request.Request("{API}{urllib_path}", headers=auth)
with urllib.request.urlopen(req, timeout=20) as resp:
    print("urllib", resp.status, resp.read().decode())
resp = requests.get("{API}{requests_path}", headers=auth, timeout=20)
print("requests", resp.status_code, resp.text)
"#
        );
        let out = setup.exec(mode, &[], &["python3", "-c", &script]).await;
        setup.leaks.keep_output(&format!("python ({mode:?})"), &out);
        let stdout = text(&out.stdout);
        assert!(
            out.status.success(),
            "{mode:?}: python failed:\n{stdout}\n{}",
            text(&out.stderr)
        );
        assert!(stdout.contains("urllib 200"), "{mode:?}: {stdout}");
        assert!(stdout.contains("requests 200"), "{mode:?}: {stdout}");
        assert_eq!(
            stdout.matches(GITHUB_PLACEHOLDER).count(),
            2,
            "{mode:?}: echoes not scrubbed back: {stdout}"
        );
        let expected = format!("Bearer {GITHUB_REAL}");
        setup.assert_upstream_got_the_real_value(&urllib_path, &expected);
        setup.assert_upstream_got_the_real_value(&requests_path, &expected);
        setup.check_leaks(running.as_ref());
    }
}

/// `git clone` over HTTPS (smart HTTP served by `git http-backend`) with a GitHub-style
/// `Basic x-access-token:PLACEHOLDER`; the clone lands in the working directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_clone_over_https_works_inside() {
    let setup = Setup::new().await;
    if !setup.user.can_run("git", &["--version"]) {
        return;
    }
    // The served repository belongs to the test (root), which runs git http-backend.
    let www = setup.path("www");
    write_repo(&setup, &www).await;
    setup.upstream.serve_files(&www);
    let basic = base64::engine::general_purpose::STANDARD
        .encode(format!("x-access-token:{GITHUB_PLACEHOLDER}"));
    let header = format!("http.extraHeader=Authorization: Basic {basic}");
    for mode in BOTH {
        let running = setup.proxy_for(mode);
        let clone = format!("clone-{mode:?}");
        let out = setup
            .exec(
                mode,
                &[],
                &[
                    "git",
                    "-c",
                    &header,
                    "clone",
                    "-q",
                    &format!("{API}/git/demo.git"),
                    &clone,
                ],
            )
            .await;
        setup
            .leaks
            .keep_output(&format!("git clone ({mode:?})"), &out);
        assert!(
            out.status.success(),
            "{mode:?}: git clone failed:\n{}",
            text(&out.stderr)
        );
        let readme = setup.path(&clone).join("README");
        assert_eq!(
            std::fs::read_to_string(&readme).expect("cloned README"),
            "cloned through keyswap\n"
        );
        let meta = std::fs::metadata(&readme).expect("README metadata");
        assert_eq!(
            (meta.uid(), meta.gid()),
            (setup.user.uid, setup.user.gid),
            "{mode:?}: the clone does not belong to the user"
        );
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD
                .encode(format!("x-access-token:{GITHUB_REAL}"))
        );
        setup.assert_upstream_got_the_real_value("/git/demo.git/git-upload-pack", &expected);
        setup.check_leaks(running.as_ref());
    }
}

/// A bare repository `root/git/demo.git` with one commit, made by the test with plain git.
async fn write_repo(setup: &Setup, root: &Path) {
    let bare = root.join("git/demo.git");
    let work = setup.path("seed");
    let git = |args: Vec<String>| {
        let mut cmd = tokio::process::Command::new("git");
        cmd.args(&args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", setup.path("seed-home"))
            .env("GIT_AUTHOR_NAME", "keyswap")
            .env("GIT_AUTHOR_EMAIL", "tests@keyswap.invalid")
            .env("GIT_COMMITTER_NAME", "keyswap")
            .env("GIT_COMMITTER_EMAIL", "tests@keyswap.invalid")
            .stdin(Stdio::null());
        async move {
            let out = run(cmd).await;
            assert!(
                out.status.success(),
                "git {}: {}",
                args.join(" "),
                text(&out.stderr)
            );
        }
    };
    let (bare, work) = (bare.display().to_string(), work.display().to_string());
    let s = |v: &[&str]| v.iter().map(|a| a.to_string()).collect::<Vec<_>>();
    git(s(&["init", "-q", "--bare", "-b", "main", &bare])).await;
    git(s(&["init", "-q", "-b", "main", &work])).await;
    std::fs::write(Path::new(&work).join("README"), "cloned through keyswap\n").expect("file");
    git(s(&["-C", &work, "add", "README"])).await;
    git(s(&["-C", &work, "commit", "-q", "-m", "first"])).await;
    git(s(&["-C", &work, "push", "-q", &bare, "main"])).await;
}

/// A file the command writes in the working directory is the user's; one it writes in /tmp
/// stays in the sandbox's private /tmp.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_written_inside_belong_to_the_user_and_tmp_is_private() {
    let setup = Setup::new().await;
    for mode in BOTH {
        let running = setup.proxy_for(mode);
        let name = format!("made-inside-{mode:?}");
        let leftover = format!(
            "/tmp/keyswap-sandbox-leftover-{}-{mode:?}",
            std::process::id()
        );
        let script = format!("echo made > {name} && echo left > {leftover} && id -u && id -g");
        let out = setup.exec(mode, &[], &["sh", "-c", &script]).await;
        setup.leaks.keep_output(&format!("write ({mode:?})"), &out);
        assert!(out.status.success(), "{mode:?}: {}", text(&out.stderr));
        assert_eq!(
            text(&out.stdout),
            format!("{}\n{}\n", setup.user.uid, setup.user.gid),
            "{mode:?}: the command's uid/gid inside are not the user's"
        );
        let meta = std::fs::metadata(setup.path(&name)).expect("the file written inside");
        assert_eq!(
            (meta.uid(), meta.gid()),
            (setup.user.uid, setup.user.gid),
            "{mode:?}: the file written inside does not belong to the user"
        );
        assert_eq!(
            std::fs::read_to_string(setup.path(&name)).expect("read"),
            "made\n"
        );
        assert!(
            !Path::new(&leftover).exists(),
            "{mode:?}: a file written in the sandbox's /tmp appeared in the real /tmp"
        );
        setup.check_leaks(running.as_ref());
    }
}

/// An interactive program keeps its terminal: exec runs on a pty (`script`), the command sees
/// a terminal on stdin and stdout and reads a line typed into it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interactive_program_inside_keeps_its_terminal() {
    let setup = Setup::new().await;
    if !python_usable(setup.user) || !setup.user.can_run("script", &["--version"]) {
        return;
    }
    for mode in BOTH {
        let running = setup.proxy_for(mode);
        let program = "import os; print('tty', os.isatty(0), os.isatty(1)); print('got', input())";
        let inner = format!(
            "{} exec --config {} --policy {POLICY} -- python3 -c \"{program}\"",
            setup.keyswap.display(),
            setup.config.display()
        );
        let mut cmd = setup.user.tokio_command("script");
        cmd.args(["-qec", &inner, "/dev/null"])
            .current_dir(setup.dir.path())
            .env("KEYSWAP_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if mode == Mode::Embedded {
            cmd.envs(Setup::secret_vars());
        }
        let mut child = cmd.spawn().expect("spawn script");
        {
            use tokio::io::AsyncWriteExt;
            let mut stdin = child.stdin.take().expect("stdin");
            stdin
                .write_all(b"typed-into-the-terminal\n")
                .await
                .expect("type a line");
        }
        let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
            .await
            .expect("script finished")
            .expect("script output");
        setup.leaks.keep_output(&format!("pty ({mode:?})"), &out);
        let stdout = text(&out.stdout);
        assert!(
            out.status.success(),
            "{mode:?}: {stdout}\n{}",
            text(&out.stderr)
        );
        assert!(
            stdout.contains("tty True True"),
            "{mode:?}: the command has no terminal:\n{stdout}"
        );
        assert!(
            stdout.contains("got typed-into-the-terminal"),
            "{mode:?}: the line typed into the terminal did not reach the command:\n{stdout}"
        );
        setup.check_leaks(running.as_ref());
    }
}

/// The command's status passes through (128 + N when a signal N ended it), and a SIGTERM sent
/// to exec reaches the command, whose trap decides the status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_status_and_sigterm_pass_through_the_sandbox() {
    let setup = Setup::new().await;
    for mode in BOTH {
        let running = setup.proxy_for(mode);
        let out = setup.exec(mode, &[], &["sh", "-c", "exit 3"]).await;
        setup.leaks.keep_output(&format!("exit 3 ({mode:?})"), &out);
        assert_eq!(
            out.status.code(),
            Some(3),
            "{mode:?}: {}",
            text(&out.stderr)
        );
        let out = setup.exec(mode, &[], &["sh", "-c", "kill -KILL $$"]).await;
        setup
            .leaks
            .keep_output(&format!("SIGKILL ({mode:?})"), &out);
        assert_eq!(
            out.status.code(),
            Some(128 + 9),
            "{mode:?}: {}",
            text(&out.stderr)
        );

        let ready = setup.path(&format!("ready-{mode:?}"));
        let script = format!(
            "trap 'exit 42' TERM; echo up > {}; while :; do sleep 0.05; done",
            ready.display()
        );
        let child = setup
            .exec_command(mode, &[], &["sh", "-c", &script])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn exec");
        let exec_pid = child.id().expect("exec pid") as i32;
        wait_for_file(&ready, Duration::from_secs(30)).await;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(exec_pid),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("signal exec");
        let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
            .await
            .expect("exec ends after the command does")
            .expect("exec output");
        setup
            .leaks
            .keep_output(&format!("SIGTERM ({mode:?})"), &out);
        assert_eq!(
            out.status.code(),
            Some(42),
            "{mode:?}: the command's trap ran and exec passed its status on; stderr:\n{}",
            text(&out.stderr)
        );
        setup.check_leaks(running.as_ref());
    }
}

/// The command gets no variable the config reads a credential from (`from_env`, `token_env`,
/// `admin.token_env`), none of the user's agent sockets, and — embedded, where exec knows the
/// values — no variable holding a real value under any name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_environment_holds_no_credential_variable() {
    let setup = Setup::new().await;
    let copy = format!("prefix-{GITHUB_REAL}-suffix");
    let session = [
        ("SSH_AUTH_SOCK", "/tmp/ssh-agent.sock"),
        ("DBUS_SESSION_BUS_ADDRESS", "unix:path=/run/user/999/bus"),
        ("GPG_AGENT_INFO", "/run/user/999/gnupg/S.gpg-agent:0:1"),
    ];
    for mode in BOTH {
        let running = setup.proxy_for(mode);
        let mut cmd = setup.exec_command(mode, &[], &["env"]);
        // Whatever exec's caller has in its environment: the credentials too.
        cmd.envs(Setup::secret_vars())
            .envs(session)
            .env("KS_RENAMED_COPY", &copy);
        if mode == Mode::Remote {
            // Against a running proxy exec cannot know values, only names.
            cmd.env_remove("KS_RENAMED_COPY");
        }
        let out = run(cmd).await;
        assert!(
            out.status.success(),
            "{mode:?}: exec env failed:\n{}",
            text(&out.stderr)
        );
        let env = text(&out.stdout);
        let names: Vec<&str> = env
            .lines()
            .filter_map(|l| l.split_once('=').map(|(n, _)| n))
            .collect();
        for (name, _) in Setup::secret_vars() {
            assert!(
                !names.contains(&name.as_str()),
                "{mode:?}: the command inherited {name}, a variable the config reads a credential from"
            );
        }
        for (name, _) in session {
            assert!(
                !names.contains(&name),
                "{mode:?}: the command inherited {name}"
            );
        }
        assert!(
            !names.contains(&"KS_RENAMED_COPY"),
            "{mode:?}: the command inherited a variable holding a real value"
        );
        let proxy = env
            .lines()
            .find_map(|l| l.strip_prefix("HTTPS_PROXY="))
            .expect("HTTPS_PROXY set");
        let token = proxy
            .strip_prefix("http://")
            .and_then(|r| r.split_once('@'))
            .and_then(|(userinfo, _)| userinfo.split_once(':'))
            .map(|(_, token)| token.to_string())
            .expect("a token in the proxy URL");
        setup.leaks.token(&token);
        assert!(
            env.lines()
                .any(|l| l == format!("GITHUB_TOKEN={GITHUB_PLACEHOLDER}")),
            "{mode:?}: the command did not get the placeholder"
        );
        setup
            .leaks
            .keep_token_printer(&format!("env ({mode:?}) stdout"), &out.stdout);
        setup
            .leaks
            .keep(&format!("env ({mode:?}) stderr"), &out.stderr);
        setup.check_leaks(running.as_ref());
    }
}

// ---- it fails closed -----------------------------------------------------------------------

/// Run as root in a throwaway user namespace, this wrapper sets that namespace's
/// `user.max_user_namespaces` to 0, becomes UID:GID (mapped through), and execs the rest:
/// creating a user namespace then fails with ENOSPC, as where a sysctl forbids them.
const NO_USERNS: &str = r#"
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
uid, gid = int(sys.argv[1]), int(sys.argv[2])
ready_r, ready_w = os.pipe()
go_r, go_w = os.pipe()
pid = os.fork()
if pid == 0:
    if libc.unshare(0x10000000) != 0:
        print("unshare:", os.strerror(ctypes.get_errno()), file=sys.stderr)
        os._exit(120)
    os.write(ready_w, b"x")
    os.read(go_r, 1)
    with open("/proc/sys/user/max_user_namespaces", "w") as f:
        f.write("0")
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    os.execvp(sys.argv[3], sys.argv[3:])
os.read(ready_r, 1)
with open(f"/proc/{pid}/uid_map", "w") as f:
    f.write(f"0 0 1\n{uid} {uid} 1\n")
with open(f"/proc/{pid}/gid_map", "w") as f:
    f.write(f"0 0 1\n{gid} {gid} 1\n")
os.write(go_w, b"x")
_, status = os.waitpid(pid, 0)
sys.exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))
"#;

/// Without user namespaces exec exits 125 naming the cause and the fixes, and runs nothing;
/// with `--no-sandbox` it runs the command after a warning that names what it can reach.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_without_user_namespaces_fails_closed_and_no_sandbox_warns() {
    let setup = Setup::new().await;
    if !setup
        .user
        .require_root("forbidding user namespaces in a throwaway namespace")
    {
        return;
    }
    let wrapper = setup.path("no-userns.py");
    std::fs::write(&wrapper, NO_USERNS).expect("write the wrapper");
    let exec = |extra: &[&str], marker: &str| {
        let mut cmd = tokio::process::Command::new("python3");
        cmd.arg(&wrapper)
            .arg(setup.user.uid.to_string())
            .arg(setup.user.gid.to_string())
            .arg(&setup.keyswap)
            .args(["exec", "--config"])
            .arg(&setup.config)
            .args(["--policy", POLICY])
            .args(extra)
            .args(["--", "sh", "-c", &format!("touch {marker}")])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &setup.user.home)
            .envs(Setup::secret_vars())
            .current_dir(setup.dir.path())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    };
    let out = run(exec(&[], "ran-sandboxed")).await;
    setup
        .leaks
        .keep_output("exec without user namespaces", &out);
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(125),
        "exec must fail itself without user namespaces; stderr:\n{stderr}"
    );
    assert!(
        stderr.contains("user namespace") && stderr.contains("--no-sandbox"),
        "the message must name user namespaces and the fixes:\n{stderr}"
    );
    assert!(
        !setup.path("ran-sandboxed").exists(),
        "the command ran although the sandbox could not be built"
    );

    let out = run(exec(&["--no-sandbox"], "ran-unsandboxed")).await;
    setup
        .leaks
        .keep_output("exec --no-sandbox without user namespaces", &out);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "--no-sandbox must run: {stderr}");
    assert!(
        setup.path("ran-unsandboxed").exists(),
        "the command did not run"
    );
    let warning = stderr
        .lines()
        .find(|l| l.contains("WARNING") && l.contains("--no-sandbox"))
        .unwrap_or_else(|| panic!("no --no-sandbox warning:\n{stderr}"));
    for reach in ["ssh", "connect"] {
        assert!(
            warning.contains(reach),
            "the warning does not say the command can reach {reach}: {warning}"
        );
    }
    setup.check_leaks(None);
}

/// As root, exec refuses to run the command (as root) without `--user`; with `--user
/// ksagent` the command runs sandboxed as that user, whose credential stores are hidden.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_exec_needs_user_and_runs_the_command_sandboxed_as_that_user() {
    let setup = Setup::new().await;
    if !setup.user.require_root("keyswap exec --user") || !python_usable(setup.user) {
        return;
    }
    let root_exec = |extra: &[&str], command: &[&str]| {
        let mut cmd = tokio::process::Command::new(&setup.keyswap);
        cmd.args(["exec", "--config"])
            .arg(&setup.config)
            .args(["--policy", POLICY])
            .args(extra)
            .arg("--")
            .args(command)
            .env_clear()
            .env("PATH", keyswap_tests::agent_user::AGENT_PATH)
            .env("HOME", "/root")
            .env("KS_NEEDLES", needles_hex())
            .envs(Setup::secret_vars())
            .current_dir(setup.dir.path())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    };
    let out = run(root_exec(&[], &["sh", "-c", "touch ran-as-root"])).await;
    setup.leaks.keep_output("root exec without --user", &out);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert!(stderr.contains("--user NAME"), "{stderr}");
    assert!(
        !setup.path("ran-as-root").exists(),
        "the command ran as root"
    );

    let (home, _) = credential_home(&setup);
    let mut command = vec!["python3".to_string(), "attacker.py".into(), "files".into()];
    command.extend(
        STORES
            .iter()
            .map(|(p, _)| home.join(p).display().to_string()),
    );
    let script = format!(
        "id -u; id -g; echo \"HOME=$HOME\"; ls /proc | grep -c '^[0-9]'; exec {}",
        command.join(" ")
    );
    let out = run(root_exec(
        &["--user", &setup.user.name],
        &["sh", "-c", &script],
    ))
    .await;
    setup.leaks.keep_output("root exec --user", &out);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], setup.user.uid.to_string(), "uid inside: {stdout}");
    assert_eq!(lines[1], setup.user.gid.to_string(), "gid inside: {stdout}");
    assert_eq!(
        lines[2],
        format!("HOME={}", setup.user.home.display()),
        "{stdout}"
    );
    let visible: usize = lines[3].parse().expect("a process count");
    assert!(
        visible <= 4,
        "the command sees {visible} processes: not a fresh pid namespace"
    );
    let records = parse_records(&out);
    let files = of_kind(&records, "file");
    assert_eq!(files.len(), STORES.len(), "{stdout}");
    for file in files {
        assert!(
            marks(file, "marks").is_empty() && file["bytes"].as_u64().unwrap_or(0) == 0,
            "a credential store of {} is readable: {file}",
            setup.user.name
        );
    }
    setup.check_leaks(None);
}
