//! The bookkeeping of one connection, kept apart from the I/O so that it is tested without a
//! broker: which publish an acknowledgement belongs to, which SUBSCRIBE a SUBACK answers, and
//! the received messages waiting for the component and for their acknowledgement.

use std::collections::{HashMap, VecDeque};

use rumqttc::{Publish, QoS};
use tokio::sync::oneshot;

use crate::error::BrokerError;

/// A message received on a subscription, waiting for the component.
#[derive(Debug, Clone)]
pub struct Message {
    pub id: u64,
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: QoS,
    pub retain: bool,
    pub duplicate: bool,
    /// The connection (counting reconnects) it arrived on.
    pub(super) generation: u64,
}

type Waiter = oneshot::Sender<Result<(), BrokerError>>;

/// Matches QoS 1 and 2 publishes to their acknowledgements. rumqttc gives no per-publish
/// handle: it reports `Outgoing::Publish(pkid)` as it writes each request, in the order
/// requests were queued, and later the PUBACK/PUBCOMP for that pkid. The matcher keeps the
/// waiters in the same order and pairs them up. QoS 0 publishes (written with pkid 0) have
/// nothing to wait for and are not tracked.
#[derive(Debug, Default)]
pub(super) struct AckMatcher {
    /// Waiters whose requests are queued but not yet written, oldest first.
    queued: VecDeque<Waiter>,
    /// Waiters of written QoS 1/2 publishes, by packet id.
    in_flight: HashMap<u16, Waiter>,
    /// A publish rumqttc held back because its pkid was still in use (`AwaitAck`).
    collided: Option<(u16, Waiter)>,
    /// How many of the oldest `queued` requests rumqttc pulled back on a disconnect.
    drained: usize,
}

impl AckMatcher {
    pub(super) fn queued(&mut self, waiter: Waiter) {
        self.queued.push_back(waiter);
    }

    /// The request of the newest waiter could not be queued after all.
    pub(super) fn unqueued(&mut self) {
        self.queued.pop_back();
    }

    pub(super) fn written(&mut self, pkid: u16) {
        if pkid == 0 {
            // QoS 0: nobody waits for it.
            return;
        }
        if self.in_flight.contains_key(&pkid) {
            // A resend after reconnecting (MQTT 3.1.1 section 4.4): same packet, same waiter.
            return;
        }
        let waiter = match self.collided.take() {
            Some((held, waiter)) if held == pkid => Some(waiter),
            other => {
                self.collided = other;
                self.drained = self.drained.saturating_sub(1);
                self.queued.pop_front()
            }
        };
        if let Some(waiter) = waiter {
            self.in_flight.insert(pkid, waiter);
        }
    }

    pub(super) fn collided(&mut self, pkid: u16) {
        if let Some(waiter) = self.queued.pop_front() {
            self.drained = self.drained.saturating_sub(1);
            self.collided = Some((pkid, waiter));
        }
    }

    pub(super) fn acknowledged(&mut self, pkid: u16) {
        if let Some(waiter) = self.in_flight.remove(&pkid) {
            let _ = waiter.send(Ok(()));
        }
    }

    pub(super) fn disconnected(&mut self, drained: usize) {
        self.drained = drained;
    }

    /// Without a session the broker forgot every unacknowledged packet, and rumqttc dropped
    /// what it would have resent and what it pulled back from its queue: fail those waiters
    /// so callers can retry now instead of waiting out their timeouts.
    pub(super) fn reconnected(&mut self, session_present: bool) {
        if !session_present {
            let lost = || {
                BrokerError::Unreachable(
                    "connection lost before the broker acknowledged the message".into(),
                )
            };
            for (_, waiter) in self.in_flight.drain() {
                let _ = waiter.send(Err(lost()));
            }
            if let Some((_, waiter)) = self.collided.take() {
                let _ = waiter.send(Err(lost()));
            }
            for waiter in self.queued.drain(..self.drained.min(self.queued.len())) {
                let _ = waiter.send(Err(lost()));
            }
        }
        self.drained = 0;
    }

