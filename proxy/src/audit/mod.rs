//! Every request ends in one [`decision::Decision`]; [`record::AuditRecord::new`] is the only
//! way a request record is made from it. [`sink::AuditSink`] is where records go (its
//! implementation, [`sink::FileSink`], writes them on their own thread), [`chain`] links each
//! line to the one before it, [`verify`] checks a file's chain. [`credential`] holds the records of credential leases.
//!
//! Records hold secret *names* and query *keys*, never a value.

pub mod chain;
pub mod credential;
pub mod decision;
pub mod record;
pub mod sink;
pub mod verify;
