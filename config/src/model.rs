//! The validated config the proxy runs on, and the matching of requests against it.
//!
//! Everything here was checked when the config was loaded (fields are public so that tools
//! and tests can build values; the proxy should only use loaded ones). Matching is deny-by-default and first-match-wins. Real secret values live
//! only in [`secrecy::SecretString`]; nothing in this module formats one (`Secret` has a
//! hand-written `Debug` and no `Display`/`Serialize`).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use std::sync::Arc;

use secrecy::{SecretSlice, SecretString};

use crate::host::HostPattern;
use crate::limits::{Budget, Rate};
pub use crate::parent_proxy::{NoProxy, ParentAuth, ParentKind, ParentProxy};
use crate::path::PathPatterns;

/// A loaded, validated config.
#[derive(Debug, Clone)]
pub struct Config {
    /// Explicit proxy listener; default `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// CA directory (relative to the process's working directory); default `./.keyswap/ca`.
    pub ca_dir: PathBuf,
    /// Audit destination; default `./.keyswap/audit.jsonl`, `-` = stdout.
    pub audit_log: AuditLog,
    /// keyswap's own state (the lease state file); default `state` beside `ca_dir`.
    pub state_dir: PathBuf,
    /// `audit:`: the audit chain's settings.
    pub audit: Audit,
    pub upstream: Upstream,
    /// In file order; `secrets[i].id == SecretId(i)`.
    pub secrets: Vec<Secret>,
    /// Inline tasks and `tasks_dir/*.yaml`, by id.
    pub tasks: BTreeMap<String, Task>,
    /// Named allowlists that runtime tasks are issued from (`policies:`), by name.
    pub policies: BTreeMap<String, Policy>,
    /// The admin API (`admin:`).
    pub admin: Admin,
    /// `metrics:`; `None` = no metrics listener.
    pub metrics: Option<Metrics>,
    /// `transparent:`; `None` = no transparent listener.
    pub transparent: Option<Transparent>,
    /// `approval:`: how requests that wait for a human are held.
    pub approval: Approval,
    /// `tasks_dir`, as written; `None` = no task files.
    pub tasks_dir: Option<PathBuf>,
    /// `sandbox:`: what `keyswap exec`'s sandbox hides besides what it always hides (see
    /// [`crate::sandbox`]).
    pub sandbox: Sandbox,
    /// `limits:`: how much one task and one agent connection may hold at once.
    pub limits: Limits,
    /// `store:`; `None` = everything in memory (one replica).
    pub store: Option<crate::store::Store>,
    /// Non-fatal notes for `keyswap check`; never contain a secret value.
    pub warnings: Vec<String>,
}

impl Config {
    pub fn task(&self, id: &str) -> Option<&Task> {
        self.tasks.get(id)
    }

    /// The secret with this id. Ids come from this config, so the index is always valid;
    /// an id from another config snapshot panics.
    pub fn secret(&self, id: SecretId) -> &Secret {
        &self.secrets[id.0]
    }

    pub fn secret_by_name(&self, name: &str) -> Option<SecretId> {
        self.secrets.iter().find(|s| s.name == name).map(|s| s.id)
    }

    pub fn policy(&self, name: &str) -> Option<&Policy> {
        self.policies.get(name)
    }

    /// The lease state file: `state_dir/leases.json`.
    pub fn lease_state_file(&self) -> PathBuf {
        self.state_dir.join(LEASE_STATE_FILE)
    }
}

/// The lease state file's name inside `state_dir`.
pub const LEASE_STATE_FILE: &str = "leases.json";

/// Task ids appear in proxy credentials (`http://TASK:TOKEN@...`) and file names: 1 to 64
/// characters of A-Z, a-z, 0-9, `.`, `_` and `-`.
pub fn valid_task_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Default `ca_dir`.
pub const DEFAULT_CA_DIR: &str = "./.keyswap/ca";

/// Default socket of the admin API.
pub const DEFAULT_ADMIN_SOCKET: &str = "./.keyswap/admin.sock";

