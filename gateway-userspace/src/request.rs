//! The contracts every feature is written against, and nothing else: the [`Phase`] trait and its
//! [`Step`]s, the per-request [`RequestCtx`] (the request's facts: ids, times, route, identity,
//! limit outcomes), the connection's facts ([`ConnInfo`], [`TlsInfo`]) and the body observers.
//!
//! This layer knows no feature, no snapshot and no worker: a phase gets its config slice and
//! long-lived handles when the pipeline is built (see `snapshot.rs`), and the request's facts
//! here. `cargo xtask layers` checks that nothing here imports upwards.

mod conn;
mod ctx;
mod fields;
mod names;
mod observe;
mod phase;

pub use conn::{ClientCert, ConnInfo, HandshakeRefusal, Proto, TlsInfo, VerifyStatus, WatchdogTimer};
pub use ctx::{Identity, Outcome, RequestCtx, SnapshotView, Timings, Usage};
pub use fields::{contains_any, httparse_value, remove_present};
pub use names::NameCache;
pub use observe::{BodyObserver, RequestObserver};
pub use phase::{Phase, Pipeline, Step};
