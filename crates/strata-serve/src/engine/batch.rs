//! Continuous batching: one scheduler thread per loaded model runs every active sequence together. Each step
//! is one batched forward ([`CpuModel::forward_batch`]): one token for every decoding sequence plus chunks of
//! the prompts being prefilled (at most `prefill_chunk` prompt tokens a step, so a long prompt does not stall
//! the streams already running), each sequence with its own KV cache and its own adapters. Requests join
//! and leave the batch at token boundaries; the KV caches stay within a byte budget; the queue in front is
//! bounded (a full queue is refused, the HTTP layer answers 429); a sequence whose client went away is
//! dropped at the next step.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Instant;

use strata_engine::{BatchWork, LoraStack, Seq};

use super::prefix::PrefixCache;
use tokio::sync::mpsc::UnboundedSender;

use super::sequence::{Generation, Output, Sequence};
use super::Engine;
use crate::metrics::Metrics;

/// Limits of one model's scheduler.
#[derive(Debug, Clone, Copy)]
pub struct BatchConfig {
    /// Sequences in one batch.
    pub max_batch: usize,
    /// Requests waiting to join (beyond it: refused).
    pub max_queue: usize,
    /// Prompt tokens prefilled per step, across sequences.
    pub prefill_chunk: usize,
    /// Bytes of KV cache all running sequences may hold together.
    pub kv_budget: usize,
    /// Bytes of recent prompts' KV kept to spare the prefill of prompts that begin the same way (0: off).
    pub prefix_cache: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_batch: 64,
            max_queue: 256,
            prefill_chunk: 256,
            kv_budget: 4 << 30,
            prefix_cache: 64 << 20,
        }
    }
}

/// What a request's receiver gets, in order: pieces, then one `Done` (or an `Error`).
#[derive(Debug)]
pub enum Event {
    Piece(Output),
    Done(Generation),
    Error(String),
}

/// A request for the scheduler.
pub struct Job {
    pub seq: Sequence,
    pub adapters: Option<LoraStack>,
    pub events: UnboundedSender<Event>,
    /// A vision-language request's image features: the rows of its images, in the order of their image
    /// tokens in the prompt.
    pub image: Option<std::sync::Arc<Vec<f32>>>,
}

/// Why a job was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    QueueFull,
    ShuttingDown,
    /// The sequence alone needs more KV cache than the whole budget.
    TooBig,
}

struct Queue {
    waiting: VecDeque<(Job, Instant)>,
    stopping: bool,
    paused: bool,
    running: usize,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
}