/// `admin:`: where the admin API listens.
#[derive(Clone)]
pub struct Admin {
    /// Unix socket (created mode 0600); default [`DEFAULT_ADMIN_SOCKET`].
    pub socket: PathBuf,
    /// Optional TCP listener (sidecars); only ever set together with `token`.
    pub listen: Option<SocketAddr>,
    /// Bearer token required on the TCP listener, read from `token_env`.
    pub token: Option<SecretString>,
    /// The variable the token was read from: the token's name in the audit (`token:NAME`).
    pub token_env: Option<String>,
}

impl Default for Admin {
    fn default() -> Self {
        Admin {
            socket: PathBuf::from(DEFAULT_ADMIN_SOCKET),
            listen: None,
            token: None,
            token_env: None,
        }
    }
}

impl fmt::Debug for Admin {
    // The token is never formatted, even redacted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admin")
            .field("socket", &self.socket)
            .field("listen", &self.listen)
            .field("token", &self.token.as_ref().map(|_| "(set)"))
            .field("token_env", &self.token_env)
            .finish()
    }
}

/// `metrics:`: a listener for `GET /metrics` and `GET /healthz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metrics {
    pub listen: SocketAddr,
}

/// `transparent:`: a listener for connections redirected by iptables/nftables, which arrive
/// with no CONNECT and no proxy credentials. The task comes from the listener (`task:`) or
/// from the source address (`sources:`); the target from the SNI or the `Host` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transparent {
    pub listen: SocketAddr,
    pub tasks: TransparentTasks,
    /// Original destination port → how to read the connection; any other port is refused.
    pub ports: BTreeMap<u16, PortMode>,
}

/// Which task a transparent connection belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransparentTasks {
    /// `task:`: every connection.
    One(String),
    /// `sources:`: by source address, the longest matching prefix first.
    BySource(Vec<(SourceNet, String)>),
}

/// How a transparent connection is read: TLS (the SNI names the target) or plain HTTP (the
/// `Host` header does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortMode {
    Tls,
    Http,
}

impl Transparent {
    /// The task id a connection from `source` belongs to, if any.
    pub fn task_for(&self, source: IpAddr) -> Option<&str> {
        match &self.tasks {
            TransparentTasks::One(task) => Some(task),
            TransparentTasks::BySource(sources) => sources
                .iter()
                .filter(|(net, _)| net.contains(source))
                .max_by_key(|(net, _)| net.prefix)
                .map(|(_, task)| task.as_str()),
        }
    }

    pub fn port_mode(&self, port: u16) -> Option<PortMode> {
        self.ports.get(&port).copied()
    }
}

/// An address block (`10.213.0.0/24`; a bare address is a /32 or /128) with no bits set
/// after the prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceNet {
    pub addr: IpAddr,
    pub prefix: u8,
}

/// Why a source block was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceNetError {
    #[error("is not an IP address or address/prefix")]
    BadAddress,
    #[error("has a prefix longer than {0} bits")]
    BadPrefix(u8),
    #[error("has address bits set after the prefix (the block starts at {0})")]
    HostBits(String),
}

impl std::str::FromStr for SourceNet {
    type Err = SourceNetError;

    fn from_str(text: &str) -> Result<SourceNet, SourceNetError> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| SourceNetError::BadAddress)?;
        let bits = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && p.len() <= 3 => p
                .parse::<u8>()
                .map_err(|_| SourceNetError::BadPrefix(bits))?,
            Some(_) => return Err(SourceNetError::BadAddress),
        };
        if prefix > bits {
            return Err(SourceNetError::BadPrefix(bits));
        }
        let net = SourceNet { addr, prefix };
        let start = net.start();
        if start != addr {
            return Err(SourceNetError::HostBits(format!("{start}/{prefix}")));
        }
        Ok(net)
    }
}

