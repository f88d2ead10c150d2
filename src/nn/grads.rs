//! The gradients of the linear layers' weights and biases, which their backward passes hand over
//! here instead of through candle's gradient store ([`crate::nn::linear`]), and updates armed
//! to run on a parameter as soon as its gradient is complete, beside the rest of the backward
//! pass.
//!
//! An armed parameter counts its uses by linear layers in the forward pass ([`note_use`]); when
//! as many gradients have been handed over ([`hand_over`]), its update goes to the thread pool
//! and the backward pass goes on. AdamW's pass is bound by memory and the backward pass by the
//! matrix products: run side by side, the training step took 5-7% less (BENCHMARKS.md). Each
//! update gets the gradient the store would have held (the uses summed in the same order), so
//! the parameters come out the same bits either way.
//!
//! An update ([`ParamUpdate`]: AdamW's) gets a linear layer's weight gradient from its last use
//! as a job on the pool that computes one block of rows at a time and updates those rows from it,
//! beside the rest of the backward pass ([`update_by_rows`]): the gradient never goes to memory
//! as a whole (Vireo-size epochs 9-16% faster; BENCHMARKS.md, 2026-12-05, evening).
//!
//! An update must not run while another op can still read its parameter: only one whose whole
//! gradient came from linear layers in the last backward pass is armed ([`handed_over_only`]);
//! a weight also read elsewhere (tied, penalised) never is.

use crate::nn::cpu::with_f32;
use candle_core::{Result, Tensor, TensorId, Var, backprop::GradStore};
use std::collections::{HashMap, HashSet};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// A gradient given by blocks of rows: `grad(first_row, block)` writes the values of the rows
/// from `first_row` on that `block` holds.
pub type GradRows<'a> = dyn Fn(usize, &mut [f32]) + Sync + 'a;

/// What to do with a parameter and its complete gradient: the whole gradient, or for a linear
/// layer's weight, blocks of its rows as they are computed: the layer's backward pass computes
/// each block into a buffer that stays in cache and the update reads it from there
/// ([`update_by_rows`]), instead of the whole gradient going to memory and back.
pub trait ParamUpdate: Send {
    /// The update with the whole gradient.
    fn whole(&self, param: &Tensor, grad: &Tensor) -> Result<()>;
    /// The update with the gradient of `param` ([rows, cols]) by blocks of `block_rows` rows
    /// (the last one may have fewer).
    fn by_rows(&self, param: &Tensor, block_rows: usize, grad: &GradRows) -> Result<()>;
}

#[derive(Default)]
struct State {
    /// Gradients handed over and not yet collected by [`backward`], by parameter. Keyed by
    /// parameter, not by thread: rayon may run another training's step on the same worker.
    pending: HashMap<TensorId, Tensor>,
    /// Armed updates, by parameter.
    armed: HashMap<TensorId, Armed>,
    /// Parameters whose gradient came from linear layers alone in the last backward pass
    /// that gave them one.
    handed_over_only: HashSet<TensorId>,
}

struct Armed {
    param: Tensor,
    uses: usize,
    update: Box<dyn ParamUpdate>,
    flight: Arc<Flight>,
}

/// The updates of one [`arm`] call that are running or done.
#[derive(Default)]
struct Flight {
    running: AtomicUsize,
    done: Mutex<HashSet<TensorId>>,
    errors: Mutex<Vec<String>>,
}

impl Flight {
    /// Records how an update that [`Flight::running`] counted ended.
    fn record(&self, id: TensorId, outcome: std::thread::Result<Result<()>>) {
        match outcome {
            Ok(Ok(())) => _ = lock(&self.done).insert(id),
            Ok(Err(e)) => lock(&self.errors).push(e.to_string()),
            Err(_) => lock(&self.errors).push("an update panicked".into()),
        }
        self.running.fetch_sub(1, Ordering::AcqRel);
    }
}

