//! The seccomp filter installed on the command (inherited by everything it starts):
//! - `ioctl(TIOCSTI)` would push keystrokes into the user's terminal, which the shell that
//!   started exec reads once the command ends; `TIOCLINUX` does the same on a virtual console.
//! - `add_key`, `request_key`, `keyctl`: the kernel keyrings of the user (session and user
//!   keyrings can hold credentials that tools such as `keyctl`, Kerberos or ecryptfs stored).
//!
//! Each fails with `EPERM`; everything else is allowed (the namespaces do the rest). The
//! ioctl request is compared on its low 32 bits, as the kernel reads it, so setting high bits
//! does not slip past.

use std::collections::BTreeMap;

use nix::errno::Errno;
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use crate::helper::Failure;
use crate::Stage;

fn fail(what: impl std::fmt::Display) -> Failure {
    Failure::new(Stage::Seccomp, Errno::UnknownErrno, &what.to_string())
}

/// Built before forking the command, installed in it with [`install`].
pub fn build() -> Result<BpfProgram, Failure> {
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(fail)?;
    let request = |value: u64| -> Result<SeccompRule, Failure> {
        let condition = SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value)
            .map_err(fail)?;
        SeccompRule::new(vec![condition]).map_err(fail)
    };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    // The request constants are c_ulong on glibc and c_int on musl.
    #[allow(clippy::unnecessary_cast)]
    rules.insert(
        libc::SYS_ioctl,
        vec![
            request(libc::TIOCSTI as u64)?,
            request(libc::TIOCLINUX as u64)?,
        ],
    );
    for call in [libc::SYS_add_key, libc::SYS_request_key, libc::SYS_keyctl] {
        // No condition: every call matches.
        rules.insert(call, Vec::new());
    }
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .map_err(fail)?;
    filter.try_into().map_err(fail)
}

/// `no_new_privs` (a setuid program cannot gain privileges, and an unprivileged process may
/// install a filter), then the filter.
pub fn install(program: &BpfProgram) -> Result<(), Failure> {
    nix::sys::prctl::set_no_new_privs()
        .map_err(|e| Failure::new(Stage::Seccomp, e, "PR_SET_NO_NEW_PRIVS"))?;
    seccompiler::apply_filter(program).map_err(fail)
}
