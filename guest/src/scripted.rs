//! A scripted host for the policy's unit tests (a test's fake, never evidence on its own:
//! the integration tests run the component in the real host against mosquitto). It answers
//! from what the test queued, keeps a clock that moves only when the policy waits, and
//! records every call.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::host::{
    Answer, BrokerError, Delivered, Event, GivenUp, Host, Level, Message, Received, Waited,
};
use crate::metadata::{self, Config, Qos};
use crate::request::{Properties, Publish};

/// What the policy did, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Subscribed(String),
    /// `deliver`, or `start` of a concurrent delivery; `ack` when the host was asked to
    /// acknowledge on acceptance (then an `Acked` follows an accepting answer).
    Delivered {
        payload: String,
        attempt: u32,
        ack: bool,
    },
    Acked(u64),
    Published {
        publish: Publish,
        payload: String,
    },
    GaveUp(GivenUp),
    Slept(Duration),
    Logged(Level, String),
}

/// A delivery started with `start`: its message's payload and attempt.
#[derive(Debug)]
pub struct Started {
    payload: Vec<u8>,
    attempt: u32,
}

/// The application's answers, by the message's payload and the attempt.
type Answers = HashMap<(Vec<u8>, u32), Answer<Vec<u8>>>;

pub struct Scripted {
    subscribe_results: RefCell<VecDeque<Result<(), BrokerError>>>,
    batches: RefCell<VecDeque<Vec<Message<Vec<u8>>>>>,
    publish_results: RefCell<VecDeque<Result<(), BrokerError>>>,
    answers: RefCell<Answers>,
    stop_sleeping: Cell<bool>,
    origin: Instant,
    elapsed: Cell<Duration>,
    calls: RefCell<Vec<Call>>,
    /// The message ids of the payloads handed out (the tests' payloads are unique), for an
    /// event that asks to be acknowledged on acceptance.
    ids: RefCell<HashMap<Vec<u8>, u64>>,
    /// How many events each `deliver_each` was handed.
    runs: RefCell<Vec<usize>>,
    /// What `received` tells of each payload handed out.
    received: RefCell<HashMap<Vec<u8>, Received>>,
}

impl Default for Scripted {
    fn default() -> Self {
        Self {
            subscribe_results: RefCell::default(),
            batches: RefCell::default(),
            publish_results: RefCell::default(),
            answers: RefCell::default(),
            stop_sleeping: Cell::new(false),
            origin: Instant::now(),
            elapsed: Cell::new(Duration::ZERO),
            calls: RefCell::default(),
            ids: RefCell::default(),
            runs: RefCell::default(),
            received: RefCell::default(),
        }
    }
}

/// A config from `url`, `topic` and these metadata fields.
pub fn config(fields: &[(&str, &str)]) -> Config {
    let mut metadata = vec![
        ("url".to_string(), "tcp://localhost:1883".to_string()),
        ("topic".to_string(), "in".to_string()),
    ];
    metadata.extend(
        fields
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string())),
    );
    metadata::parse("app", &metadata).expect("valid metadata")
}

/// A message as a test scripts it: what `next_messages` hands over, with the topic and
/// properties that `received` tells of it.
#[derive(Debug, Clone)]
pub struct Sent {
    pub id: u64,
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: Qos,
    pub properties: Properties,
}

/// A message on `in` with no properties.
pub fn message(id: u64, payload: &str, qos: Qos) -> Sent {
    Sent {
        id,
        topic: "in".into(),
        payload: payload.as_bytes().to_vec(),
        qos,
        properties: Properties::default(),
    }
}

impl Scripted {
    /// What `subscribe` answers, in turn; `Ok` once these are spent.
    pub fn subscribe_results(&self, results: impl IntoIterator<Item = Result<(), BrokerError>>) {
        self.subscribe_results.borrow_mut().extend(results);
    }

