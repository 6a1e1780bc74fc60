//! The input binding's policy: subscribe, then deliver each message to the application under
//! the binding's retry policy, one at a time or several at once (metadata `concurrency`),
//! answer MQTT 5 requests, move what the application never accepts to the dead-letter
//! topic, and acknowledge a message only once it is settled, in arrival order. It runs
//! until the host closes the connection for shutdown.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::host::{
    BrokerError, DeliveryError, Event, GivenUp, Host, Level, Message, Received, Waited,
};
use crate::metadata::{self, Config, Qos};
use crate::output::publish_with_retries;
use crate::request::{Properties, Publish};
use crate::window::Window;

/// How long `subscribe` waits for SUBACK, and how long to wait before trying again.
const SUBSCRIBE_TIMEOUT_MS: u32 = 10_000;
const SUBSCRIBE_RETRY: Duration = Duration::from_secs(1);
/// How long one `next_messages` call waits; the loop simply asks again.
const NEXT_MESSAGES_WAIT_MS: u32 = 60_000;
/// Most messages taken from the host at once: enough to save most calls under load, few
/// enough that a batch in hand stays small.
const NEXT_MESSAGES_MAX: u32 = 64;

/// SUBACK's "shared subscriptions not supported" (MQTT 5 section 3.9.3).
const SHARED_NOT_SUPPORTED: u8 = 0x9E;

/// A broker's refusal of a shared subscription, told in the terms of the field that asked for
/// one (`sharedSubscriptionGroup`, or `topic` written as `$share/...`).
fn share_refusal(config: &Config, error: BrokerError) -> BrokerError {
    match error {
        BrokerError::Rejected(mut rejection) if rejection.reason_code == SHARED_NOT_SUPPORTED => {
            let field = match config.share_group {
                Some(_) => metadata::field::SHARED_SUBSCRIPTION_GROUP,
                None => metadata::field::TOPIC,
            };
            rejection.reason = format!(
                "metadata field {field:?}: the broker refused the shared subscription {:?}: {}",
                config.subscription(),
                rejection.reason
            );
            BrokerError::Rejected(rejection)
        }
        other => other,
    }
}

/// Subscribes, then delivers until shutdown (`Ok`), or until the broker fails in a way
/// that retrying cannot mend.
pub fn read<H: Host>(host: &H, config: &Config) -> Result<(), BrokerError> {
    let topic = &*config.subscription();
    loop {
        match host.subscribe(topic, config.qos, SUBSCRIBE_TIMEOUT_MS) {
            Ok(()) => break,
            Err(BrokerError::Closed) => return Ok(()),
            Err(error) if error.is_retryable() => {
                host.log(
                    Level::Warn,
                    &format!("subscribing to {topic:?} failed, retrying: {error}"),
                );
                if !host.sleep(SUBSCRIBE_RETRY) {
                    return Ok(());
                }
            }
            Err(error) => return Err(share_refusal(config, error)),
        }
    }
    host.log(Level::Info, &format!("subscribed to {topic:?}"));
    if config.concurrency > 1 {
        return read_concurrently(host, config, usize::from(config.concurrency));
    }
    loop {
        let messages = match host.next_messages(NEXT_MESSAGES_MAX, NEXT_MESSAGES_WAIT_MS) {
            Ok(messages) => messages,
            Err(BrokerError::Closed) => return Ok(()),
            Err(error) => return Err(error),
        };
        // The rest of the batch stays unacknowledged, as if never taken.
        if deliver_batch(host, config, messages) == Settled::Stopped {
            return Ok(());
        }
    }
}