impl SourceNet {
    fn mask(&self, addr: IpAddr) -> Option<IpAddr> {
        match addr {
            IpAddr::V4(v4) if self.addr.is_ipv4() => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                Some(IpAddr::V4((u32::from(v4) & mask).into()))
            }
            IpAddr::V6(v6) if self.addr.is_ipv6() => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                Some(IpAddr::V6((u128::from(v6) & mask).into()))
            }
            _ => None,
        }
    }

    fn start(&self) -> IpAddr {
        self.mask(self.addr).unwrap_or(self.addr)
    }

    /// Whether `ip` is in this block (an IPv4-mapped IPv6 address counts as its IPv4 form).
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.mask(ip.to_canonical()) == Some(self.addr)
    }
}

impl fmt::Display for SourceNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Default of `approval.timeout`.
pub const DEFAULT_APPROVAL_TIMEOUT: Duration = Duration::from_secs(120);
/// Default of `approval.max_pending` (per task).
pub const DEFAULT_APPROVAL_MAX_PENDING: usize = 20;

/// `approval:`: how long a request waits for a human, who is told, and how many may wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approval {
    /// After this, a waiting request is refused with `approval_timeout`.
    pub timeout: Duration,
    /// An `https://` URL that gets a JSON POST when a request starts waiting.
    pub webhook: Option<String>,
    /// The most requests of one task that may wait at once; more → `approval_queue_full`.
    pub max_pending: usize,
}

impl Default for Approval {
    fn default() -> Self {
        Approval {
            timeout: DEFAULT_APPROVAL_TIMEOUT,
            webhook: None,
            max_pending: DEFAULT_APPROVAL_MAX_PENDING,
        }
    }
}

/// Default of `limits.per_task.in_flight`: well above what one agent's tools run at once
/// (package managers fetch with 10 to 50 parallel requests), so only a flood waits.
pub const DEFAULT_IN_FLIGHT: usize = 64;
/// Default of `limits.per_task.upstream_connections`: half of `in_flight`, so one task holds
/// at most 32 descriptors toward upstreams (a browser opens 6 per host; package managers 16).
pub const DEFAULT_UPSTREAM_CONNECTIONS: usize = 32;
/// Default of `limits.per_connection.h2_streams`: the value RFC 9113 §6.5.2 recommends as a
/// minimum and that most HTTP/2 servers advertise.
pub const DEFAULT_H2_STREAMS: u32 = 100;

/// `limits:`: fair use of keyswap among tasks (see the `task_busy` reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub per_task: TaskLimits,
    pub per_connection: ConnectionLimits,
}

/// `limits.per_task:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskLimits {
    /// Upstream connections, tunnels and WebSockets one task may hold at once.
    pub upstream_connections: usize,
    /// Requests of one task between decision and the end of their response.
    pub in_flight: usize,
}

/// `limits.per_connection:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS` toward agents.
    pub h2_streams: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            per_task: TaskLimits {
                upstream_connections: DEFAULT_UPSTREAM_CONNECTIONS,
                in_flight: DEFAULT_IN_FLIGHT,
            },
            per_connection: ConnectionLimits {
                h2_streams: DEFAULT_H2_STREAMS,
            },
        }
    }
}

/// What a request that no rule allows gets (`on_unlisted:`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnUnlisted {
    /// Refused (`host_not_allowed` / `route_not_allowed`).
    #[default]
    Deny,
    /// Held until a human answers or `approval.timeout` passes.
    Ask,
    /// Forwarded with no secret swapped (a placeholder goes upstream as the placeholder) and
    /// recorded as `learned`, for `keyswap learn` to turn into rules.
    Learn,
}

/// `approve:` of a rule: how often a human must say yes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Approve {
    /// Every request the rule matches.
    Each,
    /// The first request per task; later ones pass once a human said yes.
    Once,
}

impl Approve {
    pub fn as_str(self) -> &'static str {
        match self {
            Approve::Each => "each",
            Approve::Once => "once",
        }
    }
}

/// Default lifetime of a task issued from a policy that sets no `ttl`.
pub const DEFAULT_POLICY_TTL: Duration = Duration::from_secs(3600);
/// Default cap on a task's lifetime when a policy sets no `max_ttl`.
pub const DEFAULT_POLICY_MAX_TTL: Duration = Duration::from_secs(24 * 3600);

