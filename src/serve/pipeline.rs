//! The work behind `POST /predict`, off the async runtime: a fixed pool of decode threads turns
//! request bodies into prepared images and queues them for one inference thread, which owns the
//! model and runs the encoder and heads on whatever images are ready.
//!
//! The two stages overlap. The inference thread takes every image already decoded (at most
//! `max_batch`) as one forward pass, without waiting, and answers as soon as the pass ends; the
//! clients it answered send their next requests, which are decoded while the images queued
//! behind them run. With more clients than `max_batch` the encoder thus goes from batch to batch
//! without idling, instead of all clients waiting on one batch and then all being decoded while
//! the encoder waits. Only when nothing is queued does it wait up to `batch_wait` for a burst to
//! gather. Requests whose client gave up (past the timeout) are dropped before decoding and
//! before inference, so they cost no encoder time.
//!
//! The decode threads run at idle CPU priority by default ([`super::decode::DecodePriority`]), so
//! they use only the CPU time the encoder leaves. Should they get none, because other processes
//! keep every core busy, the inference thread decodes the waiting bodies itself whenever it has
//! waited 20 ms with nothing to run.
//!
//! The inference thread keeps counters ([`Stats`], `GET /stats`): passes, images, and where its
//! time went (each stage of the model's passes, and waiting for decoded images).

pub use super::classify::{Classified, Classify};
use super::decode::{Bodies, Decoding, decode, decode_loop};
use super::task::Task;
pub use super::task::{Answer, Failure};
use crate::data::image::{Prepared, Preprocess};
use anyhow::Result;
use axum::body::Bytes;
use serde::Serialize;
use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// How long the idle inference thread waits for a decoded image before it decodes a waiting
/// body itself (decode threads at idle priority get no CPU while other processes keep every
/// core busy).
const STARVED: Duration = Duration::from_millis(20);

/// What the inference thread has done since the server started (`GET /stats`); the difference
/// of two readings describes the time between them.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    /// Forward passes run, and the images in them.
    pub passes: u64,
    pub images: u64,
    /// Seconds in forward passes, in all and by the model's stages (`encoder`, `heads`).
    pub pass_s: f64,
    pub stages_s: BTreeMap<&'static str, f64>,
    /// Seconds waiting for decoded images, including decoding bodies itself when starved.
    pub waiting_s: f64,
    /// Bodies the inference thread decoded itself because no decode thread got to them.
    pub decoded_inline: u64,
}

/// How the inference thread groups queued images into forward passes.
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    /// Most images per forward pass.
    pub max_batch: usize,
    /// How long an idle inference thread, woken by one image, waits for more to join it.
    pub wait: Duration,
}

/// The running stages. Cloning shares them; they stop when the last clone is dropped.
#[derive(Clone)]
pub struct Pipeline {
    bodies: Arc<Closer>,
    stats: Arc<Mutex<Stats>>,
}

/// Closes the body queue when the last [`Pipeline`] goes.
struct Closer(Arc<Bodies>);

