//! The decode stage of [`super::pipeline`]: a queue of request bodies, the threads that turn
//! them into prepared images, and the CPU priority those threads run at.

use super::task::{Failure, Task};
use crate::data::image::{Prepared, Preprocess};
use axum::body::Bytes;
use serde::Serialize;
use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Condvar, Mutex, mpsc};

/// How decode threads share the CPU with the encoder (Linux; elsewhere they run at the
/// process's priority). The encoder's passes are parallel: a decode that takes a core from one
/// of its threads stalls the others at the pass's next synchronisation, so a decode at equal
/// priority costs the encoder more than its own CPU time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DecodePriority {
    /// `SCHED_IDLE`: decode only on CPU time nothing else wants (the encoder's gaps and idle
    /// cores). When other processes keep every core busy, the inference thread decodes what
    /// waits itself whenever it has nothing to run, so requests are still answered.
    Idle,
    /// Nice 19: the lowest ordinary priority.
    Low,
    /// The same priority as the encoder's threads.
    Normal,
}

impl DecodePriority {
    /// Applies the priority to the calling thread; failures (a container that forbids it) leave
    /// the thread as it was.
    fn apply_to_this_thread(self) {
        #[cfg(target_os = "linux")]
        // SAFETY: plain system calls on the calling thread (pid 0), with a valid parameter.
        unsafe {
            match self {
                DecodePriority::Idle => {
                    libc::sched_setscheduler(0, libc::SCHED_IDLE, &libc::sched_param { sched_priority: 0 });
                }
                DecodePriority::Low => {
                    // On Linux the nice value is per thread; `who` 0 is the calling thread.
                    libc::setpriority(libc::PRIO_PROCESS, 0, 19);
                }
                DecodePriority::Normal => {}
            }
        }
    }
}

/// The decode stage: how many threads, at what priority.
#[derive(Debug, Clone, Copy)]
pub struct Decoding {
    /// Threads. With none, only the inference thread decodes, each time it has waited 20 ms
    /// with nothing to run (`serve` wants at least one; tests use none).
    pub threads: usize,
    pub priority: DecodePriority,
}

/// Decode threads when not told: one per core, so that idle-priority decoding can fill every
/// core the encoder leaves.
pub fn default_decode_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Request bodies waiting to be decoded. Unlike a channel behind a lock, a thread waiting here
/// does not hold the lock, so the inference thread can take bodies too.
#[derive(Default)]
pub(super) struct Bodies {
    state: Mutex<(VecDeque<Task<Bytes>>, bool)>,
    added: Condvar,
}

impl Bodies {
    /// Queues a body; gives it back once the queue is closed.
    pub fn push(&self, task: Task<Bytes>) -> Result<(), Task<Bytes>> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.1 {
            return Err(task);
        }
        state.0.push_back(task);
        drop(state);
        self.added.notify_one();
        Ok(())
    }

    /// The oldest body, waiting for one; `None` once the queue is closed and empty.
    fn pop(&self) -> Option<Task<Bytes>> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(task) = state.0.pop_front() {
                return Some(task);
            }
            if state.1 {
                return None;
            }
            state = self.added.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// The oldest body, if one waits.
    pub fn try_pop(&self) -> Option<Task<Bytes>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).0.pop_front()
    }

    /// Whether the queue is closed and empty.
    pub fn finished(&self) -> bool {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.1 && state.0.is_empty()
    }

    /// Takes no more bodies; the decode threads finish those queued, then stop.
    pub fn close(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).1 = true;
        self.added.notify_all();
    }
}

/// A decode thread: sets its priority, then decodes bodies until the queue closes, passing each
/// image on to the inference thread.
pub(super) fn decode_loop(bodies: &Bodies, pre: Preprocess, priority: DecodePriority, jobs: &mpsc::Sender<Task<Prepared>>) {
    priority.apply_to_this_thread();
    while let Some(task) = bodies.pop() {
        if let Some(job) = decode(task, pre)
            && let Err(mpsc::SendError(job)) = jobs.send(job)
        {
            job.fail(Failure::Stopped);
        }
    }
}

/// Decodes a request's body; answers it with the error if that fails. `None` as well when its
/// client has gone.
pub(super) fn decode(task: Task<Bytes>, pre: Preprocess) -> Option<Task<Prepared>> {
    if !task.wanted() {
        return None;
    }
    match catch_unwind(AssertUnwindSafe(|| pre.prepare(&task.item, "request body"))) {
        Ok(Ok(image)) => return Some(Task { item: image, k: task.k, reply: task.reply }),
        Ok(Err(e)) => task.fail(Failure::BadImage(format!("{e:#}"))),
        Err(_) => task.fail(Failure::Internal("the image decoder panicked".into())),
    }
    None
}
