//! The namespaces: the user's own identity mapped into a new user namespace, with new mount,
//! network, pid and IPC namespaces owned by it, and loopback brought up.

#![allow(unsafe_code)]

use std::os::fd::AsRawFd;

use nix::errno::Errno;
use nix::sched::{unshare, CloneFlags};
use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
use nix::unistd::{setgid, setgroups, setuid, Gid, Uid};

use crate::helper::Failure;
use crate::plan::Identity;
use crate::Stage;

/// Becomes `identity` (the helper runs as root only when exec was given `--user`).
pub fn switch_user(identity: &Identity) -> Result<(), Failure> {
    let fail = |what: &str, e: Errno| Failure::new(Stage::User, e, what);
    let groups: Vec<Gid> = identity.groups.iter().map(|g| Gid::from_raw(*g)).collect();
    setgroups(&groups).map_err(|e| fail("setgroups", e))?;
    setgid(Gid::from_raw(identity.gid)).map_err(|e| fail("setgid", e))?;
    setuid(Uid::from_raw(identity.uid)).map_err(|e| fail("setuid", e))?;
    if Uid::effective().is_root() || Uid::current().is_root() {
        return Err(Failure::new(
            Stage::User,
            Errno::EPERM,
            "still root after setuid",
        ));
    }
    // Changing uid made the process non-dumpable, which makes /proc/self/uid_map root's and
    // unwritable to the user; the helper holds nothing secret, so dumpable is safe here.
    nix::sys::prctl::set_dumpable(true).map_err(|e| fail("PR_SET_DUMPABLE", e))?;
    Ok(())
}

/// New user, mount, network, pid and IPC namespaces, the user's uid and gid mapped to
/// themselves. The next child forked is pid 1 of the new pid namespace.
pub fn enter(uid: u32, gid: u32) -> Result<(), Failure> {
    unshare(
        CloneFlags::CLONE_NEWUSER
            | CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWNET
            | CloneFlags::CLONE_NEWPID
            | CloneFlags::CLONE_NEWIPC,
    )
    .map_err(|e| Failure::new(Stage::UserNamespace, e, "unshare"))?;
    let write = |file: &str, text: String| {
        std::fs::write(format!("/proc/self/{file}"), text).map_err(|e| {
            Failure::new(
                Stage::IdMap,
                Errno::from_raw(e.raw_os_error().unwrap_or(0)),
                &format!("writing /proc/self/{file}"),
            )
        })
    };
    // An unprivileged process may map only its own ids, and only once setgroups is denied
    // (user_namespaces(7)): the command keeps the user's identity and can never gain a group.
    write("setgroups", "deny".into())?;
    write("uid_map", format!("{uid} {uid} 1\n"))?;
    write("gid_map", format!("{gid} {gid} 1\n"))?;
    Ok(())
}

/// Brings `lo` up in the (new, empty) network namespace: the listener and the command talk
/// over it, and it is the only interface there.
pub fn loopback_up() -> Result<(), Failure> {
    let fail = |e: Errno, what: &str| Failure::new(Stage::Loopback, e, what);
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| fail(e, "socket"))?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value (an empty name, no flags).
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(b"lo\0") {
        *slot = *byte as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the name from and writes the flags into `request`, which
    // lives for the call; the descriptor is open.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut request) } < 0 {
        return Err(fail(Errno::last(), "SIOCGIFFLAGS lo"));
    }
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    let flags = unsafe { request.ifr_ifru.ifru_flags };
    request.ifr_ifru.ifru_flags = flags | (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    // SAFETY: as above; SIOCSIFFLAGS only reads `request`.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS as _, &request) } < 0 {
        return Err(fail(Errno::last(), "SIOCSIFFLAGS lo"));
    }
    Ok(())
}
