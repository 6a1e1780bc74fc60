//! The input side of one instance as daprd reads it: the instance's [`EventHandler`] hands
//! each event to the `Read` stream open at the time and waits for daprd's answer naming it.
//!
//! The binding delivers one event at a time, so at most one is in hand. If its stream ends
//! before daprd answers (daprd cancelled it, or the connection dropped), the event has not
//! been accepted: the delivery waits for the next `Read` of the instance and sends the same
//! event there first. It is acknowledged to the broker only when daprd accepts it. A newer
//! `Read` replaces an older one, so there is only one at a time.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use super::proto::{ReadRequest, ReadResponse};
use crate::{Answer, Delivery, Event, EventHandler};

/// The events of one `Read`, as tonic sends them.
pub(crate) type Events = ReceiverStream<Result<ReadResponse, tonic::Status>>;

/// The `Read` streams of one instance, and its event handler.
#[derive(Debug)]
pub(crate) struct Reader {
    current: watch::Sender<Option<Arc<ReadStream>>>,
}

/// One `Read` call.
#[derive(Debug)]
struct ReadStream {
    /// Taken when the stream ends, which ends the response stream daprd reads.
    events: Mutex<Option<mpsc::Sender<Result<ReadResponse, tonic::Status>>>>,
    /// daprd's answer for each event sent and not yet answered, by message ID.
    waiting: Mutex<HashMap<String, oneshot::Sender<Result<Answer, String>>>>,
    ended: CancellationToken,
}

impl Reader {
    pub(crate) fn new() -> Self {
        Self {
            current: watch::Sender::new(None),
        }
    }

    /// Waits until the first `Read` arrives; `false` if `stop` comes first.
    pub(crate) async fn first_read(&self, stop: &CancellationToken) -> bool {
        let mut current = self.current.subscribe();
        tokio::select! {
            found = current.wait_for(Option::is_some) => found.is_ok(),
            () = stop.cancelled() => false,
        }
    }

    /// A new `Read`: daprd's answers come on `answers`; the returned stream carries the
    /// events. Replaces the stream open before, which ends.
    pub(crate) fn attach(self: &Arc<Self>, mut answers: tonic::Streaming<ReadRequest>) -> Events {
        // One event is in hand at a time; room for one more keeps the send from waiting.
        let (events, receiver) = mpsc::channel(2);
        let stream = Arc::new(ReadStream {
            events: Mutex::new(Some(events.clone())),
            waiting: Mutex::new(HashMap::new()),
            ended: CancellationToken::new(),
        });
        if let Some(previous) = self.current.send_replace(Some(stream.clone())) {
            previous.end();
        }
        let reader = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    answer = answers.message() => match answer {
                        Ok(Some(answer)) => stream.answer(answer),
                        Ok(None) => break,
                        Err(status) => {
                            tracing::debug!("Read stream ended: {status}");
                            break;
                        }
                    },
                    () = events.closed() => break,
                    () = stream.ended.cancelled() => break,
                }
            }
            stream.end();
            reader.current.send_if_modified(|current| match current {
                Some(open) if Arc::ptr_eq(open, &stream) => {
                    *current = None;
                    true
                }
                _ => false,
            });
        });
        ReceiverStream::new(receiver)
    }

    /// Ends the open stream, if any (the instance is going away).
    pub(crate) fn close(&self) {
        if let Some(open) = self.current.send_replace(None) {
            open.end();
        }
    }

    async fn deliver_event(&self, event: Event) -> Result<Answer, String> {
        let mut current = self.current.subscribe();
        loop {
            let open = current
                .wait_for(|open| open.as_ref().is_some_and(|open| !open.ended.is_cancelled()))
                .await
                .map(|open| open.clone());
            let Ok(Some(stream)) = open else {
                return Err("the instance was released".into());
            };
            let message_id = next_message_id();
            let (answered, answer) = oneshot::channel();
            stream
                .waiting
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .insert(message_id.clone(), answered);
            let content_type = event
                .metadata
                .get("contentType")
                .map(Cow::into_owned)
                .unwrap_or_default();
            let response = ReadResponse {
                data: event.data.clone(),
                metadata: event.metadata.owned().collect(),
                content_type,
                message_id,
            };
            if !stream.send(response).await {
                continue;
            }
            tokio::select! {
                answer = answer => if let Ok(outcome) = answer {
                    return outcome;
                },
                () = stream.ended.cancelled() => {}
            }
            tracing::debug!("the Read stream ended with an event in hand; it goes to the next one");
        }
    }
}

/// A message ID unique while this process runs, which is all daprd asks of it (a counter
/// costs no random bytes per event).
fn next_message_id() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        .to_string()
}

impl EventHandler for Reader {
    fn deliver(&self, event: Event) -> Delivery<'_> {
        Box::pin(self.deliver_event(event))
    }
}

impl ReadStream {
    /// Sends one event; `false` if the stream has ended.
    async fn send(&self, response: ReadResponse) -> bool {
        let events = self
            .events
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        match events {
            Some(events) => events.send(Ok(response)).await.is_ok(),
            None => false,
        }
    }

    /// daprd's answer for one event: failed when `response_error` is present, even empty.
    fn answer(&self, answer: ReadRequest) {
        let waiting = self
            .waiting
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(&answer.message_id);
        let Some(waiting) = waiting else {
            tracing::warn!(message_id = %answer.message_id, "daprd answered an event this stream did not send, or answered it twice; ignored");
            return;
        };
        let outcome = match answer.response_error {
            None => Ok((!answer.response_data.is_empty()).then_some(answer.response_data)),
            Some(error) if error.message.is_empty() => {
                Err("daprd reported that the application did not accept the event".into())
            }
            Some(error) => Err(error.message),
        };
        let _ = waiting.send(outcome);
    }

    fn end(&self) {
        self.ended.cancel();
        self.events
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        self.waiting
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clear();
    }
}
