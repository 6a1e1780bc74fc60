//! What this client receives: messages queued in arrival order for the component, the
//! acknowledgement each one still owes the broker, and QoS 2's receive state (ids answered
//! with PUBREC whose PUBREL has not come). Pure bookkeeping, tested without a broker.

use std::collections::{HashMap, HashSet, VecDeque};

use bytes::Bytes;

use crate::packet::Publish;
use crate::{MessageProperties, QoS};

/// A message received on a subscription, waiting for the component.
#[derive(Debug, Clone)]
pub struct Message {
    pub id: u64,
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub duplicate: bool,
    /// MQTT 5 properties; empty at MQTT 3.1.1.
    pub properties: MessageProperties,
    /// The connection (counting reconnects) it arrived on.
    pub(super) generation: u64,
}

/// What acknowledging a message comes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Settled {
    /// Write PUBACK (QoS 1) or PUBREC (QoS 2) with this packet id, on the connection of
    /// this generation only.
    Ack {
        pkid: u16,
        qos: QoS,
        generation: u64,
    },
    /// QoS 0, or a message of an earlier connection.
    Nothing,
    Unknown,
}

/// What to do with a PUBLISH that just arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Arrival {
    /// Queued for the component.
    Queued,
    /// A QoS 2 message already answered with PUBREC (a resend): answer PUBREC again, do not
    /// deliver it twice.
    Duplicate,
    /// Dropped: the QoS 0 queue is full.
    Dropped,
}

/// Most QoS 0 messages held for the component; more are dropped (QoS 1/2 are bounded by the
/// broker's in-flight window, since they are acknowledged only after delivery).
const QOS0_LIMIT: usize = 100_000;

#[derive(Debug, Default)]
pub(super) struct Inbox {
    queue: VecDeque<Message>,
    /// Packet id and QoS of each QoS 1/2 message not yet acknowledged, by message id.
    unacked: HashMap<u64, (u64, u16, QoS)>,
    /// QoS 2 ids answered with PUBREC, until their PUBREL (MQTT 3.1.1 section 4.3.3).
    released: HashSet<u16>,
    next_id: u64,
    /// Counts connections: 0 for the first, +1 for each reconnect.
    generation: u64,
    /// QoS 1/2 messages of generations below this are dropped unread: the broker kept the
    /// session and sends them again (delivering both would break QoS 2's exactly-once).
    stale_below: u64,
    qos0_dropped: u64,
}

impl Inbox {
    pub(super) fn arrived(&mut self, publish: Publish, label: &str) -> Arrival {
        if publish.qos == QoS::ExactlyOnce && self.released.contains(&publish.pkid) {
            return Arrival::Duplicate;
        }
        if publish.qos == QoS::AtMostOnce && self.queue.len() >= QOS0_LIMIT {
            self.qos0_dropped += 1;
            if self.qos0_dropped.is_power_of_two() {
                tracing::warn!(connection = %label, dropped = self.qos0_dropped, "inbox full: QoS 0 messages dropped");
            }
            return Arrival::Dropped;
        }
        self.next_id += 1;
        let id = self.next_id;
        if publish.qos != QoS::AtMostOnce {
            self.unacked
                .insert(id, (self.generation, publish.pkid, publish.qos));
        }
        self.queue.push_back(Message {
            id,
            topic: topic_text(publish.topic),
            payload: publish.payload,
            qos: publish.qos,
            retain: publish.retain,
            duplicate: publish.dup,
            properties: publish.properties,
            generation: self.generation,
        });
        Arrival::Queued
    }

    /// Messages received and not yet taken.
    pub(super) fn waiting(&self) -> usize {
        self.queue.len()
    }

