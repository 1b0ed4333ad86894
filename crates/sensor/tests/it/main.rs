//! The sensor's tests, one binary: the recorded vectors (`vectors`), the
//! invariants (`properties`), and a differential run against the live
//! reference where it is present (`reference`).

#[path = "../support/trace.rs"]
mod trace;

mod properties;
mod reference;
mod vectors;
