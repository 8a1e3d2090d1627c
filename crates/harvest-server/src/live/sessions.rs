//! The runtime that runs WebSocket sessions.
//!
//! A room's fan-out wakes every session of the room at once: ten thousand tasks in the
//! run queue. Were API requests served by the same runtime, each of their wake-ups (a
//! SQL answer, a Redis reply) would wait behind the whole round of socket writes, and a
//! pin or a payment would take as long as a fan-out. Sessions therefore run on a
//! runtime of their own; the operating system shares the CPU between its threads and
//! the HTTP runtime's, and a request wakes up on a run queue that stays short.
//!
//! A session's socket stays registered with the I/O driver of the runtime that
//! accepted it; only its task runs here.

use std::future::Future;

use parking_lot::Mutex;
use tokio::runtime::{Builder, Handle, Runtime};

/// Where WebSocket session tasks are spawned.
pub struct SessionRuntime {
    handle: Handle,
    /// The runtime itself, shut down in the background when dropped (dropping a runtime
    /// inside an async context would panic).
    owned: Mutex<Option<Runtime>>,
}

impl SessionRuntime {
    /// A runtime with `threads` workers (0: one per CPU).
    pub fn new(threads: usize) -> std::io::Result<Self> {
        let threads = match threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let runtime = Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("harvest-ws")
            .enable_all()
            .build()?;
        Ok(Self {
            handle: runtime.handle().clone(),
            owned: Mutex::new(Some(runtime)),
        })
    }

    /// Runs `session` on the session runtime.
    pub fn spawn<F>(&self, session: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.handle.spawn(session);
    }

    /// Stops the runtime: tasks still running are dropped at their next await.
    pub fn shutdown(&self) {
        if let Some(runtime) = self.owned.lock().take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for SessionRuntime {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl std::fmt::Debug for SessionRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionRuntime").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_sessions_on_its_own_threads_and_drops_inside_async_code() {
        let runtime = SessionRuntime::new(1).unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        runtime.spawn(async move {
            let name = std::thread::current().name().map(str::to_owned);
            tx.send(name).unwrap();
        });
        assert_eq!(rx.await.unwrap().as_deref(), Some("harvest-ws"));
        // Dropped inside a runtime: must not panic.
        drop(runtime);
    }
}
