//! `"stream": true`: the generation's progress as Server-Sent Events.
//!
//! Events, each with a JSON `data` line:
//! - `queued` `{"id", "position"}`: jobs ahead (0: next); sent on entry and whenever it changes;
//! - `started` `{"id", "queue_wait", "worker"}`;
//! - `step` `{"id", "step", "steps", "seconds"}` after every denoising step;
//! - `image`: the `b64_json` response body; the stream ends;
//! - `error` `{"error": {"message", "field"}, "status"}`: the status the request would have had
//!   (409 cancelled, 500 graph failure, 504 deadline); the stream ends.
//!
//! A client that disconnects drops the stream, which cancels the job between steps. The stream
//! logs its own request line when it ends.

use std::convert::Infallible;
use std::time::Duration;

use axum::http::HeaderValue;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::sync::mpsc::UnboundedReceiver;

use super::api::ApiError;
use super::http::{with_image, Outcome, RequestLog, GENERATION_ID};
use super::queue::Event;

/// Comments sent while nothing else is, so that proxies keep the connection and a client gone
/// is noticed while its job waits.
const KEEP_ALIVE: Duration = Duration::from_secs(1);

/// The event stream of an admitted generation.
pub fn response(outcome: Outcome, events: UnboundedReceiver<Event>) -> Response {
    let id = outcome.ticket.id.clone();
    let progress = Progress {
        outcome,
        events,
        done: false,
        status: 200,
        timings: None,
    };
    let stream = futures_util::stream::unfold(progress, |mut p| async move {
        if p.done {
            return None;
        }
        let event = p.next_event().await;
        Some((Ok::<_, Infallible>(event), p))
    });
    let mut response = Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response();
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(GENERATION_ID, value);
    }
    response.extensions_mut().insert(RequestLog {
        deferred: true,
        ..RequestLog::default()
    });
    response
}

struct Progress {
    outcome: Outcome,
    events: UnboundedReceiver<Event>,
    done: bool,
    /// The status the outcome stands for, for the log line.
    status: u16,
    timings: Option<std::collections::BTreeMap<String, f64>>,
}

impl Progress {
    async fn next_event(&mut self) -> SseEvent {
        let id = self.outcome.ticket.id.clone();
        let event = match self.outcome.next(&mut self.events).await {
            Err(e) => return self.error(e),
            Ok(event) => event,
        };
        match event {
            Event::Queued { position } => sse("queued", json!({"id": id, "position": position})),
            Event::Started { queue_wait, worker } => sse(
                "started",
                json!({"id": id, "queue_wait": queue_wait.as_secs_f64(), "worker": worker}),
            ),
            Event::Step(p) => sse(
                "step",
                json!({"id": id, "step": p.step, "steps": p.steps, "seconds": p.took.as_secs_f64()}),
            ),
            Event::Finished(result) => {
                let generated = match *result {
                    Ok(generated) => generated,
                    Err(e) => return self.error(e.into()),
                };
                match self.outcome.finish(generated).await {
                    Ok((png, body)) => {
                        self.done = true;
                        self.timings = Some(body.timings.clone());
                        let body = with_image(body, &png);
                        SseEvent::default()
                            .event("image")
                            .json_data(&body)
                            .unwrap_or_else(|e| {
                                self.error(ApiError::new(
                                    axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                                    e.to_string(),
                                ))
                            })
                    }
                    Err(e) => self.error(e),
                }
            }
        }
    }

    fn error(&mut self, e: ApiError) -> SseEvent {
        self.done = true;
        self.status = e.status.as_u16();
        sse(
            "error",
            json!({"error": e.body().error, "status": self.status}),
        )
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        let state = &self.outcome.state;
        // A stream dropped before its end: the client left (the guard cancels the job).
        let status = if self.done { self.status } else { 499 };
        state.log_event(
            "request",
            json!({
                "method": "POST", "route": "/v1/generations", "status": status, "stream": true,
                "id": self.outcome.ticket.id,
                "queue_wait": self.outcome.queue_wait.map(|d| d.as_secs_f64()),
                "timings": self.timings,
                "seconds": self.outcome.started.elapsed().as_secs_f64(),
            }),
        );
    }
}

fn sse(name: &str, data: serde_json::Value) -> SseEvent {
    SseEvent::default().event(name).data(data.to_string())
}
