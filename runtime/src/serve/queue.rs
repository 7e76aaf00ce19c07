//! The bounded queue between the HTTP handlers and the engine workers, and the registry of live
//! generations (queued or running) that `DELETE /v1/generations/{id}` and disconnects cancel.
//!
//! A [`Ticket`] moves through one of: queued -> running -> finished, queued -> cancelled, or
//! queued -> expired (its deadline passed before a worker took it; it never runs). The state is
//! one atomic, so a worker taking a ticket and a handler expiring it cannot both win.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use crate::pipeline::{Generated, Job, StepProgress};
use crate::Error;

const QUEUED: u8 = 0;
const RUNNING: u8 = 1;
const CANCELLED: u8 = 2;
const EXPIRED: u8 = 3;

/// What a ticket's owner (the HTTP handler) hears about its job, in order.
#[derive(Debug)]
pub enum Event {
    /// Jobs ahead of this one in the queue (0: next to run); sent on entry and on every change.
    Queued { position: usize },
    /// A worker took the job after it waited `queue_wait`.
    Started { queue_wait: Duration, worker: usize },
    /// One denoising step is done.
    Step(StepProgress),
    /// The graph stages are over: the image, or why not. Also sent (with
    /// [`Error::Cancelled`]) when a queued job is cancelled.
    Finished(Box<Result<Generated, Error>>),
}

/// One generation between its admission and its end.
#[derive(Debug)]
pub struct Ticket {
    pub id: String,
    pub job: Job,
    pub enqueued: Instant,
    /// The job is dropped without running when no worker has taken it by then.
    pub deadline: Instant,
    state: AtomicU8,
    cancel: AtomicBool,
    events: UnboundedSender<Event>,
}

impl Ticket {
    /// A ticket and the receiver of its events.
    pub fn new(id: String, job: Job, deadline: Instant) -> (Arc<Ticket>, UnboundedReceiver<Event>) {
        let (events, rx) = unbounded_channel();
        let ticket = Ticket {
            id,
            job,
            enqueued: Instant::now(),
            deadline,
            state: AtomicU8::new(QUEUED),
            cancel: AtomicBool::new(false),
            events,
        };
        (Arc::new(ticket), rx)
    }

    /// Sends an event; a receiver that is gone (the client left) is not an error here, the
    /// cancel flag covers it.
    pub fn send(&self, event: Event) {
        let _ = self.events.send(event);
    }

    /// Whether the job was asked to stop (checked by the worker between denoising steps).
    pub fn is_cancelled(&self) -> bool {
        self.cancel.load(Ordering::Acquire)
    }