impl Drop for Closer {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// What the inference thread works from: decoded images, and the bodies it may decode itself.
struct Stages {
    queued: mpsc::Receiver<Task<Prepared>>,
    /// Keeps `queued` open whatever the decode threads do: the thread stops when `bodies` is
    /// closed and drained.
    _open: mpsc::Sender<Task<Prepared>>,
    bodies: Arc<Bodies>,
    pre: Preprocess,
    batching: Batching,
    stats: Arc<Mutex<Stats>>,
}

impl Pipeline {
    /// Starts the inference thread, which calls `load` and keeps the model it returns (the model
    /// never leaves that thread), and the decode threads, with the preprocessing `load` reports.
    /// Returns once `load` has finished, with its other result.
    pub fn start<M, T>(load: impl FnOnce() -> Result<(M, Preprocess, T)> + Send + 'static, batching: Batching, decoding: Decoding) -> Result<(Pipeline, T)>
    where
        M: Classify + 'static,
        T: Send + 'static,
    {
        let (jobs, queued) = mpsc::channel::<Task<Prepared>>();
        let bodies = Arc::new(Bodies::default());
        let (ready_tx, ready) = mpsc::channel();
        let stats = Arc::new(Mutex::new(Stats::default()));
        let (shared, own, counters) = (bodies.clone(), jobs.clone(), stats.clone());
        std::thread::Builder::new().name("marnet-infer".into()).spawn(move || match load() {
            Ok((model, pre, extra)) => {
                let _ = ready_tx.send(Ok((pre, extra)));
                inference_loop(&model, &Stages { queued, _open: own, bodies: shared, pre, batching, stats: counters });
            }
            Err(e) => {
                let _ = ready_tx.send(Err(e));
            }
        })?;
        let (pre, extra) = ready.recv().map_err(|_| anyhow::anyhow!("the inference thread died while loading"))??;
        // Made first, so that a failure below stops the inference thread again.
        let pipeline = Pipeline { bodies: Arc::new(Closer(bodies.clone())), stats };
        for i in 0..decoding.threads {
            let (bodies, jobs) = (bodies.clone(), jobs.clone());
            std::thread::Builder::new().name(format!("marnet-decode-{i}")).spawn(move || decode_loop(&bodies, pre, decoding.priority, &jobs))?;
        }
        Ok((pipeline, extra))
    }

    /// Queues an image's bytes; resolves to its `k` best classes. Never blocks: the number of
    /// requests in flight is bounded by the server's connection limit.
    pub fn submit(&self, bytes: Bytes, k: usize) -> impl Future<Output = Answer> + use<> {
        let (reply, answer) = oneshot::channel();
        let queued = self.bodies.0.push(Task { item: bytes, k, reply });
        async move {
            match queued {
                Ok(()) => answer.await.unwrap_or(Err(Failure::Stopped)),
                Err(_) => Err(Failure::Stopped),
            }
        }
    }

    /// The inference thread's counters so far.
    pub fn stats(&self) -> Stats {
        self.stats.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The inference thread: one forward pass per batch until the pipeline is dropped.
fn inference_loop(model: &impl Classify, stages: &Stages) {
    let mut waiting = Instant::now();
    while let Some(batch) = next_batch(stages) {
        let k = batch.iter().map(|t| t.k).max().unwrap_or(1);
        let images: Vec<&Prepared> = batch.iter().map(|t| &t.item).collect();
        let start = Instant::now();
        let result = catch_unwind(AssertUnwindSafe(|| model.top_k(&images, k)));
        {
            let mut stats = stages.stats.lock().unwrap_or_else(|e| e.into_inner());
            stats.passes += 1;
            stats.images += images.len() as u64;
            stats.waiting_s += (start - waiting).as_secs_f64();
            stats.pass_s += start.elapsed().as_secs_f64();
            if let Ok(Ok(c)) = &result {
                for (name, t) in &c.stages {
                    *stats.stages_s.entry(name).or_default() += t.as_secs_f64();
                }
            }
        }
        waiting = Instant::now();
        match result {
            Ok(Ok(Classified { tops, .. })) => {
                for (task, mut top) in batch.into_iter().zip(tops) {
                    top.truncate(task.k);
                    let _ = task.reply.send(Ok(top));
                }
            }
            Ok(Err(e)) => batch.into_iter().for_each(|t| t.fail(Failure::Internal(format!("inference failed: {e:#}")))),
            Err(_) => batch.into_iter().for_each(|t| t.fail(Failure::Internal("inference panicked".into()))),
        }
    }
}

/// The next forward pass's images, leaving out those nobody waits for: every one already queued
/// (up to `max_batch`) at once; if none is, the first to arrive and those that follow it within
/// `wait`. `None` once the pipeline has been dropped and every body taken.
fn next_batch(stages: &Stages) -> Option<Vec<Task<Prepared>>> {
    let (queued, max) = (&stages.queued, stages.batching.max_batch.max(1));
    let mut batch = Vec::with_capacity(max);
    while batch.len() < max {
        match queued.try_recv() {
            Ok(t) if t.wanted() => batch.push(t),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    if !batch.is_empty() {
        return Some(batch);
    }
    // Idle: waiting costs the encoder nothing now, and lets a burst share one pass.
    while batch.is_empty() {
        match queued.recv_timeout(STARVED) {
            Ok(t) if t.wanted() => batch.push(t),
            Ok(_) => {}
            // Bodies that wait this long find no decode thread with CPU time (other processes
            // keep every core busy, or there are none): decode them here.
            Err(mpsc::RecvTimeoutError::Timeout) => {
                while batch.len() < max
                    && let Some(body) = stages.bodies.try_pop()
                {
                    batch.extend(decode(body, stages.pre));
                    stages.stats.lock().unwrap_or_else(|e| e.into_inner()).decoded_inline += 1;
                }
                if batch.is_empty() && stages.bodies.finished() {
                    return None;
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => unreachable!("`Stages` holds a sender"),
        }
    }
    let deadline = Instant::now() + stages.batching.wait;
    while batch.len() < max {
        match queued.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(t) if t.wanted() => batch.push(t),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    Some(batch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::ClassProb;
    use crate::serve::decode::DecodePriority;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Stands in for the model: each image's class is its content key modulo 1,000 (so an
    /// answer follows its image whatever the batch); records batch sizes; takes `delay` per pass.
    struct Fake {
        batches: Arc<Mutex<Vec<usize>>>,
        delay: Duration,
    }

    impl Classify for Fake {
        fn top_k(&self, images: &[&Prepared], k: usize) -> Result<Classified> {
            self.batches.lock().unwrap().push(images.len());
            std::thread::sleep(self.delay);
            Ok(Classified { tops: images.iter().map(|p| vec![answer(p.key); k]).collect(), stages: vec![("sleep", self.delay)] })
        }
    }

    fn answer(key: u64) -> ClassProb {
        ClassProb { class: "c".into(), index: (key % 1000) as usize, prob: 1.0 }
    }

    const PRE: Preprocess = Preprocess { size: 2, mean: [0.0; 3], std: [1.0; 3], resize: None };

    /// A distinct tiny PNG per `i`.
    fn png(i: u32) -> Bytes {
        let img = image::RgbImage::from_fn(3, 3, |x, y| image::Rgb([i as u8, (i >> 8) as u8, (x + 3 * y) as u8]));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        Bytes::from(out.into_inner())
    }

    fn start(max_batch: usize, wait: Duration, delay: Duration, threads: usize) -> (Pipeline, Arc<Mutex<Vec<usize>>>) {
        let batches = Arc::new(Mutex::new(vec![]));
        let fake = Fake { batches: batches.clone(), delay };
        let decoding = Decoding { threads, priority: DecodePriority::Normal };
        let (p, ()) = Pipeline::start(move || Ok((fake, PRE, ())), Batching { max_batch, wait }, decoding).unwrap();
        (p, batches)
    }

    fn block_on<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
    }

    /// 48 requests from 16 concurrent clients: each gets its own image's answer, in batches of
    /// at most `max_batch`, as one by one; with decode threads and with none (the inference
    /// thread decodes when it has waited for images in vain, as when decode threads starve).
    #[test]
    fn concurrent_requests_get_their_own_answers() {
        for threads in [2, 0] {
            let (p, batches) = start(4, Duration::from_millis(1), Duration::from_millis(2), threads);
            let alone = block_on(p.submit(png(7), 2)).unwrap();
            assert_eq!(alone, vec![answer(crate::rng::content_key(&png(7))); 2]);
            let answers = block_on(async {
                let clients = (0..16u32).map(|c| {
                    let p = p.clone();
                    tokio::spawn(async move {
                        let mut got = vec![];
                        for r in 0..3 {
                            let i = c * 3 + r;
                            got.push((i, p.submit(png(i), 1 + (i as usize % 3)).await));
                        }
                        got
                    })
                });
                let mut all = vec![];
                for c in clients.collect::<Vec<_>>() {
                    all.extend(c.await.unwrap());
                }
                all
            });
            assert_eq!(answers.len(), 48);
            for (i, got) in answers {
                assert_eq!(got.unwrap(), vec![answer(crate::rng::content_key(&png(i))); 1 + i as usize % 3], "request {i}, {threads} decode threads");
            }
            let batches = batches.lock().unwrap();
            assert_eq!(batches.iter().sum::<usize>(), 49);
            assert!(batches.iter().all(|&b| (1..=4).contains(&b)), "{batches:?}");
            // The counters agree with the passes the model saw, and time each one's stage.
            let stats = p.stats();
            assert_eq!((stats.passes, stats.images), (batches.len() as u64, 49));
            let sleep = stats.stages_s["sleep"];
            assert!(sleep >= 0.002 * batches.len() as f64 && sleep <= stats.pass_s, "{stats:?}");
            assert!(stats.waiting_s > 0.0 && (threads > 0 || stats.decoded_inline == 49), "{stats:?}");
        }
    }

    /// Queued images never wait for `batch_wait`: with a wait far longer than the test, 10
    /// requests at once still finish in batches of at most 4.
    #[test]
    fn queued_images_run_without_waiting() {
        let (p, batches) = start(4, Duration::from_secs(60), Duration::from_millis(20), 2);
        let t0 = Instant::now();
        let pending: Vec<_> = (0..10).map(|i| p.submit(png(i), 1)).collect();
        // The first batch is gathered while idle: it fills up to 4 and goes; the rest are queued.
        for (i, f) in pending.into_iter().enumerate() {
            assert_eq!(block_on(f).unwrap()[0], answer(crate::rng::content_key(&png(i as u32))));
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", t0.elapsed());
        assert_eq!(batches.lock().unwrap().iter().sum::<usize>(), 10);
    }

    /// Requests whose client has gone (its future dropped, as past the timeout) are not run.
    #[test]
    fn abandoned_requests_are_skipped() {
        static PASSES: AtomicUsize = AtomicUsize::new(0);
        struct Gate(Mutex<mpsc::Receiver<()>>);
        impl Classify for Gate {
            fn top_k(&self, images: &[&Prepared], k: usize) -> Result<Classified> {
                PASSES.fetch_add(images.len(), Ordering::SeqCst);
                self.0.lock().unwrap().recv()?;
                Ok(Classified { tops: images.iter().map(|p| vec![answer(p.key); k]).collect(), stages: vec![] })
            }
        }
        let (open, gate) = mpsc::channel();
        let (p, ()) = Pipeline::start(
            move || Ok((Gate(Mutex::new(gate)), PRE, ())),
            Batching { max_batch: 8, wait: Duration::ZERO },
            Decoding { threads: 1, priority: DecodePriority::Normal },
        )
        .unwrap();
        let first = p.submit(png(0), 1);
        let first = std::thread::spawn(move || block_on(first));
        while PASSES.load(Ordering::SeqCst) == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        // The model is busy with the first image: these are queued, then abandoned.
        drop((1..6).map(|i| p.submit(png(i), 1)).collect::<Vec<_>>());
        let last = p.submit(png(9), 1);
        open.send(()).unwrap();
        open.send(()).unwrap();
        assert!(first.join().unwrap().is_ok());
        assert_eq!(block_on(last).unwrap()[0], answer(crate::rng::content_key(&png(9))));
        assert_eq!(PASSES.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn unreadable_images_fail_alone() {
        let (p, _) = start(8, Duration::from_millis(50), Duration::ZERO, 1);
        let (bad, good) = (p.submit(Bytes::from_static(b"\x89PNG\r\n\x1a\nthen garbage"), 1), p.submit(png(3), 1));
        assert!(matches!(block_on(bad), Err(Failure::BadImage(e)) if e.contains("cannot decode image")));
        assert!(block_on(good).is_ok());
    }
}
