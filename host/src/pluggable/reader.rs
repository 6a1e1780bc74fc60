//! The input side of one instance as daprd reads it: the instance's [`EventHandler`] hands
//! each event to the `Read` stream open at the time and waits for daprd's answer naming it.
//!
//! No task sits between daprd's answers and the deliveries waiting for them (the floor's
//! hand-written component has none either): one waiting delivery at a time holds the
//! answers and reads them, keeping its own and passing each other one to the delivery it
//! names. With `concurrency` above 1 several events are in hand at once and daprd may answer
//! them in any order; when the holder's answer comes it lets go, and another waiting delivery
//! takes the answers over.
//!
//! If the stream ends before daprd answers (daprd cancelled it, or the connection dropped),
//! the events in hand have not been accepted: each delivery waits for the next `Read` of the
//! instance and sends the same event there. It is acknowledged to the broker only when daprd
//! accepts it. A newer `Read` replaces an older one, so there is only one at a time; an
//! ended stream is found out by the next delivery.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use super::proto::{ReadRequest, ReadResponse};
use crate::{Answer, Delivery, Event, EventHandler};

/// The events of one `Read`, as tonic sends them.
pub(crate) type Events = ReceiverStream<Result<ReadResponse, tonic::Status>>;

/// What daprd said of one event.
type Outcome = Result<Answer, String>;

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
    /// daprd's answers, read by one waiting delivery at a time.
    answers: tokio::sync::Mutex<tonic::Streaming<ReadRequest>>,
    /// Where the answer to each event sent and not yet answered goes, by message ID;
    /// cleared when the stream ends, which tells every delivery waiting on it.
    waiting: Mutex<HashMap<u64, oneshot::Sender<Outcome>>>,
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
    pub(crate) fn attach(&self, answers: tonic::Streaming<ReadRequest>) -> Events {
        // Room for two events keeps a delivery's send from waiting on daprd's reading.
        let (events, receiver) = mpsc::channel(2);
        let stream = Arc::new(ReadStream {
            events: Mutex::new(Some(events)),
            answers: tokio::sync::Mutex::new(answers),
            waiting: Mutex::new(HashMap::new()),
            ended: CancellationToken::new(),
        });
        if let Some(previous) = self.current.send_replace(Some(stream)) {
            previous.end();
        }
        ReceiverStream::new(receiver)
    }

    /// Ends the open stream, if any (the instance is going away).
    pub(crate) fn close(&self) {
        if let Some(open) = self.current.send_replace(None) {
            open.end();
        }
    }

    async fn deliver_event(&self, event: Event) -> Outcome {
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
            let _waiting = stream.expect(message_id, answered);
            let content_type = event
                .metadata
                .get("contentType")
                .map(Cow::into_owned)
                .unwrap_or_default();
            let response = ReadResponse {
                data: event.data.clone(),
                metadata: event.metadata.owned().collect(),
                content_type,
                message_id: message_id.to_string(),
            };
            if stream.send(response).await
                && let Some(outcome) = stream.answer_to(message_id, answer).await
            {
                return outcome;
            }
            stream.end();
            tracing::debug!("the Read stream ended with an event in hand; it goes to the next one");
        }
    }
}

/// A message ID unique while this process runs, which is all daprd asks of it (a counter
/// costs no random bytes per event).
fn next_message_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl EventHandler for Reader {
    fn deliver(&self, event: Event) -> Delivery<'_> {
        Box::pin(self.deliver_event(event))
    }
}

impl ReadStream {
    fn waiting(&self) -> MutexGuard<'_, HashMap<u64, oneshot::Sender<Outcome>>> {
        self.waiting
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records where the answer to `message_id` goes, until the returned guard is dropped
    /// (the answer came, the stream ended, or the delivery was cancelled).
    fn expect(&self, message_id: u64, answered: oneshot::Sender<Outcome>) -> Expected<'_> {
        self.waiting().insert(message_id, answered);
        Expected {
            stream: self,
            message_id,
        }
    }

    fn events(&self) -> Option<mpsc::Sender<Result<ReadResponse, tonic::Status>>> {
        self.events
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Sends one event; `false` if the stream has ended.
    async fn send(&self, response: ReadResponse) -> bool {
        match self.events() {
            Some(events) => events.send(Ok(response)).await.is_ok(),
            None => false,
        }
    }

    /// daprd's answer to the event `message_id`, which comes on `answer` when another
    /// delivery holds the answers, or is read here when none does. `None` when the stream
    /// ends first: daprd stopped answering, or stopped reading the events.
    async fn answer_to(
        &self,
        message_id: u64,
        mut answer: oneshot::Receiver<Outcome>,
    ) -> Option<Outcome> {
        let events = self.events()?;
        // Each arm is polled in this order, so an answer passed on before this delivery
        // takes the answers over is seen first.
        tokio::select! {
            biased;
            passed = &mut answer => passed.ok(),
            mut answers = self.answers.lock() => {
                // The holder before may have passed this delivery's answer on between the
                // first arm's poll and the lock.
                if let Ok(passed) = answer.try_recv() {
                    return Some(passed);
                }
                loop {
                    let read = tokio::select! {
                        read = answers.message() => read,
                        () = self.ended.cancelled() => return None,
                        () = events.closed() => return None,
                    };
                    let request = match read {
                        Ok(Some(request)) => request,
                        Ok(None) => return None,
                        Err(status) => {
                            tracing::debug!("Read stream ended: {status}");
                            return None;
                        }
                    };
                    match request.message_id.parse::<u64>() {
                        Ok(id) if id == message_id => return Some(outcome(request)),
                        Ok(id) => self.pass_on(id, request),
                        Err(_) => tracing::warn!(message_id = %request.message_id, "daprd answered with a message ID this binding never sends; ignored"),
                    }
                }
            },
            () = self.ended.cancelled() => None,
            () = events.closed() => None,
        }
    }

    /// Gives daprd's answer to another delivery waiting on this stream.
    fn pass_on(&self, id: u64, request: ReadRequest) {
        let Some(waiting) = self.waiting().remove(&id) else {
            tracing::warn!(message_id = %request.message_id, "daprd answered an event this stream did not send, or answered it twice; ignored");
            return;
        };
        let _ = waiting.send(outcome(request));
    }

    fn end(&self) {
        self.ended.cancel();
        self.events
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        // Dropping the senders tells every delivery waiting on this stream.
        self.waiting().clear();
    }
}

/// One event sent on a stream and not yet answered.
struct Expected<'a> {
    stream: &'a ReadStream,
    message_id: u64,
}

impl Drop for Expected<'_> {
    fn drop(&mut self) {
        self.stream.waiting().remove(&self.message_id);
    }
}

/// daprd's answer for one event: failed when `response_error` is present, even empty.
fn outcome(answer: ReadRequest) -> Outcome {
    match answer.response_error {
        None => Ok((!answer.response_data.is_empty()).then_some(answer.response_data)),
        Some(error) if error.message.is_empty() => {
            Err("daprd reported that the application did not accept the event".into())
        }
        Some(error) => Err(error.message),
    }
}