    /// What `next_messages` hands out, batch by batch. Once they are spent, a call that may
    /// wait ends in `Closed` (shutdown), one that may not gets nothing.
    pub fn batch(&self, messages: impl IntoIterator<Item = Sent>) {
        let mut received = self.received.borrow_mut();
        let batch = messages
            .into_iter()
            .map(|sent| {
                let message = Message {
                    id: sent.id,
                    payload: sent.payload.clone(),
                    qos: sent.qos,
                    retained: false,
                    duplicate: false,
                    request: sent.properties.response_topic.is_some(),
                };
                let told = Received {
                    topic: sent.topic,
                    properties: sent.properties,
                };
                received.insert(sent.payload, told);
                message
            })
            .collect();
        self.batches.borrow_mut().push_back(batch);
    }

    /// What `publish` answers, in turn; `Ok` once these are spent.
    pub fn publish_results(&self, results: impl IntoIterator<Item = Result<(), BrokerError>>) {
        self.publish_results.borrow_mut().extend(results);
    }

    /// The application's answer to the delivery of `payload` at `attempt`; accepted
    /// without data unless told.
    pub fn answer(&self, payload: &str, attempt: u32, answer: Answer<Vec<u8>>) {
        self.answers
            .borrow_mut()
            .insert((payload.as_bytes().to_vec(), attempt), answer);
    }

    /// Every later `sleep` is ended by shutdown.
    pub fn stop_sleeping(&self) {
        self.stop_sleeping.set(true);
    }

    pub fn calls(&self) -> Vec<Call> {
        self.calls.borrow().clone()
    }

    pub fn acked(&self) -> Vec<u64> {
        self.calls
            .borrow()
            .iter()
            .filter_map(|call| match call {
                Call::Acked(id) => Some(*id),
                _ => None,
            })
            .collect()
    }

    /// How many events each `deliver_each` call was handed, in order.
    pub fn runs(&self) -> Vec<usize> {
        self.runs.borrow().clone()
    }

    /// The deliveries, as (payload, attempt).
    pub fn delivered(&self) -> Vec<(String, u32)> {
        self.calls
            .borrow()
            .iter()
            .filter_map(|call| match call {
                Call::Delivered {
                    payload, attempt, ..
                } => Some((payload.clone(), *attempt)),
                _ => None,
            })
            .collect()
    }

    /// The publishes, as (topic, payload), and what each asked for.
    pub fn published(&self) -> Vec<(Publish, String)> {
        self.calls
            .borrow()
            .iter()
            .filter_map(|call| match call {
                Call::Published { publish, payload } => Some((publish.clone(), payload.clone())),
                _ => None,
            })
            .collect()
    }

    pub fn given_up(&self) -> Vec<GivenUp> {
        self.calls
            .borrow()
            .iter()
            .filter_map(|call| match call {
                Call::GaveUp(how) => Some(*how),
                _ => None,
            })
            .collect()
    }

    fn record(&self, call: Call) {
        self.calls.borrow_mut().push(call);
    }

    fn delivery(&self, event: &Event<'_, Vec<u8>>) {
        self.record(Call::Delivered {
            payload: String::from_utf8_lossy(event.message).into_owned(),
            attempt: event.attempt,
            ack: event.ack,
        });
    }

    fn answer_for(&self, payload: &[u8], attempt: u32) -> Answer<Vec<u8>> {
        self.answers
            .borrow_mut()
            .remove(&(payload.to_vec(), attempt))
            .unwrap_or(Ok(None))
    }

    fn advance(&self, by: Duration) {
        self.elapsed.set(self.elapsed.get() + by);
    }
}

impl Host for Scripted {
    type Payload = Vec<u8>;
    type Pending = Started;

    fn subscribe(&self, filter: &str, _qos: Qos, _timeout_ms: u32) -> Result<(), BrokerError> {
        self.record(Call::Subscribed(filter.to_string()));
        self.subscribe_results
            .borrow_mut()
            .pop_front()
            .unwrap_or(Ok(()))
    }

