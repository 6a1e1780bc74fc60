//! What this client sends and waits for: the publishes accepted but not yet written, and
//! every packet id in use with the request that owns it. Pure bookkeeping, driven by the
//! connection task (`driver`) and tested here without a network.
//!
//! # Invariants
//!
//! Pairing is exact because this client assigns packet ids itself, when it writes a packet,
//! and never infers which request an answer belongs to:
//!
//! 1. **One owner per id.** An id is taken when its PUBLISH or SUBSCRIBE is written and
//!    given to exactly one request; it is free again only when the protocol says the broker
//!    is done with it: PUBACK (QoS 1), PUBCOMP (QoS 2), SUBACK, or a new session (CONNACK
//!    with session-present 0, when the broker forgot every id). An acknowledgement for an id
//!    can therefore only answer its owner.
//! 2. **Written exactly once, or never.** A publish's [`Ticket`] is shared by its caller and
//!    the connection task; whichever of them moves it first decides. The task moves it to
//!    `written` just before the packet goes into the write buffer; a caller that gives up
//!    moves it to `abandoned`, and an abandoned publish is dropped unwritten. So a caller
//!    that was told "not sent" is never followed by the packet, and a caller whose packet
//!    was written is told "may have reached the broker", never "not sent".
//! 3. **A connection lost** leaves every id where it is: the answers still owed belong to the
//!    next connection of the same session, or to nobody.
//! 4. **The next CONNACK decides.** With session-present 1 (MQTT 3.1.1 section 4.4) every
//!    publish still waiting for PUBACK/PUBREC is written again with DUP set, same id, in its
//!    original order, and every PUBREL is written again; a QoS 1 publish whose caller gave
//!    up is dropped instead (the broker keeps no QoS 1 state, so its id is free; a resend
//!    could make a copy nobody waits for), while a QoS 2 one is still resent (the broker
//!    discards the copy if it has one, and would otherwise keep the id). With session-present
//!    0 the broker forgot everything: each written publish fails as unconfirmed (it may have
//!    been delivered; sending it again could deliver it twice), and every id is free.
//!    SUBSCRIBEs are never resent: the caller is told the connection was lost, and the
//!    subscription is renewed by a new SUBSCRIBE.
//! 5. **Publishes not yet written** stay queued across a reconnect, in order, until written
//!    or abandoned by their callers.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use tokio::sync::oneshot;

use crate::QoS;
use crate::error::{BrokerError, Rejection};
use crate::packet::{Outgoing, Publish, Subscribe};

/// Where a caller learns how its request ended.
pub(super) type Reply = oneshot::Sender<Result<(), BrokerError>>;

/// Who decides whether a publish is written: its caller (by giving up first) or the
/// connection task (by writing it first). See invariant 2.
#[derive(Debug, Default)]
pub(super) struct Ticket(AtomicU8);

const QUEUED: u8 = 0;
const WRITTEN: u8 = 1;
const ABANDONED: u8 = 2;

