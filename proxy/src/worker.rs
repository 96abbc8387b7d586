//! Which server worker this thread is: the server marks its threads, and per-worker state
//! (the upstream connection pools) picks its slot by it. A leaf, so that the request path
//! (upstream) does not reach up into the server for it.

use std::cell::Cell;

thread_local! {
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

/// The worker running on this thread (0 on the main thread and anywhere else).
pub fn current() -> usize {
    WORKER.with(Cell::get)
}

/// Marks this thread as worker `index`.
pub fn set_current(index: usize) {
    WORKER.with(|w| w.set(index));
}
