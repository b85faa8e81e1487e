//! The control channel between `exec` and its helper: a `SOCK_SEQPACKET` socket pair (one
//! JSON message per packet, so no framing), which also carries the listener's descriptor
//! (`SCM_RIGHTS`).
//!
//! Nothing secret crosses it: the plan holds paths, the command, and the environment exec
//! already stripped of every credential variable (the task's proxy URL, which the agent holds
//! anyway, is the only credential in it).

#![allow(unsafe_code)]

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::plan::{Identity, StartPlan};
use crate::Stage;

/// The largest message: a plan with a large environment still fits many times over.
const MAX_MESSAGE: usize = 4 << 20;

#[derive(Debug, Serialize, Deserialize)]
pub enum ToHelper {
    /// Create the namespaces and the listener (as `identity` when given).
    Prepare { identity: Option<Identity> },
    /// Hide, mount, and start the command.
    Start(Box<StartPlan>),
}

#[derive(Debug, Serialize, Deserialize)]
pub enum FromHelper {
    /// The listener's descriptor travels with this message.
    Listening {
        port: u16,
    },
    Started,
    Failed {
        stage: Stage,
        errno: i32,
        detail: String,
    },
}

/// Both ends close on exec; [`inherit_in_child`] keeps the helper's end open across its exec.
pub fn pair() -> io::Result<(OwnedFd, OwnedFd)> {
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(io::Error::from)
}

/// Makes `fd` survive the `execve` of `command` (and nothing else's).
pub fn inherit_in_child(command: &mut tokio::process::Command, fd: &OwnedFd) {
    let raw = fd.as_raw_fd();
    // SAFETY: the closure runs in the forked child before execve and only calls fcntl, which
    // is async-signal-safe; it touches no memory of the parent.
    unsafe {
        command.pre_exec(move || {
            nix::fcntl::fcntl(
                BorrowedFd::borrow_raw(raw),
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
            )
            .map(|_| ())
            .map_err(io::Error::from)
        });
    }
}

/// Takes ownership of the inherited descriptor number `raw` (the helper's first act).
///
/// # Safety
/// `raw` must be an open descriptor that nothing else in this process owns.
pub unsafe fn adopt(raw: RawFd) -> OwnedFd {
    // SAFETY: guaranteed by the caller.
    unsafe { OwnedFd::from_raw_fd(raw) }
}

pub fn send<T: Serialize>(
    fd: &OwnedFd,
    message: &T,
    pass: Option<BorrowedFd<'_>>,
) -> io::Result<()> {
    let bytes = serde_json::to_vec(message).map_err(io::Error::other)?;
    let iov = [IoSlice::new(&bytes)];
    let fds: Vec<RawFd> = pass.iter().map(|fd| fd.as_raw_fd()).collect();
    let cmsgs: Vec<ControlMessage<'_>> = match fds.is_empty() {
        true => Vec::new(),
        false => vec![ControlMessage::ScmRights(&fds)],
    };
    sendmsg::<()>(fd.as_raw_fd(), &iov, &cmsgs, MsgFlags::MSG_NOSIGNAL, None)?;
    Ok(())
}

/// One message, with the descriptor it carried; `None` when the other end has closed.
pub fn receive<T: DeserializeOwned>(fd: &OwnedFd) -> io::Result<Option<(T, Option<OwnedFd>)>> {
    let mut buffer = vec![0u8; MAX_MESSAGE];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let (len, passed) = {
        let mut iov = [IoSliceMut::new(&mut buffer)];
        let message = loop {
            match recvmsg::<()>(
                fd.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Err(nix::errno::Errno::EINTR) => continue,
                other => break other?,
            }
        };
        let mut passed = None;
        for cmsg in message.cmsgs()? {
            if let ControlMessageOwned::ScmRights(fds) = cmsg {
                for raw in fds {
                    // SAFETY: the kernel just installed this descriptor in our table for us;
                    // nothing else owns it. Extra ones are closed by dropping them.
                    let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                    passed.get_or_insert(owned);
                }
            }
        }
        if message.flags.contains(MsgFlags::MSG_TRUNC) {
            return Err(io::Error::other("control message too large"));
        }
        (message.bytes, passed)
    };
    if len == 0 {
        return Ok(None);
    }
    let value = serde_json::from_slice(&buffer[..len]).map_err(io::Error::other)?;
    Ok(Some((value, passed)))
}