    /// Connections after the first.
    pub(super) fn reconnects(&self) -> u64 {
        self.generation
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
            Some((generation, pkid, qos)) if generation == self.generation => {
                if qos == QoS::ExactlyOnce {
                    self.released.insert(pkid);
                }
                Settled::Ack {
                    pkid,
                    qos,
                    generation,
                }
            }
            Some(_) => Settled::Nothing,
            None if id > 0 && id <= self.next_id => Settled::Nothing,
            None => Settled::Unknown,
        }
    }

    /// PUBREL: QoS 2's receive flow for this id is over.
    pub(super) fn pubrel(&mut self, pkid: u16) {
        self.released.remove(&pkid);
    }

    pub(super) fn reconnected(&mut self, session_present: bool) {
        self.generation += 1;
        if session_present {
            self.stale_below = self.generation;
        } else {
            // A new session: the broker forgot the PUBRECs it had.
            self.released.clear();
        }
    }
}

/// A topic as text. At MQTT 3.1.1 the codec hands over the bytes of the topic's own
/// `String`, taken back without a copy; MQTT requires UTF-8, and a broker that breaks the
/// rule gets U+FFFD in its place.
fn topic_text(topic: Bytes) -> String {
    String::from_utf8(Vec::from(topic))
        .unwrap_or_else(|invalid| String::from_utf8_lossy(invalid.as_bytes()).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(qos: QoS, pkid: u16, payload: &str) -> Publish {
        Publish {
            dup: false,
            qos,
            retain: false,
            topic: "t".into(),
            pkid,
            payload: payload.to_owned().into(),
            properties: MessageProperties::default(),
        }
    }

    fn payloads(messages: &[Message]) -> Vec<&[u8]> {
        messages.iter().map(|m| &m.payload[..]).collect()
    }

    #[test]
    fn hands_out_at_most_max_in_arrival_order() {
        let mut inbox = Inbox::default();
        for (n, payload) in ["a", "b", "c"].into_iter().enumerate() {
            let arrival = inbox.arrived(publish(QoS::AtLeastOnce, n as u16 + 1, payload), "test");
            assert_eq!(arrival, Arrival::Queued);
        }
        let first = inbox.take(2);
        assert_eq!(payloads(&first), [b"a", b"b"]);
        assert_eq!(payloads(&inbox.take(64)), [b"c"]);
        assert!(inbox.take(64).is_empty());
        assert_eq!(
            inbox.settle(first[1].id),
            Settled::Ack {
                pkid: 2,
                qos: QoS::AtLeastOnce,
                generation: 0
            }
        );
        assert_eq!(inbox.settle(first[1].id), Settled::Nothing);
        assert_eq!(inbox.settle(99), Settled::Unknown);
    }

    #[test]
    fn drops_stale_copies_when_the_session_survived() {
        let mut inbox = Inbox::default();
        inbox.arrived(publish(QoS::AtLeastOnce, 1, "before"), "test");
        inbox.arrived(publish(QoS::AtMostOnce, 0, "qos 0 before"), "test");
        inbox.reconnected(true);
        inbox.arrived(publish(QoS::AtLeastOnce, 1, "resent"), "test");
        assert_eq!(payloads(&inbox.take(64)), [&b"qos 0 before"[..], b"resent"]);
    }

    #[test]
    fn message_of_an_earlier_connection_is_not_acknowledged() {
        let mut inbox = Inbox::default();
        inbox.arrived(publish(QoS::AtLeastOnce, 1, "a"), "test");
        let taken = inbox.take(1);
        inbox.reconnected(false);
        assert_eq!(inbox.settle(taken[0].id), Settled::Nothing);
    }

    #[test]
    fn qos2_resend_after_pubrec_is_not_delivered_twice() {
        let mut inbox = Inbox::default();
        inbox.arrived(publish(QoS::ExactlyOnce, 4, "once"), "test");
        let taken = inbox.take(1);
        assert!(matches!(
            inbox.settle(taken[0].id),
            Settled::Ack { pkid: 4, .. }
        ));
        assert_eq!(
            inbox.arrived(publish(QoS::ExactlyOnce, 4, "once"), "test"),
            Arrival::Duplicate
        );
        inbox.pubrel(4);
        assert_eq!(
            inbox.arrived(publish(QoS::ExactlyOnce, 4, "next"), "test"),
            Arrival::Queued
        );
    }
}