/// The scheduler of one model; dropping it lets the running sequences finish, then stops the thread.
pub struct Scheduler {
    shared: Arc<Shared>,
    cfg: BatchConfig,
    engine: Arc<Engine>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct Running {
    job: Job,
    kv: usize,
    submitted: Instant,
    last: Option<Instant>,
}

impl Scheduler {
    /// Starts the scheduler thread of `engine`.
    ///
    /// # Panics
    /// When the system cannot start a thread.
    #[must_use]
    pub fn start(engine: Arc<Engine>, cfg: BatchConfig, metrics: Arc<Metrics>) -> Self {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                waiting: VecDeque::new(),
                stopping: false,
                paused: false,
                running: 0,
            }),
            wake: Condvar::new(),
        });
        let thread = {
            let (shared, engine) = (shared.clone(), engine.clone());
            std::thread::Builder::new()
                .name(format!("sched-{}", engine.name))
                .spawn(move || run(&engine, &shared, cfg, &metrics))
                .expect("spawn the scheduler thread")
        };
        Self {
            shared,
            cfg,
            engine,
            thread: Some(thread),
        }
    }

    #[must_use]
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Queues a job.
    ///
    /// # Errors
    /// When the queue is full, the server is stopping, or the job could never fit the KV budget.
    pub fn submit(&self, job: Job) -> Result<(), Rejected> {
        if kv_of(&self.engine, &job.seq) > self.cfg.kv_budget {
            return Err(Rejected::TooBig);
        }
        let mut q = self
            .shared
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if q.stopping {
            return Err(Rejected::ShuttingDown);
        }
        if q.waiting.len() >= self.cfg.max_queue {
            return Err(Rejected::QueueFull);
        }
        q.waiting.push_back((job, Instant::now()));
        drop(q);
        self.shared.wake.notify_one();
        Ok(())
    }

    /// (waiting, running) sequences.
    #[must_use]
    pub fn load(&self) -> (usize, usize) {
        let q = self
            .shared
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        (q.waiting.len(), q.running)
    }

    /// While paused, queued jobs wait and running ones go on (maintenance; tests use it to fill the queue
    /// deterministically).
    pub fn pause_admission(&self, paused: bool) {
        self.shared
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .paused = paused;
        self.shared.wake.notify_all();
    }

    /// Refuses new jobs; the queued and running ones finish.
    pub fn stop(&self) {
        self.shared
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .stopping = true;
        self.shared.wake.notify_all();
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn kv_of(engine: &Engine, seq: &Sequence) -> usize {
    Sequence::cache_bytes(&engine.model, seq.prompt_tokens() + seq.params.max_tokens)
}

/// The scheduler thread's loop: admit, drop the gone, one batched forward, deliver; until stopped.
fn run(engine: &Engine, shared: &Shared, cfg: BatchConfig, metrics: &Metrics) {
    let mut b = Batch {
        engine,
        cfg,
        metrics,
        running: Vec::new(),
        kv_used: 0,
        work: BatchWork::default(),
        prefix: PrefixCache::new(cfg.prefix_cache)
            .with_barrier(engine.vision.as_ref().map(|v| v.cfg.image_token_id)),
    };
    loop {
        if !b.admit(shared) {
            return;
        }
        b.drop_gone();
        if b.running.is_empty() {
            continue;
        }
        let inputs = b.inputs();
        if let Some(logits) = b.forward(&inputs) {
            b.deliver(&inputs, logits);
        }
    }
}

/// The running sequences of one scheduler and what their steps share.
struct Batch<'a> {
    engine: &'a Engine,
    cfg: BatchConfig,
    metrics: &'a Metrics,
    running: Vec<Running>,
    kv_used: usize,
    work: BatchWork,
    prefix: PrefixCache,
}

