//! Engine workers: one thread per device, owning that device's graphs ([`Models`]) and running
//! the graph stages (encode, denoise, decode) of one job at a time. Preparing requests and
//! encoding PNGs happen on other threads (the HTTP side), overlapped with the denoising here.

use std::ops::ControlFlow;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crate::pipeline::{self, Generated, Job, Models};
use crate::{Error, Result};

use super::metrics::Metrics;
use super::queue::{Event, Queue, Ticket};
use super::ServerState;

/// Starts a worker thread on `models`: it runs `warmup` first (a generation whose result is
/// thrown away, so that the first request does not pay for the backend's first-run preparation),
/// reports itself ready, then takes jobs until the queue is closed and empty.
pub fn spawn(
    index: usize,
    mut models: Models,
    warmup: Option<Job>,
    state: Arc<ServerState>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("idpatch-worker-{index}"))
        .spawn(move || {
            if let Some(job) = warmup {
                let started = Instant::now();
                // A drain (SIGTERM during start-up) stops the warm-up between steps.
                let mut on_step = |_: &pipeline::StepProgress| {
                    if state.is_draining() {
                        ControlFlow::Break(())
                    } else {
                        ControlFlow::Continue(())
                    }
                };
                let result = catch_unwind(AssertUnwindSafe(|| {
                    pipeline::generate(&mut models, &job, &mut on_step)
                }));
                match result {
                    Ok(Ok(_)) => state.log_event(
                        "warmed_up",
                        serde_json::json!({"worker": index, "seconds": started.elapsed().as_secs_f64()}),
                    ),
                    Ok(Err(Error::Cancelled { .. })) => {
                        state.log_event("warmup_cancelled", serde_json::json!({"worker": index}));
                        return;
                    }
                    Ok(Err(e)) => {
                        state.log_event(
                            "warmup_failed",
                            serde_json::json!({"worker": index, "error": e.to_string()}),
                        );
                        state.fail_startup(format!("worker {index} warm-up: {e}"));
                        return;
                    }
                    Err(_) => {
                        state.fail_startup(format!("worker {index} warm-up panicked"));
                        return;
                    }
                }
            }
            state.metrics.set_device_memory(index, &models.memory());
            state.metrics.workers_ready.inc();
            state.worker_ready();
            while let Some(ticket) = state.queue.pop(index) {
                state.update_gauges();
                let result = run_ticket(&mut models, &ticket, &state.metrics);
                state.metrics.set_device_memory(index, &models.memory());
                // The gauges first, so that a client that has its answer sees them settled.
                state.queue.finish(&ticket);
                state.update_gauges();
                ticket.send(Event::Finished(Box::new(result)));
            }
        })
}

/// Runs one job's graph stages, sending progress to the ticket's owner, and returns the result
/// (the caller sends it). A panic inside a stage becomes an error for this job; the worker goes
/// on with the next.
fn run_ticket(models: &mut Models, ticket: &Ticket, metrics: &Metrics) -> Result<Generated> {
    let result = catch_unwind(AssertUnwindSafe(|| run_stages(models, ticket, metrics)))
        .unwrap_or_else(|_| {
            Err(Error::graph(
                "pipeline",
                "the worker panicked running this job",
            ))
        });
    if let Err(Error::Cancelled { .. }) = &result {
        metrics.cancelled.inc();
    }
    result
}

fn run_stages(models: &mut Models, ticket: &Ticket, metrics: &Metrics) -> Result<Generated> {
    let job = &ticket.job;
    let started = Instant::now();
    let encoded = pipeline::encode(models, job)?;
    metrics.observe("encode", started.elapsed().as_secs_f64());

    let started = Instant::now();
    let mut on_step = |p: &pipeline::StepProgress| {
        ticket.send(Event::Step(*p));
        metrics.steps.inc();
        if ticket.is_cancelled() {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    };
    let denoised = pipeline::denoise(models, job, encoded, &mut on_step)?;
    let seconds = started.elapsed().as_secs_f64();
    metrics.observe("denoise", seconds);
    if seconds > 0.0 {
        metrics
            .steps_per_second
            .set(job.params.steps as f64 / seconds);
    }

    let started = Instant::now();
    let generated = pipeline::decode(models, job, denoised)?;
    metrics.observe("decode", started.elapsed().as_secs_f64());
    Ok(generated)
}

/// The queue's gauges, read into the metrics.
pub(super) fn gauges(queue: &Queue, metrics: &Metrics) {
    metrics.queue_depth.set(queue.depth() as i64);
    metrics.in_flight.set(queue.running() as i64);
}