/// Delivers a batch in order. A run of messages that need nothing between the application's
/// acceptance and their acknowledgement (all but MQTT 5 requests, whose answer is published
/// first) goes to the host in one call; a message of the run that the application does not
/// accept goes on under the retry policy from its first failure, and the run resumes after
/// it. `Stopped` on shutdown, else `Acknowledged` (each message was settled on its own).
fn deliver_batch<H: Host>(
    host: &H,
    config: &Config,
    messages: Vec<Message<H::Payload>>,
) -> Settled {
    let mut messages = VecDeque::from(messages);
    while !messages.is_empty() {
        let run = messages
            .iter()
            .take_while(|message| !message.request)
            .count();
        if run == 0 {
            let Some(request) = messages.pop_front() else {
                break;
            };
            if deliver(host, config, request, None) == Settled::Stopped {
                return Settled::Stopped;
            }
            continue;
        }
        let (rest, events): (Vec<_>, Vec<_>) = messages
            .drain(..run)
            .map(|message| {
                let (rest, payload) = message.split();
                let ack = rest.qos != Qos::AtMostOnce;
                (rest, (payload, ack))
            })
            .unzip();
        let delivered = host.deliver_each(events);
        let Some((error, payloads)) = delivered.refused else {
            continue;
        };
        // What was not delivered goes back to the front, in order.
        let undelivered: Vec<_> = rest
            .into_iter()
            .skip(delivered.accepted)
            .zip(payloads)
            .collect();
        for (rest, payload) in undelivered.into_iter().rev() {
            messages.push_front(rest.with(payload));
        }
        let DeliveryError::Failed(reason) = error else {
            return Settled::Stopped;
        };
        let Some(refused) = messages.pop_front() else {
            host.log(
                Level::Error,
                "the host refused a delivery and gave no message back; the rest of the batch stays unacknowledged",
            );
            return Settled::Stopped;
        };
        if deliver(host, config, refused, Some(reason)) == Settled::Stopped {
            return Settled::Stopped;
        }
    }
    Settled::Acknowledged
}

/// How the delivery of one message ended.
#[derive(Debug, PartialEq, Eq)]
enum Settled {
    /// Delivered (or dead-lettered) and acknowledged.
    Acknowledged,
    /// Left unacknowledged for the broker to send again.
    Unacknowledged,
    /// Shutdown came before the application accepted it; unacknowledged.
    Stopped,
}

/// Delivers one message under the binding's retry policy, answers it if it is an MQTT 5
/// request and the application gave an answer, then acknowledges it or leaves it for the
/// broker to redeliver. `failed_first`: why its first delivery already failed (in a run of
/// `deliver_batch`), so that it goes on from there.
fn deliver<H: Host>(
    host: &H,
    config: &Config,
    message: Message<H::Payload>,
    mut failed_first: Option<String>,
) -> Settled {
    // Asked of the host only for a log line.
    let topic = || topic_of(host, &message);
    // With nothing to do between the application's acceptance and the acknowledgement (no
    // response to publish first), the host acknowledges on acceptance: one call less.
    let ack_on_accept = message.qos != Qos::AtMostOnce && !message.request;
    let mut attempt: u32 = 1;
    let reason = loop {
        let event = Event {
            message: &message.payload,
            attempt,
            ack: ack_on_accept,
        };
        let outcome = match failed_first.take() {
            Some(reason) => Err(DeliveryError::Failed(reason)),
            None => host.deliver(event),
        };
        let reason = match outcome {
            Ok(_) if ack_on_accept => return Settled::Acknowledged,
            Ok(answer) => {
                if !respond(host, config, &message, answer) {
                    return Settled::Unacknowledged;
                }
                return acknowledge(host, message.id, message.qos, topic);
            }
            Err(DeliveryError::Failed(reason)) => reason,
            Err(DeliveryError::Stopped) => return Settled::Stopped,
        };
        let Some(wait) = retry_after(host, config, topic, attempt, &reason) else {
            break reason;
        };
        if !host.sleep(wait) {
            host.log(
                Level::Info,
                &format!(
                    "shutting down: the message on {:?} stays unacknowledged",
                    topic()
                ),
            );
            return Settled::Stopped;
        }
        attempt += 1;
    };
    if give_up(host, config, &message, attempt, &reason) {
        acknowledge(host, message.id, message.qos, topic)
    } else {
        Settled::Unacknowledged
    }
}

/// How long to wait before delivering a message on `topic` again after its delivery
/// number `failures` failed with `reason` (logged), or `None` when the retries are spent.
fn retry_after<H: Host>(
    host: &H,
    config: &Config,
    topic: impl FnOnce() -> String,
    failures: u32,
    reason: &str,
) -> Option<Duration> {
    let wait = config.delivery_backoff.after_failure(u64::from(failures))?;
    let topic = topic();
    host.log(
        Level::Warn,
        &format!(
            "delivery of a message on {topic:?} failed (attempt {failures}), retrying in {wait:?}: {reason}"
        ),
    );
    Some(wait)
}