    pub(super) fn fail_all(&mut self, error: BrokerError) {
        let waiters = self
            .queued
            .drain(..)
            .chain(self.in_flight.drain().map(|(_, w)| w));
        for waiter in waiters.chain(self.collided.take().map(|(_, w)| w)) {
            let _ = waiter.send(Err(error.clone()));
        }
    }
}

pub(super) type SubWaiter = oneshot::Sender<Result<(), BrokerError>>;

/// The subscriptions to renew after a reconnect, and the matching of SUBSCRIBE requests to
/// their SUBACKs (same scheme as [`AckMatcher`]: rumqttc reports `Outgoing::Subscribe(pkid)`
/// in request order).
#[derive(Debug, Default)]
pub(super) struct Subscriptions {
    filters: Vec<(String, QoS)>,
    /// One entry per queued SUBSCRIBE, oldest first: a caller waiting, or `None` for a
    /// renewal nobody waits for.
    expected: VecDeque<Option<SubWaiter>>,
    in_flight: HashMap<u16, SubWaiter>,
    drained: usize,
}

impl Subscriptions {
    /// Notes a SUBSCRIBE about to be queued: a caller waiting for its SUBACK, or `None`.
    pub(super) fn expect(&mut self, waiter: Option<SubWaiter>) {
        self.expected.push_back(waiter);
    }

    /// The newest SUBSCRIBE could not be queued after all.
    pub(super) fn unexpect(&mut self) {
        self.expected.pop_back();
    }

    /// The filters to renew after a reconnect.
    pub(super) fn filters(&self) -> Vec<(String, QoS)> {
        self.filters.clone()
    }

    pub(super) fn record(&mut self, filter: &str, qos: QoS) {
        match self.filters.iter_mut().find(|(known, _)| known == filter) {
            Some(entry) => entry.1 = qos,
            None => self.filters.push((filter.to_string(), qos)),
        }
    }

    pub(super) fn written(&mut self, pkid: u16) {
        self.drained = self.drained.saturating_sub(1);
        if let Some(Some(waiter)) = self.expected.pop_front() {
            self.in_flight.insert(pkid, waiter);
        }
    }

    pub(super) fn acknowledged(&mut self, pkid: u16, refused: bool, label: &str) {
        let outcome = if refused {
            tracing::error!(connection = %label, "the broker refused a subscription");
            Err(BrokerError::NotAuthorized(
                "the broker refused the subscription (SUBACK failure)".into(),
            ))
        } else {
            Ok(())
        };
        if let Some(waiter) = self.in_flight.remove(&pkid) {
            let _ = waiter.send(outcome);
        }
    }

    pub(super) fn disconnected(&mut self, drained: usize) {
        self.drained = drained;
    }

    /// rumqttc never resends a SUBSCRIBE, and drops the ones it pulled back when the broker
    /// starts a new session: fail their callers (the renewal that follows subscribes again).
    pub(super) fn reconnected(&mut self, session_present: bool) {
        let lost = || BrokerError::Unreachable("connection lost before the SUBACK".into());
        for (_, waiter) in self.in_flight.drain() {
            let _ = waiter.send(Err(lost()));
        }
        if !session_present {
            for waiter in self
                .expected
                .drain(..self.drained.min(self.expected.len()))
                .flatten()
            {
                let _ = waiter.send(Err(lost()));
            }
        }
        self.drained = 0;
    }

    pub(super) fn fail_all(&mut self, error: BrokerError) {
        let waiters = self
            .expected
            .drain(..)
            .flatten()
            .chain(self.in_flight.drain().map(|(_, w)| w));
        for waiter in waiters {
            let _ = waiter.send(Err(error.clone()));
        }
    }
}

/// Received messages: queued in arrival order for the component, and remembered until
/// acknowledged.
#[derive(Debug, Default)]
pub(super) struct Inbox {
    queue: VecDeque<Message>,
    /// What `ack` needs (packet id, QoS) for each QoS 1/2 message not yet acknowledged.
    unacked: HashMap<u64, (u64, Publish)>,
    next_id: u64,
    /// Counts connections: 0 for the first, +1 for each reconnect.
    generation: u64,
    /// QoS 1/2 messages of generations below this are dropped unread: the broker kept the
    /// session and sends them again (delivering both would break QoS 2's exactly-once).
    stale_below: u64,
    qos0_dropped: u64,
}