    fn transition(&self, from: u8, to: u8) -> bool {
        self.state
            .compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

/// Why a ticket was not admitted.
#[derive(Debug)]
pub enum Refused {
    /// The queue holds `capacity` jobs already.
    Full,
    /// The server is draining.
    Closed,
    /// Another live generation has this id.
    DuplicateId,
}

#[derive(Default)]
struct Inner {
    waiting: VecDeque<Arc<Ticket>>,
    live: HashMap<String, Arc<Ticket>>,
    closed: bool,
    running: usize,
}

/// The job queue shared by the handlers (producers) and the workers (consumers).
pub struct Queue {
    inner: Mutex<Inner>,
    available: Condvar,
    capacity: usize,
}

impl Queue {
    /// A queue that holds at most `capacity` waiting jobs (running ones not counted).
    pub fn new(capacity: usize) -> Queue {
        Queue {
            inner: Mutex::new(Inner::default()),
            available: Condvar::new(),
            capacity,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a ticket: its position (jobs ahead of it), or why not.
    pub fn push(&self, ticket: Arc<Ticket>) -> Result<usize, Refused> {
        let mut inner = self.lock();
        if inner.closed {
            return Err(Refused::Closed);
        }
        if inner.waiting.len() >= self.capacity {
            return Err(Refused::Full);
        }
        if inner.live.contains_key(&ticket.id) {
            return Err(Refused::DuplicateId);
        }
        let position = inner.waiting.len();
        inner.live.insert(ticket.id.clone(), ticket.clone());
        ticket.send(Event::Queued { position });
        inner.waiting.push_back(ticket);
        drop(inner);
        self.available.notify_one();
        Ok(position)
    }

    /// Blocks until a job is there and takes it (running), or returns `None` once the queue is
    /// closed and empty. Jobs whose deadline passed are expired on the way and never run.
    pub fn pop(&self, worker: usize) -> Option<Arc<Ticket>> {
        let mut inner = self.lock();
        loop {
            while let Some(ticket) = inner.waiting.pop_front() {
                announce_positions(&inner.waiting);
                if Instant::now() >= ticket.deadline && ticket.transition(QUEUED, EXPIRED) {
                    inner.live.remove(&ticket.id);
                    // The handler's own deadline timer answers 504.
                    continue;
                }
                if !ticket.transition(QUEUED, RUNNING) {
                    continue;
                }
                inner.running += 1;
                ticket.send(Event::Started {
                    queue_wait: ticket.enqueued.elapsed(),
                    worker,
                });
                return Some(ticket);
            }
            if inner.closed {
                return None;
            }
            inner = self
                .available
                .wait(inner)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    /// A running job is over: it leaves the registry.
    pub fn finish(&self, ticket: &Ticket) {
        let mut inner = self.lock();
        inner.running = inner.running.saturating_sub(1);
        inner.live.remove(&ticket.id);
    }

    /// Asks the live job `id` to stop: a queued one leaves the queue at once (and hears
    /// [`Error::Cancelled`]), a running one stops after its current step. False when no live
    /// job has this id.
    pub fn cancel(&self, id: &str) -> bool {
        let mut inner = self.lock();
        let Some(ticket) = inner.live.get(id).cloned() else {
            return false;
        };
        ticket.cancel.store(true, Ordering::Release);
        if ticket.transition(QUEUED, CANCELLED) {
            inner.waiting.retain(|t| t.id != id);
            inner.live.remove(id);
            announce_positions(&inner.waiting);
            let steps = ticket.job.params.steps;
            ticket.send(Event::Finished(Box::new(Err(Error::Cancelled {
                step: 0,
                steps,
            }))));
        }
        true
    }

    /// The handler's deadline passed: true when the job had not started (it is dropped and never
    /// runs; a worker may have dropped it already), false when a worker already took it.
    pub fn expire(&self, ticket: &Ticket) -> bool {
        let mut inner = self.lock();
        if !ticket.transition(QUEUED, EXPIRED) {
            return ticket.state.load(Ordering::Acquire) == EXPIRED;
        }
        inner.waiting.retain(|t| t.id != ticket.id);
        inner.live.remove(&ticket.id);
        announce_positions(&inner.waiting);
        true
    }

    /// Stops admitting jobs; workers finish what is queued, then [`Queue::pop`] returns `None`.
    pub fn close(&self) {
        self.lock().closed = true;
        self.available.notify_all();
    }

    /// Cancels every live job (the drain timeout passed).
    pub fn cancel_all(&self) {
        let ids: Vec<String> = self.lock().live.keys().cloned().collect();
        for id in ids {
            self.cancel(&id);
        }
    }

    /// Jobs waiting for a worker.
    pub fn depth(&self) -> usize {
        self.lock().waiting.len()
    }

    /// Jobs queued or running.
    pub fn live(&self) -> usize {
        self.lock().live.len()
    }

    /// Jobs running on a worker.
    pub fn running(&self) -> usize {
        self.lock().running
    }
}

/// Tells every waiting job its new position.
fn announce_positions(waiting: &VecDeque<Arc<Ticket>>) {
    for (position, ticket) in waiting.iter().enumerate() {
        ticket.send(Event::Queued { position });
    }
}
