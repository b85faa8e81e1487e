//! The two front doors. The explicit door ([`explicit`]) reads a CONNECT or an absolute-form
//! request from an agent that set `HTTPS_PROXY`; the transparent door ([`transparent`]) reads
//! a redirected connection's original destination and SNI. Both identify the task
//! ([`identify`]) and hand the `(task, target, stream)` to the same decision
//! ([`decide_target`]); what follows is the pipeline's, which never learns which door was used
//! except to write it in the audit record's `via`. [`refusal`] delivers a refusal inside a
//! tunnel, where clients show it.
//!
//! A door never dials: the pipeline's tunnel and exchange do, through [`crate::upstream`].

pub mod accept;
pub mod decide;
pub mod explicit;
pub mod identify;
pub mod redirected;
pub mod refusal;
pub mod transparent;