/// A message the application did not accept in `failures` deliveries, the last failing
/// with `reason`: moved to the dead-letter topic if there is one, else left for the broker
/// to send again. `true` when it is to be acknowledged (the dead-letter topic has it).
fn give_up<H: Host>(
    host: &H,
    config: &Config,
    message: &Message<H::Payload>,
    failures: u32,
    reason: &str,
) -> bool {
    let Received { topic, properties } = host.received(&message.payload);
    let Some(dead_letter) = &config.dead_letter_topic else {
        host.log(
            Level::Error,
            &format!(
                "delivery of a message on {topic:?} failed {failures} times, last: {reason}; it stays unacknowledged, so a persistent session redelivers it on the next connection"
            ),
        );
        host.gave_up(GivenUp::LeftUnacknowledged);
        return false;
    };
    // Published at QoS 1 at least, so the broker has confirmed it before the original is
    // acknowledged: the message is never in neither place. Its MQTT 5 properties go along.
    let publish = Publish {
        topic: dead_letter.clone(),
        qos: config.qos.max(Qos::AtLeastOnce),
        retain: false,
        properties,
    };
    match publish_with_retries(host, &publish, &message.payload) {
        Ok(()) => {
            host.log(
                Level::Warn,
                &format!(
                    "delivery of a message on {topic:?} failed {failures} times, last: {reason}; moved to the dead-letter topic {dead_letter:?}"
                ),
            );
            host.gave_up(GivenUp::DeadLettered);
            true
        }
        Err(error) => {
            host.log(
                Level::Error,
                &format!(
                    "delivery of a message on {topic:?} failed {failures} times and publishing it to the dead-letter topic {dead_letter:?} failed too ({error}); it stays unacknowledged"
                ),
            );
            host.gave_up(GivenUp::LeftUnacknowledged);
            false
        }
    }
}

/// One message of a concurrent input binding, from its first delivery until it is settled.
struct Flight<H: Host> {
    message: Message<H::Payload>,
    attempt: u32,
    state: FlightState<H::Pending>,
}

enum FlightState<P> {
    Delivering(P),
    /// Failed; delivered again at this time.
    RetryAt(Instant),
}

impl<H: Host> Flight<H> {
    fn start(host: &H, message: Message<H::Payload>) -> Self {
        let mut flight = Self {
            message,
            attempt: 0,
            state: FlightState::RetryAt(host.now()),
        };
        flight.deliver_again(host);
        flight
    }

    fn deliver_again(&mut self, host: &H) {
        self.attempt += 1;
        // Acknowledged through `ack`, in arrival order (see `window`).
        self.state = FlightState::Delivering(host.start(Event {
            message: &self.message.payload,
            attempt: self.attempt,
            ack: false,
        }));
    }
}