/// A named allowlist (`policies.NAME`) that tasks are issued from at runtime, and that a
/// static task may name with `policy:`.
#[derive(Debug, Clone)]
pub struct Policy {
    pub name: String,
    /// Lifetime of a task issued without an explicit TTL.
    pub ttl: Duration,
    /// The longest TTL a task issued from this policy may ask for (`ttl <= max_ttl`).
    pub max_ttl: Duration,
    /// What a request no rule allows gets: refused, held for a human, or forwarded without
    /// secrets and recorded (`on_unlisted`).
    pub on_unlisted: OnUnlisted,
    pub rules: Vec<Rule>,
    /// `requestable:`: what its tasks' agents may ask for at runtime.
    pub requestable: Vec<crate::requestable::Requestable>,
    /// `github:` / `oauth2:`: what lease secrets mint for this policy's tasks.
    pub lease_scope: crate::lease_sources::LeaseScope,
}

impl Policy {
    /// The TTL a task gets when `requested` is asked for: the default when `None`, an error
    /// when above `max_ttl` or zero.
    pub fn ttl_for(&self, requested: Option<Duration>) -> Result<Duration, TtlError> {
        match requested {
            None => Ok(self.ttl),
            Some(ttl) if ttl.is_zero() => Err(TtlError::Zero),
            Some(ttl) if ttl > self.max_ttl => Err(TtlError::AboveMax {
                requested: ttl,
                max: self.max_ttl,
            }),
            Some(ttl) => Ok(ttl),
        }
    }

    /// Secrets some rule of this policy grants, in config order.
    pub fn granted_secrets(&self) -> Vec<SecretId> {
        granted_secrets(&self.rules)
    }
}

/// Why a requested TTL was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TtlError {
    #[error("the TTL must be longer than zero")]
    Zero,
    #[error("the TTL {} is above the policy's max_ttl {}", humantime::format_duration(*.requested), humantime::format_duration(*.max))]
    AboveMax { requested: Duration, max: Duration },
}

/// Every secret granted by some rule in `rules`, sorted, without repeats.
pub fn granted_secrets(rules: &[Rule]) -> Vec<SecretId> {
    let mut ids: Vec<SecretId> = rules
        .iter()
        .flat_map(|r| r.secrets.iter().copied())
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

/// `sandbox:`: the operator's additions to `keyswap exec`'s sandbox, as written. The plan
/// the sandbox runs on is [`crate::sandbox::sandbox_plan_paths`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sandbox {
    /// More paths the command must not see.
    pub hide: Vec<SandboxPath>,
    /// Paths taken out of the default list of credential stores (never out of what keyswap
    /// always hides).
    pub expose: Vec<SandboxPath>,
    /// Paths the command may read but not change.
    pub read_only: Vec<SandboxPath>,
}

/// A path of `sandbox:`. `~/` stays symbolic here: it means the home of the user the command
/// runs as (`exec --user` may name another one), known only when exec builds its plan.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SandboxPath {
    /// Absolute, or relative to the working directory, like every other path of the config.
    Path(PathBuf),
    /// `~/REST` (`REST` relative, empty for `~` itself): under the agent user's home.
    Home(PathBuf),
}

impl SandboxPath {
    /// The path with `~` standing for `home`.
    pub fn under_home(&self, home: &std::path::Path) -> PathBuf {
        match self {
            SandboxPath::Path(path) => path.clone(),
            SandboxPath::Home(rest) if rest.as_os_str().is_empty() => home.to_path_buf(),
            SandboxPath::Home(rest) => home.join(rest),
        }
    }
}

