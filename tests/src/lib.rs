//! keyswap's test harness: in-process upstream servers ([`upstream`]), clients that reach
//! them through the proxy ([`client`]), the suite's secrets and leak check ([`secrets`]) and
//! the proxy under test ([`harness`]).
//!
//! Everything runs in the test's own process on `127.0.0.1:0`. Every task the harness
//! spawns belongs to a [`Tasks`] owner and is aborted when that owner drops, so a test that
//! ends (or panics) leaves nothing running behind it.
#![forbid(unsafe_code)]

pub mod agent_user;
pub mod client;
pub mod config;
pub mod fake_git;
pub mod fake_github;
pub mod fake_oauth;
pub mod fake_server;
pub mod files;
pub mod harness;
pub mod logged_child;
pub mod moto;
pub mod netns;
pub mod output;
pub mod secrets;
pub mod tools;
pub mod upstream;

use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::task::AbortHandle;

/// Owner of a group of spawned tasks: dropping it aborts every task spawned through its
/// [`Spawner`]s, including tasks spawned later by those tasks (refused once closed).
pub struct Tasks {
    spawner: Spawner,
}

/// A cloneable handle that spawns into a [`Tasks`] group; also a hyper executor, so the
/// HTTP/2 stream tasks hyper spawns belong to the same group.
#[derive(Clone)]
pub struct Spawner {
    inner: Arc<Mutex<Group>>,
}

#[derive(Default)]
struct Group {
    closed: bool,
    handles: Vec<AbortHandle>,
}

impl Tasks {
    pub fn new() -> Tasks {
        Tasks {
            spawner: Spawner {
                inner: Arc::new(Mutex::new(Group::default())),
            },
        }
    }

    pub fn spawner(&self) -> Spawner {
        self.spawner.clone()
    }

    pub fn spawn<F>(&self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.spawner.spawn(fut);
    }
}

impl Default for Tasks {
    fn default() -> Self {
        Tasks::new()
    }
}

impl Drop for Tasks {
    fn drop(&mut self) {
        let handles = match self.spawner.inner.lock() {
            Ok(mut group) => {
                group.closed = true;
                std::mem::take(&mut group.handles)
            }
            Err(_) => return,
        };
        for handle in handles {
            handle.abort();
        }
    }
}

impl Spawner {
    pub fn spawn<F>(&self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let Ok(mut group) = self.inner.lock() else {
            return;
        };
        if group.closed {
            return;
        }
        // Forget finished tasks so a long-lived server (the bench) does not grow this list.
        group.handles.retain(|h| !h.is_finished());
        group.handles.push(tokio::spawn(fut).abort_handle());
    }
}

impl<F> hyper::rt::Executor<F> for Spawner
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        self.spawn(async move {
            fut.await;
        });
    }
}
