//! keyswap's file descriptors. At start the soft `RLIMIT_NOFILE` is raised to the hard limit
//! (the default soft limit, often 1,024, is what a flood of one agent used up before), and
//! the cap on upstream connections is what that limit leaves after a reserve, so that
//! accepting a connection, refusing a request and the admin socket keep working while every
//! upstream slot is taken.

use std::sync::OnceLock;

use nix::sys::resource::{getrlimit, setrlimit, Resource, RLIM_INFINITY};

/// Descriptors kept out of the upstream cap: listeners, the admin and metrics sockets, the
/// audit log, the runtime's own, and the agent connections a refusal is answered on.
pub const RESERVE: u64 = 256;
/// The least upstream cap, whatever the limit (a tiny limit still serves a few requests).
const MIN_UPSTREAM_CAP: u64 = 16;
/// Linux refuses an infinite `RLIMIT_NOFILE` (it is bounded by `fs.nr_open`, 1,048,576 by
/// default); an infinite hard limit is raised to this.
const INFINITE_AS: u64 = 1 << 20;

/// The process's descriptor limit, raised once to the hard limit; logged at INFO the first
/// time. The limit belongs to the process, not to one proxy, hence one value per process.
pub fn raise_nofile() -> u64 {
    static RAISED: OnceLock<u64> = OnceLock::new();
    *RAISED.get_or_init(|| {
        let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
            Ok(limits) => limits,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the file descriptor limit");
                return 1024;
            }
        };
        let target = if hard == RLIM_INFINITY {
            INFINITE_AS
        } else {
            hard
        };
        let limit = if soft >= target {
            soft
        } else {
            match setrlimit(Resource::RLIMIT_NOFILE, target, hard) {
                Ok(()) => target,
                Err(e) => {
                    tracing::warn!(soft, hard, error = %e, "could not raise the file descriptor limit");
                    soft
                }
            }
        };
        tracing::info!(
            limit,
            was = soft,
            upstream_cap = upstream_cap(limit),
            "file descriptor limit"
        );
        limit
    })
}

/// The most upstream connections keyswap holds at once under a descriptor limit of
/// `nofile`: half of what the reserve leaves, since every upstream connection comes with at
/// least one agent connection's descriptor.
pub fn upstream_cap(nofile: u64) -> usize {
    let cap = (nofile.saturating_sub(RESERVE) / 2).max(MIN_UPSTREAM_CAP);
    usize::try_from(cap).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_leaves_the_reserve_and_half_for_agents() {
        assert_eq!(upstream_cap(1024), 384);
        assert_eq!(upstream_cap(65_536), 32_640);
        assert_eq!(upstream_cap(100), 16);
    }

    #[test]
    fn the_limit_is_raised_to_the_hard_limit() {
        let limit = raise_nofile();
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
        assert_eq!(soft, limit);
        assert!(soft == hard || (hard == RLIM_INFINITY && soft == INFINITE_AS));
    }
}