    fn next_messages(
        &self,
        max: u32,
        timeout_ms: u32,
    ) -> Result<Vec<Message<Vec<u8>>>, BrokerError> {
        let mut batches = self.batches.borrow_mut();
        match batches.pop_front() {
            Some(mut batch) => {
                let max = usize::try_from(max).expect("a small max");
                if batch.len() > max {
                    batches.push_front(batch.split_off(max));
                }
                let mut ids = self.ids.borrow_mut();
                ids.extend(batch.iter().map(|m| (m.payload.clone(), m.id)));
                Ok(batch)
            }
            None if timeout_ms == 0 => Ok(Vec::new()),
            None => Err(BrokerError::Closed),
        }
    }

    fn ack(&self, id: u64) -> Result<(), BrokerError> {
        self.record(Call::Acked(id));
        Ok(())
    }

    fn received(&self, payload: &Vec<u8>) -> Received {
        self.received
            .borrow()
            .get(payload)
            .cloned()
            .unwrap_or_default()
    }

    fn publish(
        &self,
        publish: &Publish,
        payload: &Vec<u8>,
        _timeout_ms: u32,
    ) -> Result<(), BrokerError> {
        self.record(Call::Published {
            publish: publish.clone(),
            payload: String::from_utf8_lossy(payload).into_owned(),
        });
        self.publish_results
            .borrow_mut()
            .pop_front()
            .unwrap_or(Ok(()))
    }

    fn deliver(&self, event: Event<'_, Vec<u8>>) -> Answer<Vec<u8>> {
        self.delivery(&event);
        let answer = self.answer_for(event.message, event.attempt);
        if event.ack && answer.is_ok() {
            let id = self.ids.borrow().get(event.message).copied();
            self.record(Call::Acked(id.expect("a payload from next_messages")));
        }
        answer
    }

    fn deliver_each(&self, events: Vec<(Vec<u8>, bool)>) -> Delivered<Vec<u8>> {
        self.runs.borrow_mut().push(events.len());
        let mut events = events.into_iter();
        let mut accepted = 0;
        while let Some((payload, ack)) = events.next() {
            let event = Event {
                message: &payload,
                attempt: 1,
                ack,
            };
            if let Err(error) = self.deliver(event) {
                let rest = std::iter::once(payload)
                    .chain(events.map(|(payload, _)| payload))
                    .collect();
                return Delivered {
                    accepted,
                    refused: Some((error, rest)),
                };
            }
            accepted += 1;
        }
        Delivered {
            accepted,
            refused: None,
        }
    }

    /// The real host refuses `ack` here; so does this one, loudly.
    fn start(&self, event: Event<'_, Vec<u8>>) -> Started {
        assert!(!event.ack, "`start` does not acknowledge");
        self.delivery(&event);
        Started {
            payload: event.message.clone(),
            attempt: event.attempt,
        }
    }

    /// The newest delivery answers first, so that answers come out of arrival order.
    fn wait_any(
        &self,
        deliveries: &[&Started],
        watch_connection: bool,
        timeout_ms: u32,
    ) -> Waited<Vec<u8>> {
        if let Some((index, started)) = deliveries.iter().enumerate().next_back() {
            return Waited::Answered(index, self.answer_for(&started.payload, started.attempt));
        }
        if watch_connection && !self.batches.borrow().is_empty() {
            return Waited::MessageWaiting;
        }
        self.advance(Duration::from_millis(u64::from(timeout_ms)));
        Waited::TimedOut
    }

    fn gave_up(&self, how: GivenUp) {
        self.record(Call::GaveUp(how));
    }

    fn sleep(&self, wait: Duration) -> bool {
        self.record(Call::Slept(wait));
        self.advance(wait);
        !self.stop_sleeping.get()
    }

    fn now(&self) -> Instant {
        self.origin + self.elapsed.get()
    }

    fn log(&self, level: Level, message: &str) {
        self.record(Call::Logged(level, message.to_string()));
    }
}