/// What acknowledging a message comes to.
#[derive(Debug)]
pub(super) enum Settled {
    Ack(Publish),
    /// QoS 0, or a message of an earlier connection.
    Nothing,
    Unknown,
}

/// Most QoS 0 messages held for the component; more are dropped (QoS 1/2 are bounded by the
/// broker's in-flight window, since they are acknowledged only after delivery).
const INBOX_QOS0_LIMIT: usize = 100_000;

impl Inbox {
    /// Queues a message; `false` when it was dropped.
    pub(super) fn arrived(&mut self, publish: Publish, label: &str) -> bool {
        if publish.qos == QoS::AtMostOnce && self.queue.len() >= INBOX_QOS0_LIMIT {
            self.qos0_dropped += 1;
            if self.qos0_dropped.is_power_of_two() {
                tracing::warn!(connection = %label, dropped = self.qos0_dropped, "inbox full: QoS 0 messages dropped");
            }
            return false;
        }
        self.next_id += 1;
        let id = self.next_id;
        if publish.qos != QoS::AtMostOnce {
            let mut receipt = Publish::new("", publish.qos, Vec::new());
            receipt.pkid = publish.pkid;
            self.unacked.insert(id, (self.generation, receipt));
        }
        self.queue.push_back(Message {
            id,
            topic: publish.topic,
            payload: publish.payload.to_vec(),
            qos: publish.qos,
            retain: publish.retain,
            duplicate: publish.dup,
            generation: self.generation,
        });
        true
    }

    /// Takes up to `max` messages, oldest first.
    pub(super) fn take(&mut self, max: usize) -> Vec<Message> {
        let mut taken = Vec::with_capacity(max.min(self.queue.len()));
        while taken.len() < max {
            let Some(message) = self.queue.pop_front() else {
                break;
            };
            if message.qos != QoS::AtMostOnce && message.generation < self.stale_below {
                self.unacked.remove(&message.id);
                continue;
            }
            taken.push(message);
        }
        taken
    }

    pub(super) fn settle(&mut self, id: u64) -> Settled {
        match self.unacked.remove(&id) {
            Some((generation, publish)) if generation == self.generation => Settled::Ack(publish),
            Some(_) => Settled::Nothing,
            None if id > 0 && id <= self.next_id => Settled::Nothing,
            None => Settled::Unknown,
        }
    }