/// The input loop with up to `concurrency` messages in delivery at once. Each message keeps
/// its own retries; acknowledgements still leave in arrival order (see `window`), so a
/// message is acknowledged only once it and every earlier one are settled. On shutdown the
/// settled front is acknowledged and the rest is left for the broker to send again.
fn read_concurrently<H: Host>(
    host: &H,
    config: &Config,
    concurrency: usize,
) -> Result<(), BrokerError> {
    let mut window = Window::default();
    let mut flights: Vec<Flight<H>> = Vec::new();
    let mut taken: VecDeque<Message<H::Payload>> = VecDeque::new();
    // What acknowledging each message in the window takes: its QoS, and its topic for the log.
    let mut settling = HashMap::new();
    loop {
        // Start deliveries while there is room.
        while window.len() < concurrency {
            if taken.is_empty() {
                // Block for the next message only when nothing else is under way.
                let wait = if window.is_empty() {
                    NEXT_MESSAGES_WAIT_MS
                } else {
                    0
                };
                let max = u32::try_from(concurrency - window.len()).unwrap_or(NEXT_MESSAGES_MAX);
                match host.next_messages(max.min(NEXT_MESSAGES_MAX), wait) {
                    Ok(messages) => taken.extend(messages),
                    Err(BrokerError::Closed) => return Ok(()),
                    Err(error) => return Err(error),
                }
            }
            let Some(message) = taken.pop_front() else {
                break;
            };
            window.push(message.id);
            settling.insert(message.id, message.qos);
            flights.push(Flight::start(host, message));
        }
        if window.is_empty() {
            continue;
        }
        let now = host.now();
        let next_retry = flights
            .iter()
            .filter_map(|flight| match &flight.state {
                FlightState::RetryAt(at) => Some(*at),
                FlightState::Delivering(_) => None,
            })
            .min();
        let timeout_ms = next_retry.map_or(NEXT_MESSAGES_WAIT_MS, |at| {
            u32::try_from(at.saturating_duration_since(now).as_millis()).unwrap_or(u32::MAX)
        });
        let (positions, delivering): (Vec<usize>, Vec<&H::Pending>) = flights
            .iter()
            .enumerate()
            .filter_map(|(position, flight)| match &flight.state {
                FlightState::Delivering(pending) => Some((position, pending)),
                FlightState::RetryAt(_) => None,
            })
            .unzip();
        let room = window.len() < concurrency && taken.is_empty();
        let waited = host.wait_any(&delivering, room, timeout_ms);
        let mut stopping = false;
        match waited {
            Waited::Answered(index, outcome) => {
                let position = positions[index];
                match outcome {
                    Ok(answer) => {
                        let flight = flights.swap_remove(position);
                        let acknowledge = respond(host, config, &flight.message, answer);
                        window.settle(flight.message.id, acknowledge);
                    }
                    Err(DeliveryError::Failed(reason)) => {
                        let flight = &mut flights[position];
                        let failures = flight.attempt;
                        let topic = || topic_of(host, &flight.message);
                        match retry_after(host, config, topic, failures, &reason) {
                            Some(wait) => {
                                flight.state = FlightState::RetryAt(host.now() + wait);
                            }
                            None => {
                                let flight = flights.swap_remove(position);
                                let acknowledge =
                                    give_up(host, config, &flight.message, failures, &reason);
                                window.settle(flight.message.id, acknowledge);
                            }
                        }
                    }
                    Err(DeliveryError::Stopped) => stopping = true,
                }
            }
            Waited::MessageWaiting => {}
            Waited::TimedOut => {
                let now = host.now();
                for flight in &mut flights {
                    if matches!(&flight.state, FlightState::RetryAt(at) if *at <= now) {
                        flight.deliver_again(host);
                    }
                }
            }
            Waited::Stopped => stopping = true,
        }
        for (id, settled) in window.release() {
            let Some(qos) = settling.remove(&id) else {
                continue;
            };
            if settled {
                // The message is gone by now: its failure is told by the subscription.
                acknowledge(host, id, qos, || config.subscription().to_string());
            }
        }
        if stopping {
            host.log(
                Level::Info,
                &format!(
                    "shutting down: {} messages on {:?} in delivery or waiting stay unacknowledged",
                    window.len(),
                    config.subscription()
                ),
            );
            return Ok(());
        }
    }
}

/// Answers an MQTT 5 request: when the message names a response topic and the application
/// answered with data, publishes that data there with the request's correlation data.
/// `false` when that publish failed, so that the request stays unacknowledged and the broker
/// sends it again.
fn respond<H: Host>(
    host: &H,
    config: &Config,
    message: &Message<H::Payload>,
    answer: Option<H::Payload>,
) -> bool {
    if !message.request {
        return true;
    }
    let Received { topic, properties } = host.received(&message.payload);
    let Some(response_topic) = properties.response_topic else {
        return true;
    };
    let Some(answer) = answer else {
        host.log(
            Level::Debug,
            &format!(
                "the application answered the request on {topic:?} without data; no response published to {response_topic:?}"
            ),
        );
        return true;
    };
    let publish = Publish {
        topic: response_topic.clone(),
        qos: config.qos.max(Qos::AtLeastOnce),
        retain: false,
        properties: Properties {
            correlation_data: properties.correlation_data,
            ..Properties::default()
        },
    };
    match publish_with_retries(host, &publish, &answer) {
        Ok(()) => true,
        Err(error) => {
            host.log(
                Level::Error,
                &format!(
                    "publishing the application's response to {response_topic:?} failed ({error}); the request on {topic:?} stays unacknowledged, for the broker to send again"
                ),
            );
            false
        }
    }
}

/// The topic a message was published to, asked of the host for a log line.
fn topic_of<H: Host>(host: &H, message: &Message<H::Payload>) -> String {
    host.received(&message.payload).topic
}

/// Acknowledges message `id`; `topic` says which, for the log line of a failure.
fn acknowledge<H: Host>(host: &H, id: u64, qos: Qos, topic: impl FnOnce() -> String) -> Settled {
    // QoS 0 has nothing to acknowledge; skipping the call saves a boundary crossing per message.
    if qos == Qos::AtMostOnce {
        return Settled::Acknowledged;
    }
    match host.ack(id) {
        Ok(()) => Settled::Acknowledged,
        Err(error) => {
            // The broker sends it again on the next connection; nothing is lost.
            host.log(
                Level::Warn,
                &format!("acknowledging a message on {:?} failed: {error}", topic()),
            );
            Settled::Unacknowledged
        }
    }
}

#[cfg(test)]
mod tests;