impl fmt::Display for SandboxPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SandboxPath::Path(path) => write!(f, "{}", path.display()),
            SandboxPath::Home(rest) if rest.as_os_str().is_empty() => f.write_str("~"),
            SandboxPath::Home(rest) => write!(f, "~/{}", rest.display()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditLog {
    Stdout,
    File(PathBuf),
}

/// `audit:`: how the audit log's hash chain is computed.
#[derive(Debug, Clone, Default)]
pub struct Audit {
    /// `key_file`: the chain is HMAC-SHA-256 under this key; `None` = plain SHA-256.
    pub key: Option<AuditKey>,
}

/// The audit chain's HMAC key and where it was read from.
#[derive(Clone)]
pub struct AuditKey {
    pub path: PathBuf,
    pub value: SecretSlice<u8>,
}

impl fmt::Debug for AuditKey {
    // The key is never formatted, even redacted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditKey")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Default)]
pub struct Upstream {
    /// Extra PEM roots (checked to exist and be readable; parsed by the proxy).
    pub extra_roots: Option<PathBuf>,
    /// `(lowercased host, port)` → address, like curl `--resolve`.
    pub resolve: HashMap<(String, u16), SocketAddr>,
    /// Dial loopback/private/link-local addresses (resolve entries are always allowed).
    pub allow_private: bool,
    /// `upstream.proxy`: the parent proxy upstream connections go through.
    pub proxy: Option<ParentProxy>,
}

/// Index of a secret in [`Config::secrets`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SecretId(pub usize);

/// A credential: the placeholder the agent holds and the real value swapped in for it.
#[derive(Clone)]
pub struct Secret {
    pub id: SecretId,
    pub name: String,
    pub placeholder: String,
    pub value: SecretString,
    /// Where the value was read from (re-read by a refresh).
    pub source: SecretSource,
    /// The variable `keyswap exec` sets to the placeholder (`env:`).
    pub env: Option<String>,
    /// Re-read the source when the value is older than this (`refresh:`); only for
    /// `from_file` and `from_command`.
    pub refresh: Option<Duration>,
    /// `headers:`: the only request headers (lower-case names) its placeholder may be
    /// swapped into, on any rule; `None` = any header.
    pub headers: Option<Vec<String>>,
    /// `aws:`: a key pair that signs requests (SigV4); then `value` is the real access key id
    /// and `placeholder` the one the agent holds.
    pub aws: Option<Arc<crate::aws::AwsKeys>>,
    /// A lease source (`github_app:`, `oauth2:`): the value is minted per task, and `value`
    /// holds a marker that is never sent. An `aws:` secret with `assume_role:` has both: its
    /// `value` stays the source key id (scrubbed; it signs only AssumeRole).
    pub lease: Option<Arc<crate::lease_sources::LeaseSource>>,
}

impl Secret {
    /// Where its values are read from (an `aws:` secret has two).
    pub fn sources(&self) -> impl Iterator<Item = &SecretSource> {
        let aws = self.aws.as_ref().map(|a| &a.secret_access_key_source);
        std::iter::once(&self.source).chain(aws)
    }

    /// The variables `keyswap exec` and `task issue` give the agent for this secret, with the
    /// placeholders (and an `aws:` secret's region) as their values.
    pub fn agent_env(&self) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = self
            .env
            .iter()
            .map(|name| (name.clone(), self.placeholder.clone()))
            .collect();
        if let Some(aws) = &self.aws {
            let key = aws.secret_access_key_placeholder.clone();
            env.push((crate::aws::SECRET_ACCESS_KEY_ENV.to_string(), key));
            if let Some(token) = &aws.session_token_placeholder {
                env.push((crate::aws::SESSION_TOKEN_ENV.to_string(), token.clone()));
            }
            for name in aws.region.iter().flat_map(|_| crate::aws::REGION_ENVS) {
                env.push((name.to_string(), aws.region.clone().unwrap_or_default()));
            }
        }
        env
    }
}

/// Where a secret's value comes from. Names a variable, a path or a command, never a value.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretSource {
    Env(String),
    File(PathBuf),
    Command(Vec<String>),
    /// Minted per task ([`Secret::lease`]).
    Lease,
}

impl fmt::Debug for SecretSource {
    // A command's arguments may carry the value or a reference to it (`printf %s VALUE`,
    // `op read op://...`): only the program and the number of arguments are shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::Env(name) => f.debug_tuple("Env").field(name).finish(),
            SecretSource::File(path) => f.debug_tuple("File").field(path).finish(),
            SecretSource::Command(argv) => f
                .debug_struct("Command")
                .field("program", &argv.first().map_or("", String::as_str))
                .field("args", &argv.len().saturating_sub(1))
                .finish(),
            SecretSource::Lease => f.write_str("Lease"),
        }
    }
}