    pub(super) fn reconnected(&mut self, session_present: bool) {
        self.generation += 1;
        if session_present {
            self.stale_below = self.generation;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiter(matcher: &mut AckMatcher) -> oneshot::Receiver<Result<(), BrokerError>> {
        let (tx, rx) = oneshot::channel();
        matcher.queued(tx);
        rx
    }

    fn outcome(
        rx: &mut oneshot::Receiver<Result<(), BrokerError>>,
    ) -> Option<Result<(), BrokerError>> {
        rx.try_recv().ok()
    }

    #[test]
    fn qos0_writes_in_between_do_not_shift_the_waiters() {
        let mut m = AckMatcher::default();
        let mut a = waiter(&mut m);
        m.written(0);
        m.written(1);
        m.written(0);
        m.acknowledged(1);
        assert_eq!(outcome(&mut a), Some(Ok(())));
    }

    #[test]
    fn qos1_resolves_on_its_own_ack_in_any_order() {
        let mut m = AckMatcher::default();
        let (mut a, mut b) = (waiter(&mut m), waiter(&mut m));
        m.written(1);
        m.written(2);
        m.acknowledged(2);
        assert_eq!((outcome(&mut a), outcome(&mut b)), (None, Some(Ok(()))));
        m.acknowledged(1);
        assert_eq!(outcome(&mut a), Some(Ok(())));
    }

    #[test]
    fn resend_after_reconnect_keeps_the_waiter() {
        let mut m = AckMatcher::default();
        let mut a = waiter(&mut m);
        m.written(7);
        m.disconnected(0);
        m.reconnected(true);
        let mut b = waiter(&mut m);
        m.written(7); // the resend, not b
        m.written(8);
        m.acknowledged(7);
        assert_eq!((outcome(&mut a), outcome(&mut b)), (Some(Ok(())), None));
        m.acknowledged(8);
        assert_eq!(outcome(&mut b), Some(Ok(())));
    }

    #[test]
    fn collided_publish_is_matched_when_written_later() {
        let mut m = AckMatcher::default();
        let mut a = waiter(&mut m);
        m.written(1);
        let mut b = waiter(&mut m);
        m.collided(1); // b got pkid 1 while a still holds it
        let mut c = waiter(&mut m);
        m.acknowledged(1);
        assert_eq!(outcome(&mut a), Some(Ok(())));
        m.written(1); // b, finally
        m.written(2); // c
        m.acknowledged(2);
        m.acknowledged(1);
        assert_eq!(
            (outcome(&mut b), outcome(&mut c)),
            (Some(Ok(())), Some(Ok(())))
        );
    }

    #[test]
    fn new_session_fails_lost_waiters_and_keeps_later_ones() {
        let mut m = AckMatcher::default();
        let mut in_flight = waiter(&mut m);
        m.written(1);
        let mut drained = waiter(&mut m);
        let mut later = waiter(&mut m);
        m.disconnected(1);
        m.reconnected(false);
        assert!(matches!(
            outcome(&mut in_flight),
            Some(Err(BrokerError::Unreachable(_)))
        ));
        assert!(matches!(
            outcome(&mut drained),
            Some(Err(BrokerError::Unreachable(_)))
        ));
        assert_eq!(outcome(&mut later), None);
        m.written(1);
        m.acknowledged(1);
        assert_eq!(outcome(&mut later), Some(Ok(())));
    }

    fn publish(qos: QoS, pkid: u16, payload: &str) -> Publish {
        let mut publish = Publish::new("t", qos, payload.as_bytes().to_vec());
        publish.pkid = pkid;
        publish
    }

    fn payloads(messages: &[Message]) -> Vec<&[u8]> {
        messages.iter().map(|m| &m.payload[..]).collect()
    }

    #[test]
    fn inbox_hands_out_at_most_max_in_arrival_order() {
        let mut inbox = Inbox::default();
        for (n, payload) in ["a", "b", "c"].into_iter().enumerate() {
            assert!(inbox.arrived(publish(QoS::AtLeastOnce, n as u16 + 1, payload), "test"));
        }
        let first = inbox.take(2);
        assert_eq!(payloads(&first), [b"a", b"b"]);
        assert_eq!(payloads(&inbox.take(64)), [b"c"]);
        assert!(inbox.take(64).is_empty());
        assert!(matches!(inbox.settle(first[1].id), Settled::Ack(p) if p.pkid == 2));
        assert!(matches!(inbox.settle(first[1].id), Settled::Nothing));
    }

    #[test]
    fn inbox_drops_stale_copies_when_the_session_survived() {
        let mut inbox = Inbox::default();
        inbox.arrived(publish(QoS::AtLeastOnce, 1, "before"), "test");
        inbox.arrived(publish(QoS::AtMostOnce, 0, "qos 0 before"), "test");
        inbox.reconnected(true);
        inbox.arrived(publish(QoS::AtLeastOnce, 1, "resent"), "test");
        assert_eq!(payloads(&inbox.take(64)), [&b"qos 0 before"[..], b"resent"]);
    }

    #[test]
    fn abandoned_waiter_does_not_shift_the_others() {
        let mut m = AckMatcher::default();
        drop(waiter(&mut m)); // its caller timed out
        let mut b = waiter(&mut m);
        m.written(1);
        m.written(2);
        m.acknowledged(1);
        assert_eq!(outcome(&mut b), None);
        m.acknowledged(2);
        assert_eq!(outcome(&mut b), Some(Ok(())));
    }
}
