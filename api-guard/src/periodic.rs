//! A job run every period on a thread of its own, until dropped: for work that
//! must not wait on the event loop (the heartbeat), or that the event loop must
//! not wait on (walks of the whole client map).

use std::{
    sync::mpsc::{self, RecvTimeoutError},
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result};

/// The running thread; dropping this stops it (after the job in progress, if
/// any) and joins it.
pub struct Periodic {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Periodic {
    /// Runs `job` every `every`, the first time after one period.
    pub fn start(
        name: &str,
        every: Duration,
        mut job: impl FnMut() + Send + 'static,
    ) -> Result<Self> {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                // Ends on the stop message or when the sender drops.
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                    job();
                }
            })
            .with_context(|| format!("cannot start the {name} thread"))?;
        Ok(Self {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Periodic {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    };

    use super::*;

    #[test]
    fn runs_until_dropped() {
        let runs = Arc::new(AtomicU32::new(0));
        let (seen, ran) = mpsc::channel();
        let counted = runs.clone();
        let p = Periodic::start("test", Duration::from_millis(1), move || {
            if counted.fetch_add(1, Ordering::SeqCst) == 2 {
                let _ = seen.send(());
            }
        })
        .unwrap();
        ran.recv().unwrap();
        drop(p);
        let after = runs.load(Ordering::SeqCst);
        assert!(after >= 3);
        thread::sleep(Duration::from_millis(5));
        assert_eq!(runs.load(Ordering::SeqCst), after, "stopped when dropped");
    }
}
