//! What every proxy in the comparison is given, and the child process it runs as.
//!
//! Each proxy (keyswap, hudsucker, mitmproxy) runs as its own child process, pinned to its
//! own CPU where the machine allows, so its CPU time and memory can be read from `/proc`.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Child;

/// Files and values a proxy under test starts from. The upstream listens on
/// `localhost:PORT` (its certificate is valid for `localhost` and `127.0.0.1`); the agent
/// sends `CONNECT localhost:PORT` and `Authorization: Bearer <placeholder>`; the proxy must
/// replace the placeholder by the real value in request header values.
pub struct PeerSetup<'a> {
    /// A scratch directory for this proxy's files (config, CA copies, logs).
    pub dir: &'a Path,
    /// PEM certificate of the CA the agent trusts; the proxy mints its leaves from it.
    pub proxy_ca_cert: &'a Path,
    /// PEM (PKCS#8) ECDSA P-256 private key of that CA.
    pub proxy_ca_key: &'a Path,
    /// PEM certificate of the CA that signed the upstream's server certificate.
    pub upstream_roots: &'a Path,
    /// What the agent holds.
    pub placeholder: &'a str,
    /// Name of the environment variable (set in the bench process, inherited by the child)
    /// that holds the real value. Never put the value itself on a command line.
    pub real_env: &'a str,
    /// Pin the child to this CPU (`taskset -c N`) when set.
    pub cpu: Option<usize>,
}

/// A proxy running as a child process, accepting on `addr` when returned.
pub struct Spawned {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Spawned {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `taskset -c CPU program` when pinning, else `program`.
pub fn pinned_command(program: &Path, cpu: Option<usize>) -> std::process::Command {
    match cpu {
        Some(cpu) => {
            let mut command = std::process::Command::new("taskset");
            command.arg("-c").arg(cpu.to_string()).arg(program);
            command
        }
        None => std::process::Command::new(program),
    }
}

/// Runs this bench binary again as a child (`bench <args>`, a hidden subcommand), pinned to
/// `cpu`, and returns once it prints `listening <addr>` on its stdout.
pub fn spawn_bench_child(args: &[&std::ffi::OsStr], cpu: Option<usize>) -> anyhow::Result<Spawned> {
    use std::io::BufRead;
    let mut command = pinned_command(&std::env::current_exe()?, cpu);
    command
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped());
    let mut child = command.spawn()?;
    let addr = child.stdout.take().and_then(|stdout| {
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line).ok()?;
        line.trim().strip_prefix("listening ")?.parse().ok()
    });
    match addr {
        Some(addr) => Ok(Spawned { child, addr }),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("`bench {args:?}` did not start")
        }
    }
}
