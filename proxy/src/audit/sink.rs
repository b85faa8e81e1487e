//! Where audit records go: the [`AuditSink`] trait, the seam between the code that makes
//! records and the place that keeps them, and [`FileSink`], keyswap's sink today (a file, or
//! standard output, written and hash-chained by one dedicated thread).
//!
//! A new destination (a dedicated stdout sink, a socket, a collector) is a new impl of
//! [`AuditSink`]; the rest of keyswap holds an `Arc<dyn AuditSink>` in
//! [`crate::state::shared::Shared`] and never names the implementation, except where the
//! proxy starts and opens it.

mod file;
mod output;

pub use file::FileSink;

use crate::audit::record::{AuditRecord, LifecycleRecord};

/// A destination for audit records, shared by every connection.
///
/// `record` and `lifecycle` are called on the request path: an implementation must return
/// at once, never waiting on its output, and never allocate for its own bookkeeping beyond
/// what it keeps of the record. It may drop a record rather than grow without bound, and
/// counts what it dropped. The `_blocking` methods are for the operator's and the
/// lifecycle's paths (shutdown, `SIGHUP`, tests) and may wait.
///
/// Records hold secret names and query keys, never a value; an implementation writes them
/// as they are and adds nothing from the request.
pub trait AuditSink: Send + Sync {
    /// Queues one request's record.
    fn record(&self, record: AuditRecord);

    /// Queues one lifecycle record (a task issued or revoked, a secret refreshed).
    fn lifecycle(&self, record: LifecycleRecord);

    /// Waits until every record queued before this call has reached the output.
    fn flush_blocking(&self);

    /// [`AuditSink::flush_blocking`], then makes the output durable (a clean shutdown).
    fn sync_blocking(&self);

    /// Waits until what was queued before this call is written, then reopens the output if
    /// it was rotated away (`SIGHUP`, a reload through the admin API). An output that cannot be
    /// rotated ignores it.
    fn reopen_blocking(&self);

    /// Records dropped so far because the output was not keeping up.
    fn dropped(&self) -> u64;

    /// The id of the HMAC key that chains the output (`None`: unkeyed, or not chained).
    fn key_id(&self) -> Option<&str>;
}