impl Batch<'_> {
    /// Admits waiting jobs in order while the batch and the KV budget have room; waits while there is
    /// nothing to run. False once stopping with nothing left.
    fn admit(&mut self, shared: &Shared) -> bool {
        let name = &self.engine.name;
        let mut q = shared.queue.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            while self.running.len() < self.cfg.max_batch && !q.paused {
                let Some((job, _)) = q.waiting.front() else {
                    break;
                };
                let kv = kv_of(self.engine, &job.seq);
                if self.kv_used + kv > self.cfg.kv_budget && !self.running.is_empty() {
                    break;
                }
                let Some((mut job, submitted)) = q.waiting.pop_front() else {
                    break;
                };
                let cached = self.prefix.reuse(&mut job.seq, job.adapters.as_ref());
                if cached > 0 {
                    self.metrics.prompt_cached(name, cached);
                }
                self.kv_used += kv;
                self.running.push(Running {
                    job,
                    kv,
                    submitted,
                    last: None,
                });
            }
            q.running = self.running.len();
            self.metrics
                .set_queue(name, q.waiting.len(), self.running.len());
            if !self.running.is_empty() {
                return true;
            }
            if q.stopping && q.waiting.is_empty() {
                return false;
            }
            q = shared.wake.wait(q).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Clients that went away leave now.
    fn drop_gone(&mut self) {
        let (kv_used, metrics, name) = (&mut self.kv_used, self.metrics, &self.engine.name);
        self.running.retain(|r| {
            let gone = r.job.events.is_closed();
            if gone {
                *kv_used -= r.kv;
                metrics.cancelled(name);
            }
            !gone
        });
    }

    /// This step's input of each running sequence (index, ids): decoding sequences take one token each;
    /// prefilling ones share the chunk budget, oldest first.
    fn inputs(&self) -> Vec<(usize, Vec<u32>)> {
        let mut budget = self.cfg.prefill_chunk;
        let mut inputs = Vec::with_capacity(self.running.len());
        for (i, r) in self.running.iter().enumerate() {
            if r.job.seq.is_prefilling() {
                if budget == 0 {
                    continue;
                }
                let ids = r.job.seq.next_input(budget).to_vec();
                budget -= ids.len();
                inputs.push((i, ids));
            } else {
                inputs.push((i, r.job.seq.next_input(1).to_vec()));
            }
        }
        inputs
    }

    /// One batched forward of the inputs; on failure every sequence in it ends with the error.
    fn forward(&mut self, inputs: &[(usize, Vec<u32>)]) -> Option<Vec<f32>> {
        let mut k = 0;
        let mut seqs: Vec<Seq<'_>> = Vec::with_capacity(inputs.len());
        let (token, d) = (
            self.engine.vision.as_ref().map(|v| v.cfg.image_token_id),
            self.engine.model.config().hidden_size,
        );
        for (i, r) in self.running.iter_mut().enumerate() {
            if k < inputs.len() && inputs[k].0 == i {
                // the rows of the image tokens in this chunk: after those of the tokens already fed
                let image = match (token, r.job.image.as_deref()) {
                    (Some(t), Some(rows)) => {
                        let before = r.job.seq.prompt()
                            [..r.job.seq.fed().min(r.job.seq.prompt().len())]
                            .iter()
                            .filter(|&&id| id == t)
                            .count();
                        let here = inputs[k].1.iter().filter(|&&id| id == t).count();
                        rows.get(before * d..(before + here) * d)
                            .map(|rows| strata_engine::ImageRows { token: t, rows })
                    }
                    _ => None,
                };
                seqs.push(Seq {
                    ids: &inputs[k].1,
                    cache: &mut r.job.seq.cache,
                    delta: r.job.adapters.as_ref(),
                    image,
                });
                k += 1;
            }
        }
        let result = self.engine.model.forward_batch(&mut seqs, &mut self.work);
        drop(seqs);
        match result {
            Ok(l) => Some(l),
            Err(e) => {
                for (i, _) in inputs.iter().rev() {
                    let r = self.running.remove(*i);
                    self.kv_used -= r.kv;
                    let _ = r.job.events.send(Event::Error(e.to_string()));
                }
                None
            }
        }
    }

    /// Advances each sequence by its logits, sends its new piece, and retires the finished ones.
    fn deliver(&mut self, inputs: &[(usize, Vec<u32>)], mut logits: Vec<f32>) {
        let (engine, metrics) = (self.engine, self.metrics);
        let v = logits.len() / inputs.len();
        let now = Instant::now();
        let mut done = Vec::new();
        for (k, (i, ids)) in inputs.iter().enumerate() {
            let r = &mut self.running[*i];
            let prefilling = r.job.seq.is_prefilling();
            let out = r
                .job
                .seq
                .advance(ids.len(), &mut logits[k * v..(k + 1) * v], engine);
            if prefilling && r.job.seq.is_prefilling() {
                continue; // more prompt to go
            }
            if prefilling {
                self.prefix
                    .insert(&engine.model, &r.job.seq, r.job.adapters.as_ref());
            }
            match r.last {
                None => metrics.first_token(&engine.name, now - r.submitted),
                Some(t) => metrics.next_token(&engine.name, now - t),
            }
            r.last = Some(now);
            let finished = out.finish.is_some();
            if !out.text.is_empty() || out.logprobs.is_some() || finished {
                let _ = r.job.events.send(Event::Piece(out));
            }
            if finished {
                done.push(*i);
            }
        }
        for i in done.into_iter().rev() {
            let r = self.running.remove(i);
            self.kv_used -= r.kv;
            let g = r.job.seq.generation();
            metrics.finished(&engine.name, g.prompt_tokens, g.completion_tokens);
            let _ = r.job.events.send(Event::Done(g));
        }
    }
}