impl Ticket {
    /// The task is about to write the packet; `false` if the caller gave up first.
    fn write(&self) -> bool {
        self.0
            .compare_exchange(QUEUED, WRITTEN, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// The caller gives up; `true` if the packet was never written and now never will be.
    pub(super) fn abandon(&self) -> bool {
        self.0
            .compare_exchange(QUEUED, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
            || self.0.load(Ordering::Acquire) == ABANDONED
    }
}

/// A publish accepted from a caller, not yet written.
#[derive(Debug)]
pub(super) struct Job {
    pub publish: Publish,
    pub ticket: Arc<Ticket>,
    /// `None` at QoS 0, which nobody waits for.
    pub reply: Option<Reply>,
}

#[derive(Debug)]
enum Slot {
    Publish {
        publish: Publish,
        reply: Reply,
        /// PUBREC received, PUBREL written: QoS 2's second half.
        released: bool,
        /// Write order, for resending in the original order.
        order: u64,
    },
    Subscribe {
        reply: Option<Reply>,
    },
}

/// The outgoing half of one MQTT session. See the module documentation for its invariants.
#[derive(Debug)]
pub(super) struct Outbox {
    waiting: VecDeque<Job>,
    slots: BTreeMap<u16, Slot>,
    publishes_in_flight: usize,
    max_in_flight: usize,
    /// The host's own limit, before any broker's receive maximum.
    host_max_in_flight: usize,
    next_id: u16,
    next_order: u64,
}

impl Outbox {
    /// `max_in_flight` bounds the QoS 1/2 publishes written and not yet completed.
    pub(super) fn new(max_in_flight: usize) -> Self {
        let max_in_flight = max_in_flight.clamp(1, usize::from(u16::MAX) - 1);
        Self {
            waiting: VecDeque::new(),
            slots: BTreeMap::new(),
            publishes_in_flight: 0,
            max_in_flight,
            host_max_in_flight: max_in_flight,
            next_id: 0,
            next_order: 0,
        }
    }

    /// Queues a publish behind those already accepted.
    pub(super) fn accept(&mut self, job: Job) {
        self.waiting.push_back(job);
    }

    /// The next packet to write from the waiting publishes, if one may go now: QoS 0 always,
    /// QoS 1/2 while fewer than `max_in_flight` are in flight. Publishes whose callers gave
    /// up are dropped on the way (invariant 2).
    pub(super) fn next_publish(&mut self) -> Option<Publish> {
        loop {
            let job = self.waiting.front()?;
            let needs_id = job.publish.qos != QoS::AtMostOnce;
            if needs_id && self.publishes_in_flight >= self.max_in_flight {
                return None;
            }
            let Job {
                mut publish,
                ticket,
                reply,
            } = self.waiting.pop_front()?;
            if !ticket.write() {
                continue;
            }
            let Some(reply) = reply.filter(|_| needs_id) else {
                return Some(publish);
            };
            let id = self.take_id();
            publish.pkid = id;
            self.publishes_in_flight += 1;
            self.next_order += 1;
            self.slots.insert(
                id,
                Slot::Publish {
                    publish: publish.clone(),
                    reply,
                    released: false,
                    order: self.next_order,
                },
            );
            return Some(publish);
        }
    }

    /// A SUBSCRIBE to write now, with an id of its own. `reply` is `None` for a renewal.
    pub(super) fn subscribe(
        &mut self,
        filter: String,
        qos: QoS,
        reply: Option<Reply>,
    ) -> Subscribe {
        let id = self.take_id();
        self.slots.insert(id, Slot::Subscribe { reply });
        Subscribe {
            pkid: id,
            filter,
            qos,
        }
    }

    /// PUBACK: the QoS 1 publish with this id is complete; taken by the broker, or (MQTT 5)
    /// refused with `rejection`.
    pub(super) fn puback(
        &mut self,
        id: u16,
        rejection: Option<Rejection>,
    ) -> Result<(), Unexpected> {
        match self.slots.get(&id) {
            Some(Slot::Publish { publish, .. }) if publish.qos == QoS::AtLeastOnce => {
                self.complete(id, rejection);
                Ok(())
            }
            _ => Err(Unexpected("PUBACK", id)),
        }
    }

    /// PUBREC: the broker has the QoS 2 publish with this id; answer with a PUBREL for the id
    /// returned.
    /// A PUBREC that refuses it (MQTT 5, `rejection`) ends the exchange instead: no PUBREL
    /// follows (MQTT 5 section 4.3.3).
    pub(super) fn pubrec(
        &mut self,
        id: u16,
        rejection: Option<Rejection>,
    ) -> Result<Option<u16>, Unexpected> {
        match self.slots.get_mut(&id) {
            Some(Slot::Publish {
                publish,
                released: false,
                ..
            }) if publish.qos == QoS::ExactlyOnce => {
                if rejection.is_some() {
                    self.complete(id, rejection);
                    return Ok(None);
                }
                if let Some(Slot::Publish {
                    publish, released, ..
                }) = self.slots.get_mut(&id)
                {
                    *released = true;
                    // The payload is not needed any more: only PUBREL can be resent now.
                    publish.payload = Default::default();
                }
                Ok(Some(id))
            }
            Some(Slot::Publish {
                publish,
                released: true,
                ..
            }) if publish.qos == QoS::ExactlyOnce => Ok(Some(id)),
            _ => Err(Unexpected("PUBREC", id)),
        }
    }

    /// PUBCOMP: the QoS 2 publish with this id is complete.
    pub(super) fn pubcomp(&mut self, id: u16) -> Result<(), Unexpected> {
        match self.slots.get(&id) {
            Some(Slot::Publish { released: true, .. }) => {
                self.complete(id, None);
                Ok(())
            }
            _ => Err(Unexpected("PUBCOMP", id)),
        }
    }

    /// SUBACK: answers the SUBSCRIBE with this id; `refused` with the broker's reason.
    pub(super) fn suback(&mut self, id: u16, refused: Option<Rejection>) -> Result<(), Unexpected> {
        match self.slots.remove(&id) {
            Some(Slot::Subscribe { reply }) => {
                let outcome = match refused {
                    None => Ok(()),
                    Some(rejection) if rejection.code == 0x87 || rejection.code == 0x80 => {
                        Err(BrokerError::NotAuthorized(format!(
                            "the broker refused the subscription: {rejection}"
                        )))
                    }
                    Some(rejection) => Err(BrokerError::Rejected(rejection)),
                };
                if let Some(reply) = reply {
                    let _ = reply.send(outcome);
                }
                Ok(())
            }
            Some(other) => {
                self.slots.insert(id, other);
                Err(Unexpected("SUBACK", id))
            }
            None => Err(Unexpected("SUBACK", id)),
        }
    }

    /// Whether an answer is owed on the current connection (for finding a dead link).
    pub(super) fn awaiting_answers(&self) -> bool {
        !self.slots.is_empty()
    }

    /// The connection is gone: SUBSCRIBEs are not resent, so their callers learn it now
    /// (invariant 4); publishes wait for the next CONNACK.
    pub(super) fn lost(&mut self) {
        self.slots.retain(|_, slot| match slot {
            Slot::Subscribe { reply } => {
                if let Some(reply) = reply.take() {
                    let _ = reply.send(Err(BrokerError::Unreachable(
                        "the connection was lost before the SUBACK; the subscription is renewed when it reconnects".into(),
                    )));
                }
                false
            }
            Slot::Publish { .. } => true,
        });
    }

    /// A new connection is accepted: returns what must be written again, in order, before
    /// anything new (invariant 4).
    pub(super) fn resumed(&mut self, session_present: bool) -> Vec<Outgoing> {
        if !session_present {
            for (_, slot) in std::mem::take(&mut self.slots) {
                if let Slot::Publish { reply, .. } = slot {
                    let _ = reply.send(Err(BrokerError::Unconfirmed(
                        "the connection was lost after the message was sent and the broker started a new session; it was not sent again, to avoid a second copy".into(),
                    )));
                }
            }
            self.publishes_in_flight = 0;
            return Vec::new();
        }
        let abandoned_qos1: Vec<u16> = self
            .slots
            .iter()
            .filter_map(|(&id, slot)| match slot {
                Slot::Publish {
                    publish,
                    reply,
                    released: false,
                    ..
                } if publish.qos == QoS::AtLeastOnce && reply.is_closed() => Some(id),
                _ => None,
            })
            .collect();
        for id in abandoned_qos1 {
            self.complete(id, None);
        }
        let mut resends: Vec<(u64, Outgoing)> = self
            .slots
            .iter()
            .filter_map(|(&id, slot)| match slot {
                Slot::Publish {
                    released: true,
                    order,
                    ..
                } => Some((*order, Outgoing::PubRel(id))),
                Slot::Publish { publish, order, .. } => {
                    let mut again = publish.clone();
                    again.dup = true;
                    Some((*order, Outgoing::Publish(again)))
                }
                Slot::Subscribe { .. } => None,
            })
            .collect();
        resends.sort_by_key(|(order, _)| *order);
        resends.into_iter().map(|(_, packet)| packet).collect()
    }

    /// The connection is closing for good: every request still open gets `error`, or, for a
    /// publish already written, an unconfirmed error.
    pub(super) fn close(&mut self, error: &BrokerError) {
        for job in self.waiting.drain(..) {
            if let Some(reply) = job.reply {
                let _ = reply.send(Err(error.clone()));
            }
        }
        for (_, slot) in std::mem::take(&mut self.slots) {
            match slot {
                Slot::Publish { reply, .. } => {
                    let _ = reply.send(Err(BrokerError::Unconfirmed(format!(
                        "the message was sent, but the connection closed before the broker acknowledged it ({error})"
                    ))));
                }
                Slot::Subscribe { reply: Some(reply) } => {
                    let _ = reply.send(Err(error.clone()));
                }
                Slot::Subscribe { reply: None } => {}
            }
        }
        self.publishes_in_flight = 0;
    }

    /// Waiting QoS 0 publishes, to write before a clean DISCONNECT; QoS 1/2 ones still
    /// waiting are failed as not sent.
    pub(super) fn drain_for_disconnect(&mut self) -> Vec<Publish> {
        let mut qos0 = Vec::new();
        for job in self.waiting.drain(..) {
            match job.reply {
                None if job.ticket.write() => qos0.push(job.publish),
                None => {}
                Some(reply) if job.ticket.abandon() => {
                    let _ = reply.send(Err(BrokerError::Closed));
                }
                Some(_) => {}
            }
        }
        qos0
    }

    fn complete(&mut self, id: u16, rejection: Option<Rejection>) {
        if let Some(Slot::Publish { reply, .. }) = self.slots.remove(&id) {
            self.publishes_in_flight -= 1;
            let _ = reply.send(match rejection {
                None => Ok(()),
                Some(rejection) => Err(BrokerError::Rejected(rejection)),
            });
        }
    }

    /// A publish taken by [`Outbox::next_publish`] could not be written after all (it is
    /// larger than the broker accepts): its caller gets `error`, and its id is free.
    pub(super) fn unsent(&mut self, id: u16, error: BrokerError) {
        if let Some(Slot::Publish { reply, .. }) = self.slots.remove(&id) {
            self.publishes_in_flight -= 1;
            let _ = reply.send(Err(error));
        }
    }

    /// The broker's receive maximum (MQTT 5 CONNACK; `None` at 3.1.1 or when it sent none):
    /// at most this many QoS 1/2 publishes unacknowledged at once, on top of the host's own
    /// limit. Set again on every new connection.
    pub(super) fn set_receive_maximum(&mut self, receive_maximum: Option<u16>) {
        self.max_in_flight = match receive_maximum {
            Some(most) => self.host_max_in_flight.min(usize::from(most.max(1))),
            None => self.host_max_in_flight,
        };
    }

    /// The next free packet id after the last one taken (ids cycle through 1..=65535, so an
    /// id is not reused sooner than it must be).
    fn take_id(&mut self) -> u16 {
        loop {
            self.next_id = self.next_id.checked_add(1).unwrap_or(1);
            if !self.slots.contains_key(&self.next_id) {
                return self.next_id;
            }
        }
    }
}

/// An acknowledgement no request of this session is waiting for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Unexpected(pub &'static str, pub u16);

impl std::fmt::Display for Unexpected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} for packet id {} that nothing waits for",
            self.0, self.1
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Outcome = oneshot::Receiver<Result<(), BrokerError>>;

    struct Caller {
        ticket: Arc<Ticket>,
        outcome: Outcome,
    }

    impl Caller {
        fn result(&mut self) -> Option<Result<(), BrokerError>> {
            self.outcome.try_recv().ok()
        }
    }

    fn publish(qos: QoS, payload: &str) -> Publish {
        Publish {
            dup: false,
            qos,
            retain: false,
            topic: "t".into(),
            pkid: 0,
            payload: payload.to_owned().into(),
            properties: crate::MessageProperties::default(),
        }
    }

    fn accept(outbox: &mut Outbox, qos: QoS, payload: &str) -> Caller {
        let (reply, outcome) = oneshot::channel();
        let ticket = Arc::new(Ticket::default());
        outbox.accept(Job {
            publish: publish(qos, payload),
            ticket: ticket.clone(),
            reply: Some(reply),
        });
        Caller { ticket, outcome }
    }

    fn write_all(outbox: &mut Outbox) -> Vec<Publish> {
        std::iter::from_fn(|| outbox.next_publish()).collect()
    }

    fn ids(publishes: &[Publish]) -> Vec<u16> {
        publishes.iter().map(|p| p.pkid).collect()
    }

    #[test]
    fn each_ack_answers_the_publish_written_with_its_id() {
        let mut outbox = Outbox::new(10);
        let mut a = accept(&mut outbox, QoS::AtLeastOnce, "a");
        let mut b = accept(&mut outbox, QoS::AtLeastOnce, "b");
        let written = write_all(&mut outbox);
        assert_eq!(ids(&written), [1, 2]);
        outbox.puback(2, None).expect("b's PUBACK");
        assert_eq!((a.result(), b.result()), (None, Some(Ok(()))));
        outbox.puback(1, None).expect("a's PUBACK");
        assert_eq!(a.result(), Some(Ok(())));
    }

    #[test]
    fn an_ack_for_an_id_nobody_owns_answers_nobody() {
        let mut outbox = Outbox::new(10);
        let mut a = accept(&mut outbox, QoS::AtLeastOnce, "a");
        write_all(&mut outbox);
        assert_eq!(outbox.puback(7, None), Err(Unexpected("PUBACK", 7)));
        assert_eq!(outbox.pubcomp(1), Err(Unexpected("PUBCOMP", 1)));
        assert_eq!(a.result(), None);
    }

    #[test]
    fn caller_that_gave_up_before_the_write_is_never_written() {
        let mut outbox = Outbox::new(10);
        let a = accept(&mut outbox, QoS::AtLeastOnce, "a");
        let mut b = accept(&mut outbox, QoS::AtLeastOnce, "b");
        assert!(a.ticket.abandon(), "a was not written yet");
        let written = write_all(&mut outbox);
        assert_eq!(written.len(), 1);
        assert_eq!(&written[0].payload[..], b"b");
        outbox.puback(written[0].pkid, None).expect("b's PUBACK");
        assert_eq!(b.result(), Some(Ok(())));
    }

    #[test]
    fn caller_cannot_abandon_a_written_publish() {
        let mut outbox = Outbox::new(10);
        let a = accept(&mut outbox, QoS::AtLeastOnce, "a");
        write_all(&mut outbox);
        assert!(
            !a.ticket.abandon(),
            "a was written: it may have reached the broker"
        );
    }

    #[test]
    fn id_assigned_then_connection_lost_before_the_write_stays_queued() {
        // Accepted while connected, not written when the connection dropped: it is written
        // on the next connection, whatever the session, and answered there.
        let mut outbox = Outbox::new(10);
        let mut a = accept(&mut outbox, QoS::AtLeastOnce, "a");
        outbox.lost();
        assert!(outbox.resumed(false).is_empty());
        let written = write_all(&mut outbox);
        assert_eq!(ids(&written), [1]);
        outbox
            .puback(1, None)
            .expect("PUBACK on the new connection");
        assert_eq!(a.result(), Some(Ok(())));
    }

    #[test]
    fn lost_after_the_write_with_a_surviving_session_resends_with_dup() {
        let mut outbox = Outbox::new(10);
        let mut a = accept(&mut outbox, QoS::AtLeastOnce, "a");
        let mut b = accept(&mut outbox, QoS::ExactlyOnce, "b");
        write_all(&mut outbox);
        outbox.lost();
        let resent = outbox.resumed(true);
        let resent: Vec<(u16, bool, Vec<u8>)> = resent
            .into_iter()
            .map(|packet| match packet {
                Outgoing::Publish(p) => (p.pkid, p.dup, p.payload.to_vec()),
                other => panic!("expected publishes, got {other:?}"),
            })
            .collect();
        assert_eq!(resent, [(1, true, b"a".to_vec()), (2, true, b"b".to_vec())]);
        outbox.puback(1, None).expect("a's PUBACK");
        outbox.pubrec(2, None).expect("b's PUBREC");
        outbox.pubcomp(2).expect("b's PUBCOMP");
        assert_eq!((a.result(), b.result()), (Some(Ok(())), Some(Ok(()))));
    }

    #[test]
    fn lost_after_pubrec_resends_only_the_pubrel() {
        let mut outbox = Outbox::new(10);
        let mut a = accept(&mut outbox, QoS::ExactlyOnce, "a");
        write_all(&mut outbox);
        outbox.pubrec(1, None).expect("PUBREC");
        outbox.lost();
        assert_eq!(outbox.resumed(true), [Outgoing::PubRel(1)]);
        outbox.pubcomp(1).expect("PUBCOMP");
        assert_eq!(a.result(), Some(Ok(())));
    }

    #[test]
    fn lost_after_the_write_without_a_session_fails_as_unconfirmed_and_frees_the_ids() {
        let mut outbox = Outbox::new(1);
        let mut a = accept(&mut outbox, QoS::AtLeastOnce, "a");
        let mut b = accept(&mut outbox, QoS::AtLeastOnce, "b");
        assert_eq!(ids(&write_all(&mut outbox)), [1], "one in flight at most");
        outbox.lost();
        assert!(outbox.resumed(false).is_empty());
        assert!(matches!(a.result(), Some(Err(BrokerError::Unconfirmed(_)))));
        // b was never written: it goes out now, with a fresh id.
        let written = write_all(&mut outbox);
        assert_eq!(ids(&written), [2]);
        outbox.puback(2, None).expect("b's PUBACK");
        assert_eq!(b.result(), Some(Ok(())));
    }

    #[test]
    fn ids_reused_on_a_new_connection_answer_only_their_new_owner() {
        let mut outbox = Outbox::new(10);
        let mut old = accept(&mut outbox, QoS::AtLeastOnce, "old");
        write_all(&mut outbox);
        outbox.lost();
        outbox.resumed(false);
        assert!(matches!(
            old.result(),
            Some(Err(BrokerError::Unconfirmed(_)))
        ));
        // Ids cycle on; force reuse of id 1 by going round once.
        outbox.next_id = u16::MAX;
        let mut new = accept(&mut outbox, QoS::AtLeastOnce, "new");
        assert_eq!(ids(&write_all(&mut outbox)), [1]);
        outbox
            .puback(1, None)
            .expect("PUBACK for the new owner of id 1");
        assert_eq!(new.result(), Some(Ok(())));
    }

    #[test]
    fn stale_event_sequence_of_the_old_design_cannot_shift_pairings() {
        // The sequence that broke inferred pairing: a publish gets id 5, the connection drops
        // as it is written, the broker starts a new session, and the next publishes are
        // acknowledged. Here each answer can only reach the owner of its id.
        let mut outbox = Outbox::new(10);
        outbox.next_id = 4;
        let mut lost = accept(&mut outbox, QoS::AtLeastOnce, "lost");
        assert_eq!(ids(&write_all(&mut outbox)), [5]);
        outbox.lost();
        outbox.resumed(false);
        let mut b = accept(&mut outbox, QoS::AtLeastOnce, "b");
        let mut c = accept(&mut outbox, QoS::AtLeastOnce, "c");
        assert_eq!(ids(&write_all(&mut outbox)), [6, 7]);
        outbox.puback(6, None).expect("b's PUBACK");
        assert!(matches!(
            lost.result(),
            Some(Err(BrokerError::Unconfirmed(_)))
        ));
        assert_eq!((b.result(), c.result()), (Some(Ok(())), None));
        outbox.puback(7, None).expect("c's PUBACK");
        assert_eq!(c.result(), Some(Ok(())));
        // A stale answer for the lost id is refused, not given to anyone.
        assert!(outbox.puback(5, None).is_err());
    }

    #[test]
    fn surviving_session_drops_abandoned_qos1_but_resends_abandoned_qos2() {
        let mut outbox = Outbox::new(10);
        let a = accept(&mut outbox, QoS::AtLeastOnce, "a");
        let b = accept(&mut outbox, QoS::ExactlyOnce, "b");
        write_all(&mut outbox);
        drop(a); // its caller timed out after the write
        drop(b);
        outbox.lost();
        let resent = outbox.resumed(true);
        assert!(
            matches!(&resent[..], [Outgoing::Publish(p)] if p.pkid == 2 && p.dup),
            "only the QoS 2 publish is resent: {resent:?}"
        );
        assert!(outbox.puback(1, None).is_err(), "id 1 is free again");
    }

    #[test]
    fn in_flight_limit_holds_publishes_until_an_ack_frees_room() {
        let mut outbox = Outbox::new(2);
        let _callers: Vec<Caller> = (0..3)
            .map(|n| accept(&mut outbox, QoS::AtLeastOnce, &n.to_string()))
            .collect();
        assert_eq!(ids(&write_all(&mut outbox)), [1, 2]);
        outbox.puback(1, None).expect("PUBACK");
        assert_eq!(ids(&write_all(&mut outbox)), [3]);
    }

    #[test]
    fn qos0_goes_in_order_without_an_id() {
        let mut outbox = Outbox::new(1);
        let _a = accept(&mut outbox, QoS::AtLeastOnce, "a");
        outbox.accept(Job {
            publish: publish(QoS::AtMostOnce, "zero"),
            ticket: Arc::new(Ticket::default()),
            reply: None,
        });
        let _c = accept(&mut outbox, QoS::AtLeastOnce, "c");
        let written = write_all(&mut outbox);
        // c waits for room; the QoS 0 message behind a is not held back by it.
        assert_eq!(ids(&written), [1, 0]);
    }

    #[test]
    fn subscribe_and_publish_share_the_id_space() {
        let mut outbox = Outbox::new(10);
        let (reply, mut subscribed) = oneshot::channel();
        let subscribe = outbox.subscribe("t/#".into(), QoS::AtLeastOnce, Some(reply));
        let _a = accept(&mut outbox, QoS::AtLeastOnce, "a");
        let written = write_all(&mut outbox);
        assert_ne!(subscribe.pkid, written[0].pkid);
        assert!(
            outbox.puback(subscribe.pkid, None).is_err(),
            "a PUBACK cannot answer a SUBSCRIBE"
        );
        outbox.suback(subscribe.pkid, None).expect("SUBACK");
        assert_eq!(subscribed.try_recv().ok(), Some(Ok(())));
    }

    #[test]
    fn subscribe_lost_with_the_connection_fails_at_once() {
        let mut outbox = Outbox::new(10);
        let (reply, mut subscribed) = oneshot::channel();
        outbox.subscribe("t".into(), QoS::AtLeastOnce, Some(reply));
        outbox.lost();
        assert!(matches!(
            subscribed.try_recv(),
            Ok(Err(BrokerError::Unreachable(_)))
        ));
        assert!(!outbox.awaiting_answers());
    }
}
