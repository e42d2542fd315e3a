//! The thread behind a loaded model's handle, joined when the handle goes, so that the
//! model's memory is free by the time dropping the handle returns.

use std::thread::JoinHandle;

/// Joins its thread on drop. Declare it after the channel that feeds the thread, so the
/// channel closes (and the thread's loop ends) before the join.
pub(crate) struct JoinOnDrop(Option<JoinHandle<()>>);

impl JoinOnDrop {
    pub(crate) fn new(handle: Option<JoinHandle<()>>) -> Self {
        Self(handle)
    }
}

impl JoinOnDrop {
    /// Whether the thread is still running (a worker ends only when its handle goes, or
    /// when it panicked).
    pub(crate) fn is_running(&self) -> bool {
        self.0.as_ref().is_some_and(|h| !h.is_finished())
    }
}

impl Drop for JoinOnDrop {
    fn drop(&mut self) {
        if let Some(handle) = self.0.take()
            && handle.thread().id() != std::thread::current().id()
        {
            // A panic on the worker thread was already reported there.
            let _ = handle.join();
        }
    }
}