impl fmt::Debug for Secret {
    // Written by hand so that the value can never be formatted, even redacted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secret")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("placeholder", &self.placeholder)
            .field("source", &self.source)
            .field("env", &self.env)
            .field("refresh", &self.refresh)
            .field("headers", &self.headers)
            .field("aws", &self.aws)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

/// One task: who may connect (token) until when, and what it may reach.
#[derive(Debug, Clone)]
pub struct Task {
    pub id: String,
    /// Proxy password; `None` = no password.
    pub token: Option<SecretString>,
    /// The variable the token was read from (`token_env:`): a name, never a value.
    pub token_env: Option<String>,
    pub expires: Option<SystemTime>,
    /// The policy named by `policy:`; its rules come first in `rules`.
    pub policy: Option<String>,
    /// The policy's rules (if any), then the task's own `allow:` rules, indexed in that order.
    pub rules: Vec<Rule>,
    /// The task's own `on_unlisted`, else its policy's, else `deny`.
    pub on_unlisted: OnUnlisted,
    /// The task's own `requestable:`, else its policy's.
    pub requestable: Vec<crate::requestable::Requestable>,
}

/// The outcome of matching a request against a task.
#[derive(Debug, Clone, Copy)]
pub enum RouteMatch<'a> {
    Rule(&'a Rule),
    /// No rule matches this host and port at all.
    HostNotAllowed,
    /// Some rule matches host and port, but none the method and path.
    RouteNotAllowed,
}

impl Task {
    /// Expired at `now` (a task whose `expires` is `now` is expired).
    pub fn is_expired(&self, now: SystemTime) -> bool {
        self.expires.is_some_and(|expires| now >= expires)
    }

    /// First rule whose host pattern and port match (the CONNECT-time check; decides
    /// tunnel vs intercept).
    pub fn first_rule_for_host(&self, scheme: Scheme, host: &str, port: u16) -> Option<&Rule> {
        first_rule_for_host(&self.rules, scheme, host, port)
    }

    /// First rule matching host, port, method and the already-normalised path. Tunnel rules
    /// are skipped: an intercepted request can never be served by a rule that promises no
    /// interception (they still count for `HostNotAllowed` vs `RouteNotAllowed`).
    pub fn match_route(
        &self,
        scheme: Scheme,
        host: &str,
        port: u16,
        method: &str,
        path: &str,
    ) -> RouteMatch<'_> {
        match_route(&self.rules, scheme, host, port, method, path)
    }
}

/// First rule in `rules` whose host pattern and port match.
pub fn first_rule_for_host<'r>(
    rules: &'r [Rule],
    scheme: Scheme,
    host: &str,
    port: u16,
) -> Option<&'r Rule> {
    rules
        .iter()
        .find(|rule| rule.matches_host(scheme, host, port))
}

/// First rule in `rules` matching host, port, method and the already-normalised path (see
/// [`Task::match_route`]).
pub fn match_route<'r>(
    rules: &'r [Rule],
    scheme: Scheme,
    host: &str,
    port: u16,
    method: &str,
    path: &str,
) -> RouteMatch<'r> {
    let mut host_allowed = false;
    for rule in rules
        .iter()
        .filter(|rule| rule.matches_host(scheme, host, port))
    {
        host_allowed = true;
        if !rule.tunnel && rule.matches_route(method, path) {
            return RouteMatch::Rule(rule);
        }
    }
    if host_allowed {
        RouteMatch::RouteNotAllowed
    } else {
        RouteMatch::HostNotAllowed
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// Where a rule lets placeholders be swapped. A rule without `swap_in:` swaps in headers
/// only; with `swap_in:` exactly the listed places (`[query]` means no headers). Tunnel
/// rules get `Default` (all false): nothing is swapped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SwapIn {
    pub headers: bool,
    pub query: bool,
    pub body: bool,
}