static STATE: Mutex<Option<State>> = Mutex::new(None);

fn with_state<R>(f: impl FnOnce(&mut State) -> R) -> R {
    f(lock(&STATE).get_or_insert_default())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The gradients of `loss` for `params`: `loss.backward()` plus what the linear layers' backward
/// passes handed over for their weights and biases among `params`, less those an armed update
/// has taken.
pub fn backward(loss: &Tensor, params: &[(String, Var)]) -> Result<GradStore> {
    with_state(|s| {
        for (_, p) in params {
            s.pending.remove(&p.id()); // left over from a backward pass that was never collected
        }
    });
    let mut grads = loss.backward()?;
    for (_, p) in params {
        let theirs = grads.remove(p.as_tensor());
        let ours = with_state(|s| {
            let ours = s.pending.remove(&p.id());
            match (&ours, &theirs) {
                (Some(_), None) => s.handed_over_only.insert(p.id()),
                (_, Some(_)) => s.handed_over_only.remove(&p.id()),
                (None, None) => false, // no gradient, or taken by its update
            };
            ours
        });
        let total = match (theirs, ours) {
            (Some(a), Some(b)) => (a + b)?,
            (a, b) => match a.or(b) {
                Some(g) => g,
                None => continue,
            },
        };
        grads.insert(p.as_tensor(), total);
    }
    Ok(grads)
}

/// Whether the last [`backward`] that gave `param` a gradient got all of it from linear layers:
/// then it is safe to arm (see the module's comment).
pub fn handed_over_only(param: &Tensor) -> bool {
    with_state(|s| s.handed_over_only.contains(&param.id()))
}

/// Counts a use of `param` by a linear layer's forward pass, if an update is armed for it.
pub(crate) fn note_use(param: &Tensor) {
    with_state(|s| {
        if let Some(a) = s.armed.get_mut(&param.id()) {
            a.uses += 1;
        }
    })
}

/// Adds `grad` to the pending gradient of `param` (a layer applied twice contributes twice);
/// once all its counted uses have handed theirs over, starts its armed update.
pub(crate) fn hand_over(param: &Tensor, grad: Tensor) -> Result<()> {
    let mut state = lock(&STATE);
    let s = state.get_or_insert_default();
    let total = match s.pending.remove(&param.id()) {
        Some(earlier) => (earlier + grad)?,
        None => grad,
    };
    // Starts on the last counted use's gradient; one beyond the count (a use before `arm`)
    // stops it from ever starting, and the gradients go to the store.
    let complete = s.armed.get_mut(&param.id()).is_some_and(|a| {
        a.uses = a.uses.checked_sub(1).unwrap_or(usize::MAX);
        a.uses == 0
    });
    if !complete {
        s.pending.insert(param.id(), total);
        return Ok(());
    }
    let a = s.armed.remove(&param.id()).expect("armed");
    start(state, a, move |a| a.update.whole(&a.param, &total));
    Ok(())
}

/// Runs `job` for the armed update `a`, taken out of the state that `state` locks, on the thread
/// pool; its end goes to `a`'s flight. Counted before the lock goes: a `wait` on another thread
/// must not miss it.
fn start(state: MutexGuard<'_, Option<State>>, a: Armed, job: impl FnOnce(&Armed) -> Result<()> + Send + 'static) {
    a.flight.running.fetch_add(1, Ordering::AcqRel);
    drop(state);
    rayon::spawn(move || a.flight.record(a.param.id(), catch_unwind(AssertUnwindSafe(|| job(&a)))));
}

/// Where an update by rows gets one use's part of the gradient: called with the update, it runs
/// it with the [`GradRows`] that computes that part (holding what it reads meanwhile).
pub(crate) type RowsSource = Box<dyn FnOnce(&dyn Fn(&GradRows) -> Result<()>) -> Result<()> + Send>;

/// For a linear layer's backward pass, instead of [`hand_over`]: when this use's gradient
/// completes `param`'s (its last counted use), starts its armed update on the thread pool with
/// blocks of `block_rows` rows from `source` (added to what earlier uses handed over: the same
/// bits as [`hand_over`]'s sum), and says true; otherwise does nothing and says false (the
/// caller then computes the whole gradient and hands it over).
pub(crate) fn update_by_rows(param: &Tensor, block_rows: usize, source: RowsSource) -> bool {
    let mut state = lock(&STATE);
    let s = state.get_or_insert_default();
    if s.armed.get(&param.id()).is_none_or(|a| a.uses != 1) {
        return false;
    }
    let (a, earlier) = (s.armed.remove(&param.id()).expect("armed"), s.pending.remove(&param.id()));
    start(state, a, move |a| {
        let (update, param) = (&a.update, &a.param);
        let cols = param.dims().last().copied().unwrap_or(1);
        let run = |grad: &GradRows| match &earlier {
            None => update.by_rows(param, block_rows, grad),
            Some(earlier) => {
                if earlier.dims() != param.dims() {
                    candle_core::bail!("gradient {:?} for a parameter {:?}", earlier.shape(), param.shape());
                }
                with_f32("update", earlier, |e| {
                    let sum = |first: usize, out: &mut [f32]| {
                        grad(first, out);
                        out.iter_mut().zip(&e[first * cols..]).for_each(|(g, e)| *g += *e);
                    };
                    update.by_rows(param, block_rows, &sum)
                })?
            }
        };
        source(&run)
    });
    true
}

/// Updates armed by [`arm`]; [`ArmedUpdates::finish`] waits for them. Dropped without it
/// (an error in the step), it disarms the rest and waits too.
pub struct ArmedUpdates {
    ids: Vec<TensorId>,
    flight: Arc<Flight>,
}

/// Arms `update` for each parameter: it runs, on the thread pool, once the parameter's uses by
/// linear layers counted from now on have all handed their gradients over.
pub fn arm(updates: Vec<(Tensor, Box<dyn ParamUpdate>)>) -> ArmedUpdates {
    let flight = Arc::new(Flight::default());
    let ids = updates.iter().map(|(p, _)| p.id()).collect();
    with_state(|s| {
        for (param, update) in updates {
            s.armed.insert(param.id(), Armed { param, uses: 0, update, flight: flight.clone() });
        }
    });
    ArmedUpdates { ids, flight }
}

impl ArmedUpdates {
    /// Waits for the updates that started (running the pool's other work meanwhile) and disarms
    /// the others, whose gradients [`backward`] left in its store. `grads` is that store: a
    /// parameter in it that was updated too got a gradient its update did not see (an op other
    /// than a linear layer, or a use counted before [`arm`]), which is an error.
    pub fn finish(self, grads: &GradStore) -> Result<()> {
        self.wait();
        if let Some(e) = lock(&self.flight.errors).first() {
            candle_core::bail!("parameter update: {e}");
        }
        if let Some(id) = lock(&self.flight.done).iter().find(|id| grads.get_id(**id).is_some()) {
            candle_core::bail!(
                "parameter {id:?} was updated in the backward pass but has a gradient from another op too (MARNET_UPDATE_IN_BACKWARD=0 updates after it)"
            );
        }
        Ok(())
    }

    fn wait(&self) {
        with_state(|s| {
            for id in &self.ids {
                if s.armed.get(id).is_some_and(|a| Arc::ptr_eq(&a.flight, &self.flight)) {
                    s.armed.remove(id);
                }
            }
        });
        while self.flight.running.load(Ordering::Acquire) > 0 {
            if rayon::yield_now() != Some(rayon::Yield::Executed) {
                std::thread::yield_now();
            }
        }
    }
}

impl Drop for ArmedUpdates {
    fn drop(&mut self) {
        self.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::linear::Linear;
    use crate::rng::{randn, stream};
    use candle_core::{Device, Module};

    type Seen = Arc<Mutex<Vec<(TensorId, &'static str, Vec<f32>)>>>;

    /// Records each update's parameter, how it got its gradient and its values; `fail`: refuses after.
    struct Recorder {
        seen: Seen,
        fail: bool,
    }

    impl Recorder {
        fn armed(seen: &Seen, fail: bool) -> Box<dyn ParamUpdate> {
            Box::new(Recorder { seen: seen.clone(), fail })
        }

        fn record(&self, p: &Tensor, how: &'static str, g: Vec<f32>) -> Result<()> {
            lock(&self.seen).push((p.id(), how, g));
            if self.fail { candle_core::bail!("refused") } else { Ok(()) }
        }
    }

    impl ParamUpdate for Recorder {
        fn whole(&self, p: &Tensor, g: &Tensor) -> Result<()> {
            self.record(p, "whole", g.flatten_all()?.to_vec1()?)
        }

        fn by_rows(&self, p: &Tensor, block_rows: usize, grad: &GradRows) -> Result<()> {
            let (rows, cols) = p.dims2()?;
            let mut all = vec![f32::NAN; rows * cols];
            for (i, block) in all.chunks_mut(block_rows * cols).enumerate() {
                grad(i * block_rows, block);
            }
            self.record(p, "rows", all)
        }
    }

    /// An armed update gets the parameter's whole gradient (a layer applied twice: the sum of
    /// both uses) once its last use's backward pass has run, and the store leaves it out; a
    /// layer with a use the loss ignores is left to the store; an update's error reaches `finish`.
    #[test]
    fn updates_get_whole_gradients_once() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = stream(5, "test", 0);
        let var = |rng: &mut _, shape: (usize, usize)| Var::from_tensor(&randn(rng, shape, &dev)?);
        let (w1, b1, w2, b2) =
            (var(&mut rng, (6, 5))?, Var::from_tensor(&randn(&mut rng, 5, &dev)?)?, var(&mut rng, (6, 6))?, Var::from_tensor(&randn(&mut rng, 6, &dev)?)?);
        let params: Vec<(String, Var)> = [("w1", &w1), ("b1", &b1), ("w2", &w2), ("b2", &b2)].map(|(n, v)| (n.to_string(), v.clone())).to_vec();
        let (l1, l2) = (Linear::new(w1.as_tensor().clone(), b1.as_tensor().clone()), Linear::new(w2.as_tensor().clone(), b2.as_tensor().clone()));
        let (x, r) = (randn(&mut rng, (4, 6), &dev)?, randn(&mut rng, (4, 5), &dev)?);
        // l1 on x and on l2(x); l2 once more, its output unused.
        let loss = |l1: &Linear, l2: &Linear| -> Result<Tensor> {
            let _ignored = l2.forward(&x)?;
            ((l1.forward(&x)? + l1.forward(&l2.forward(&x)?)?)? * &r)?.sum_all()
        };
        let want = backward(&loss(&l1, &l2)?, &params)?;
        let seen = Seen::default();
        let armed = arm(params.iter().map(|(_, v)| (v.as_tensor().clone(), Recorder::armed(&seen, false))).collect());
        let grads = backward(&loss(&l1, &l2)?, &params)?;
        armed.finish(&grads)?;
        let got = std::mem::take(&mut *lock(&seen));
        let ids: HashSet<TensorId> = got.iter().map(|(id, _, _)| *id).collect();
        // w1 and b1 (two uses, both in the loss) are updated once each; l2 has a use outside the
        // loss, so its update never starts and its gradients stay in the store.
        assert_eq!(ids, HashSet::from([w1.id(), b1.id()]), "updated");
        assert_eq!(got.len(), 2, "an update ran twice");
        for (id, how, g) in &got {
            assert_eq!(*how, "whole", "a weight 5 wide took its gradient by rows");
            let want = want.get_id(*id).unwrap().flatten_all()?.to_vec1::<f32>()?;
            assert_eq!(g, &want, "the update's gradient differs from the store's");
            assert!(grads.get_id(*id).is_none(), "an updated parameter is still in the store");
        }
        assert!(grads.get(w2.as_tensor()).is_some() && grads.get(b2.as_tensor()).is_some());
        // An update's error is `finish`'s.
        let armed = arm(vec![(w1.as_tensor().clone(), Recorder::armed(&seen, true))]);
        let grads = backward(&loss(&l1, &l2)?, &params)?;
        assert!(armed.finish(&grads).unwrap_err().to_string().contains("refused"));
        Ok(())
    }

    /// Linear layers hand their weights' gradients to updates that take them by rows, in blocks
    /// that make up the store's gradient bit for bit (a layer used twice: the sum of both uses;
    /// one with a tiled tail: blocks across the cut between its parts); biases, and weights in a
    /// batch too small for blocks, get whole gradients.
    #[test]
    fn updates_by_rows_get_the_stores_gradient() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = stream(7, "test", 0);
        let mut var = |shape: &[usize]| Var::from_tensor(&randn(&mut rng, shape, &dev)?);
        let [w1, b1, w2, b2, w3, b3] = [&[130, 200][..], &[200], &[200, 200], &[200], &[270, 200], &[200]].map(|s| var(s).unwrap());
        let params: Vec<(String, Var)> = [&w1, &b1, &w2, &b2, &w3, &b3].iter().enumerate().map(|(i, v)| (format!("p{i}"), (*v).clone())).collect();
        let layer = |w: &Var, b: &Var| Linear::new(w.as_tensor().clone(), b.as_tensor().clone());
        let (l1, l2, l3) = (layer(&w1, &b1), layer(&w2, &b2), layer(&w3, &b3));
        for (batch, by_rows) in [(64usize, true), (2, false)] {
            let mut rng = stream(8, "test", batch as u64);
            let (x, r) = (randn(&mut rng, (batch, 130), &dev)?, randn(&mut rng, (batch, 200), &dev)?);
            let tail = randn(&mut rng, (batch / 2, 70), &dev)?;
            // l1 once, l2 twice, then l3 with a tail of 70 inputs (blocks of 54 rows: one cut at 200).
            let loss = || (l3.forward_tiled(&l2.forward(&l2.forward(&l1.forward(&x)?)?)?, &tail)? * &r)?.sum_all();
            let want = backward(&loss()?, &params)?;
            let seen = Seen::default();
            let armed = arm(params.iter().map(|(_, v)| (v.as_tensor().clone(), Recorder::armed(&seen, false))).collect());
            let grads = backward(&loss()?, &params)?;
            armed.finish(&grads)?;
            let seen = std::mem::take(&mut *lock(&seen));
            assert_eq!(seen.len(), 6, "batch {batch}: every parameter updated once");
            for (id, how, g) in seen {
                let expected = if by_rows && [w1.id(), w2.id(), w3.id()].contains(&id) { "rows" } else { "whole" };
                assert_eq!(how, expected, "batch {batch}: parameter {id:?}");
                let want = want.get_id(id).unwrap().flatten_all()?.to_vec1::<f32>()?;
                assert!(g.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "batch {batch}: {how} gradient of {id:?} differs from the store's");
            }
        }
        // An update by rows that fails: its error is `finish`'s.
        let (x, seen) = (randn(&mut stream(9, "test", 0), (64, 130), &dev)?, Seen::default());
        let armed = arm(vec![(w1.as_tensor().clone(), Recorder::armed(&seen, true))]);
        let grads = backward(&l1.forward(&x)?.sum_all()?, &params)?;
        assert!(armed.finish(&grads).unwrap_err().to_string().contains("refused"));
        assert_eq!(lock(&seen).first().map(|s| s.1), Some("rows"));
        Ok(())
    }
}
