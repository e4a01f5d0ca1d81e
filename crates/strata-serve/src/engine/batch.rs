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

#[allow(clippy::too_many_lines)]
fn run(engine: &Engine, shared: &Shared, cfg: BatchConfig, metrics: &Metrics) {
    let mut running: Vec<Running> = Vec::new();
    let mut kv_used = 0usize;
    let mut work = BatchWork::default();
    let mut prefix = PrefixCache::new(cfg.prefix_cache);
    loop {
        {
            let mut q = shared.queue.lock().unwrap_or_else(PoisonError::into_inner);
            loop {
                // admit in order while the batch and the KV budget have room
                while running.len() < cfg.max_batch && !q.paused {
                    let Some((job, _)) = q.waiting.front() else {
                        break;
                    };
                    let kv = kv_of(engine, &job.seq);
                    if kv_used + kv > cfg.kv_budget && !running.is_empty() {
                        break;
                    }
                    let (mut job, submitted) = q.waiting.pop_front().expect("front exists");
                    let cached = prefix.reuse(&mut job.seq, job.adapters.as_ref());
                    if cached > 0 {
                        metrics.prompt_cached(&engine.name, cached);
                    }
                    kv_used += kv;
                    running.push(Running {
                        job,
                        kv,
                        submitted,
                        last: None,
                    });
                }
                q.running = running.len();
                metrics.set_queue(&engine.name, q.waiting.len(), running.len());
                if !running.is_empty() {
                    break;
                }
                if q.stopping && q.waiting.is_empty() {
                    return;
                }
                q = shared.wake.wait(q).unwrap_or_else(PoisonError::into_inner);
            }
        }
        // clients that went away leave now
        running.retain(|r| {
            let gone = r.job.events.is_closed();
            if gone {
                kv_used -= r.kv;
                metrics.cancelled(&engine.name);
            }
            !gone
        });
        if running.is_empty() {
            continue;
        }
        // decoding sequences take one token each; prefilling ones share the chunk budget, oldest first
        let mut budget = cfg.prefill_chunk;
        let mut inputs: Vec<(usize, Vec<u32>)> = Vec::with_capacity(running.len());
        for (i, r) in running.iter().enumerate() {
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
        let mut k = 0;
        let mut seqs: Vec<Seq<'_>> = Vec::with_capacity(inputs.len());
        for (i, r) in running.iter_mut().enumerate() {
            if k < inputs.len() && inputs[k].0 == i {
                seqs.push(Seq {
                    ids: &inputs[k].1,
                    cache: &mut r.job.seq.cache,
                    delta: r.job.adapters.as_ref(),
                });
                k += 1;
            }
        }
        let result = engine.model.forward_batch(&mut seqs, &mut work);
        drop(seqs);
        let logits = match result {
            Ok(l) => l,
            Err(e) => {
                for (i, _) in inputs.iter().rev() {
                    let r = running.remove(*i);
                    kv_used -= r.kv;
                    let _ = r.job.events.send(Event::Error(e.to_string()));
                }
                continue;
            }
        };
        let v = logits.len() / inputs.len();
        let now = Instant::now();
        let mut done = Vec::new();
        let mut logits = logits;
        for (k, (i, ids)) in inputs.iter().enumerate() {
            let r = &mut running[*i];
            let prefilling = r.job.seq.is_prefilling();
            let out = r
                .job
                .seq
                .advance(ids.len(), &mut logits[k * v..(k + 1) * v], engine);
            if prefilling && r.job.seq.is_prefilling() {
                continue; // more prompt to go
            }
            if prefilling {
                prefix.insert(&engine.model, &r.job.seq, r.job.adapters.as_ref());
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
            let r = running.remove(i);
            kv_used -= r.kv;
            let g = r.job.seq.generation();
            metrics.finished(&engine.name, g.prompt_tokens, g.completion_tokens);
            let _ = r.job.events.send(Event::Done(g));
        }
    }
}