impl SwapIn {
    /// What a rule without `swap_in:` gets.
    pub const HEADERS_ONLY: SwapIn = SwapIn {
        headers: true,
        query: false,
        body: false,
    };
}

/// One entry of a task's `allow:` list.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Position in the task's allow list.
    pub index: usize,
    pub host: HostPattern,
    /// `None` = the scheme's default port (443 for https, 80 for http).
    pub port: Option<u16>,
    /// Uppercase; `None` = any. Compared case-sensitively (RFC 9110 §9.1).
    pub methods: Option<Vec<String>>,
    /// `None` = any path.
    pub paths: Option<PathPatterns>,
    pub secrets: Vec<SecretId>,
    /// CONNECT is passed through without interception; never has methods, paths, secrets
    /// or `swap_in`.
    pub tunnel: bool,
    pub swap_in: SwapIn,
    /// `headers:`: the only request headers (lower-case names) a placeholder may be swapped
    /// into on this rule; `None` = any header. A secret's own `headers:` narrows it further.
    pub headers: Option<Vec<String>>,
    /// The scheme the rule matches: `https` unless it says `scheme: http` or names port 80.
    /// A request in the other scheme never matches it, so a secret granted for HTTPS is
    /// never sent in cleartext.
    pub scheme: Scheme,
    /// `allow_cleartext: true`: an `http` rule may grant secrets.
    pub allow_cleartext: bool,
    /// `approve:`: a request this rule matches also needs a human yes; `None` = it does not.
    pub approve: Option<Approve>,
    /// What names this rule across reloads: its `id:`, or [`crate::limits::derived_rule_key`]
    /// of what it matches. A running task's budget count is kept under this key.
    pub key: Arc<str>,
    /// `budget:`: at most this many requests per task over its lifetime.
    pub budget: Option<Budget>,
    /// `rate:`: a token bucket per task and rule.
    pub rate: Option<Rate>,
}

impl Rule {
    /// The narrowest rule for a request a human approved although no rule lists it: this
    /// exact host and port in this scheme, granting no secret (matching of method and path
    /// is done by whoever holds the approval). `index` is what the audit record names.
    pub fn approved_exact(host: &str, port: u16, scheme: Scheme, index: usize) -> Rule {
        Rule {
            index,
            host: HostPattern::Exact(host.to_string()),
            port: Some(port),
            methods: None,
            paths: None,
            secrets: Vec::new(),
            tunnel: false,
            swap_in: SwapIn::HEADERS_ONLY,
            headers: None,
            scheme,
            allow_cleartext: false,
            approve: None,
            key: crate::limits::derived_rule_key(
                scheme,
                &HostPattern::Exact(host.to_string()),
                Some(port),
                None,
                None,
            ),
            budget: None,
            rate: None,
        }
    }

    pub fn matches_host(&self, scheme: Scheme, host: &str, port: u16) -> bool {
        scheme == self.scheme
            && port == self.port.unwrap_or(scheme.default_port())
            && self.host.matches(host)
    }

    /// Method (exact, case-sensitive) and normalised path.
    pub fn matches_route(&self, method: &str, path: &str) -> bool {
        let method_ok = match &self.methods {
            Some(methods) => methods.iter().any(|allowed| allowed == method),
            None => true,
        };
        method_ok
            && match &self.paths {
                Some(paths) => paths.matches(path),
                None => true,
            }
    }

    pub fn grants(&self, id: SecretId) -> bool {
        self.secrets.contains(&id)
    }

    /// Whether `secret`'s placeholder may be swapped into the request header `name`
    /// (lower-case) on this rule: only where both the rule's and the secret's `headers:`
    /// allow it (an absent list allows any header). Says nothing about whether the rule
    /// grants the secret or swaps in headers at all.
    pub fn swaps_into_header(&self, secret: &Secret, name: &str) -> bool {
        let allows = |list: &Option<Vec<String>>| {
            list.as_ref()
                .is_none_or(|names| names.iter().any(|n| n == name))
        };
        allows(&self.headers) && allows(&secret.headers)
    }
}
