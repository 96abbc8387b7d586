//! The reconciler against a scenario-checked mock API server (kube's client over
//! `tower_test::mock::pair`): every request it sends is recorded — method, path, query and
//! body — and each test states the exact list. Reads come from the cache, so every request
//! is a write (or an Event).

mod cluster;
mod faults;
mod lifecycle;
mod support;
