//! Which server worker this thread is: the server marks its threads, and per-worker state
//! (the upstream connection pools, [`PerWorker`] caches) picks its slot by it. A leaf, so
//! that the request path (upstream) does not reach up into the server for it.

use std::cell::Cell;
use std::sync::{Mutex, MutexGuard, PoisonError};

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

/// One `T` per server worker, each behind its own lock: a worker only ever takes its own,
/// on its own thread, so no lock or cache line is shared between CPUs on the request path.
pub struct PerWorker<T> {
    slots: Box<[Mutex<T>]>,
}

impl<T: Default> PerWorker<T> {
    pub fn new(workers: usize) -> Self {
        PerWorker {
            slots: (0..workers.max(1)).map(|_| Mutex::default()).collect(),
        }
    }
}

impl<T> PerWorker<T> {
    /// This worker's `T`.
    pub fn current(&self) -> MutexGuard<'_, T> {
        // A panic while holding it left a value that is still usable (caches, here).
        self.slots[current() % self.slots.len()]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Every worker's `T`, one after another (tests, totals).
    pub fn each(&self) -> impl Iterator<Item = MutexGuard<'_, T>> {
        self.slots.iter().map(|s| s.lock().unwrap_or_else(PoisonError::into_inner))
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}
