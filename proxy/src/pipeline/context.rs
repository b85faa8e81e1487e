//! What a connection established before its first request: who is asking (the task), where
//! to (the target), over which scheme, through which door. Every request on the connection
//! is decided and recorded against it.

use std::sync::Arc;

use http::{Method, Uri};
use keyswap_config::Scheme;

use crate::audit::record::{audit_path, query_keys, Started, Subject, Via};
use crate::state::tasks::LiveTask;
use crate::wire::target::Target;

/// What a connection already established: who is asking and where to.
#[derive(Debug, Clone)]
pub struct ConnContext {
    pub conn_id: u64,
    pub task: Arc<LiveTask>,
    pub scheme: Scheme,
    pub target: Target,
    /// The door the connection came in by (only the audit record says which).
    pub via: Via,
}

impl ConnContext {
    /// A plain-HTTP connection's context for one request: its target is the request's own.
    pub fn plain(conn_id: u64, task: Arc<LiveTask>, target: Target, via: Via) -> ConnContext {
        ConnContext {
            conn_id,
            task,
            scheme: Scheme::Http,
            target,
            via,
        }
    }

    /// The subject of a record about the connection itself (a CONNECT, a handshake).
    pub fn connection_subject(&self, started: Started) -> Subject {
        Subject::connection(
            self.conn_id,
            self.via,
            Some(self.task.name()),
            self.scheme.as_str(),
            self.target.host.clone(),
            self.target.port,
            started,
        )
    }

    /// The subject of one request on the connection: its method, its path as the audit
    /// shows it, its query's keys.
    pub fn request_subject(&self, method: &Method, uri: &Uri, started: Started) -> Subject {
        self.request_subject_with_path(method, uri, audit_path(uri.path()), started)
    }

    /// [`ConnContext::request_subject`] with the path as the audit shows it already made.
    pub fn request_subject_with_path(
        &self,
        method: &Method,
        uri: &Uri,
        path: String,
        started: Started,
    ) -> Subject {
        Subject {
            conn: self.conn_id,
            via: self.via,
            task: Some(self.task.name()),
            method: method.as_str().to_string(),
            scheme: self.scheme.as_str(),
            host: self.target.host.clone(),
            port: self.target.port,
            path: Some(path),
            query_keys: query_keys(uri.query()),
            started,
        }
    }
}
