//! The connection task: the one place that writes to and reads from the broker. It takes
//! commands from the `Connection` handles, keeps the session across reconnects (with the
//! host's one `Backoff`), sends keep-alives, and finds a dead link. Pairing packets
//! with requests is `outbox`'s, received messages are `inbox`'s.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::inbox::Arrival;
use super::link::{Endpoint, Link, OUTGOING_HIGH_WATER};
use super::outbox::{Job, Outbox, Reply};
use super::reason;
use super::shared::Shared;
use crate::QoS;
use crate::backoff::Backoff;
use crate::error::BrokerError;
use crate::packet::{ConnAck, Incoming, Outgoing};

/// How long a clean DISCONNECT may take to write.
const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Commands taken in one go before looking at the network again.
const COMMAND_BATCH: usize = 64;

/// What a `Connection` handle asks of the task.
#[derive(Debug)]
pub(super) enum Command {
    Publish(Job),
    Subscribe {
        filter: String,
        qos: QoS,
        reply: Reply,
    },
    /// Acknowledge a received message (PUBACK at QoS 1, PUBREC at QoS 2), on the
    /// connection of `generation` only: on another, its packet id may name another message.
    Ack {
        pkid: u16,
        qos: QoS,
        generation: u64,
    },
    Disconnect,
}

/// Timings of one connection.
#[derive(Debug, Clone, Copy)]
pub(super) struct Timing {
    pub keep_alive: Duration,
    /// How long the broker may stay silent while an answer is owed before the link is
    /// declared dead.
    pub response_timeout: Duration,
}

pub(super) struct Driver {
    pub shared: Arc<Shared>,
    pub commands: mpsc::Receiver<Command>,
    /// Where to connect, in the order tried: the broker, then its failover list.
    pub endpoints: Arc<[Endpoint]>,
    pub outbox: Outbox,
    pub timing: Timing,
    /// Subscriptions to renew on every new connection.
    pub filters: Vec<(String, QoS)>,
    pub generation: u64,
}

/// Opens a link to the first of `endpoints` that accepts, trying them in order. When none
/// does: a refusal that retrying will not change (bad credentials, TLS) if one said so,
/// else everything each one answered, as one retryable error.
async fn open_any(endpoints: &[Endpoint]) -> Result<(Link, ConnAck), BrokerError> {
    let mut failures = Vec::new();
    for endpoint in endpoints {
        match Link::open(endpoint).await {
            Ok(opened) => {
                if !failures.is_empty() {
                    tracing::info!(broker = %format_args!("{}:{}", endpoint.host, endpoint.port), "connected to a failover broker after {} did not answer", failures.len());
                }
                return Ok(opened);
            }
            Err(error) if endpoints.len() == 1 => return Err(error),
            Err(error) => {
                tracing::debug!(broker = %format_args!("{}:{}", endpoint.host, endpoint.port), "not connected, trying the next broker: {error}");
                failures.push(error);
            }
        }
    }
    if let Some(terminal) = failures.iter().find(|error| !error.is_retryable()) {
        return Err(terminal.clone());
    }
    let each: Vec<String> = failures.iter().map(ToString::to_string).collect();
    Err(BrokerError::Unreachable(format!(
        "none of the {} brokers accepted the connection: {}",
        endpoints.len(),
        each.join("; ")
    )))
}

/// How serving one link ended.
enum Ended {
    /// Shutdown: a DISCONNECT command, or every handle gone.
    Closing(Link),
    Lost(BrokerError),
}

impl Driver {
    /// Connects, reports the outcome of that first attempt to `first`, then serves the
    /// connection until it is closed, reconnecting after every loss.
    pub(super) async fn run(mut self, first: oneshot::Sender<Result<(), BrokerError>>) {
        // Marks the task done however it ends, including by abort, and wakes readers.
        struct Done(Arc<Shared>);
        impl Drop for Done {
            fn drop(&mut self) {
                self.0.connected.store(false, Ordering::Release);
                self.0.done.send_replace(true);
                self.0.arrived.notify_waiters();
            }
        }
        let _done = Done(self.shared.clone());

        let mut link = match open_any(&self.endpoints).await {
            Ok((mut link, connack)) => {
                self.accepted(&mut link, &connack);
                link
            }
            Err(error) => {
                let _ = first.send(Err(error));
                return;
            }
        };
        self.shared.set_connected();
        let _ = first.send(Ok(()));
        tracing::debug!(connection = %self.shared.label, "connected");
        loop {
            let error = match self.serve(link).await {
                Ended::Closing(link) => return self.close(Some(link)).await,
                Ended::Lost(error) => error,
            };
            self.shared.set_lost(&error);
            self.outbox.lost();
            let mut backoff = Backoff::STANDARD;
            let mut wait = backoff.next_wait();
            tracing::warn!(connection = %self.shared.label, retry_in = ?wait, "connection lost: {error}");
            link = loop {
                if self.idle(tokio::time::sleep(wait)).await.is_none() {
                    return self.close(None).await;
                }
                let endpoints = self.endpoints.clone();
                let opened = match self.idle(async move { open_any(&endpoints).await }).await {
                    None => return self.close(None).await,
                    Some(opened) => opened,
                };
                wait = backoff.next_wait();
                match opened {
                    Ok((mut link, connack)) => match self.resume(&mut link, &connack) {
                        Ok(()) => break link,
                        Err(error) => {
                            tracing::error!(connection = %self.shared.label, "cannot resume the session: {error}");
                        }
                    },
                    Err(error) => {
                        self.shared.set_lost(&error);
                        tracing::warn!(connection = %self.shared.label, retry_in = ?wait, "reconnecting failed: {error}");
                    }
                }
            };
        }
    }

    /// A new connection was accepted: resend what the session owes, renew subscriptions.
    fn resume(&mut self, link: &mut Link, connack: &ConnAck) -> Result<(), BrokerError> {
        let session_present = connack.session_present;
        tracing::info!(connection = %self.shared.label, session_present, "reconnected");
        self.accepted(link, connack);
        self.generation += 1;
        self.shared.inbox().reconnected(session_present);
        for packet in self.outbox.resumed(session_present) {
            link.writer.queue(&packet)?;
        }
        for (filter, qos) in self.filters.clone() {
            let subscribe = self.outbox.subscribe(filter, qos, None);
            link.writer.queue(&Outgoing::Subscribe(subscribe))?;
        }
        self.shared.set_connected();
        Ok(())
    }

    /// Takes the limits the broker set in its CONNACK (MQTT 5): how many publishes may be
    /// unacknowledged, how large a packet may be.
    fn accepted(&mut self, link: &mut Link, connack: &ConnAck) {
        self.outbox.set_receive_maximum(connack.receive_maximum);
        if let Some(max) = connack.max_packet_size {
            link.writer.limit_packet_size(max);
        }
        self.shared
            .broker_max_packet
            .store(link.writer.max_packet(), Ordering::Release);
        self.shared.shares_unavailable.store(
            connack.shared_subscription_available == Some(false),
            Ordering::Release,
        );
        tracing::debug!(
            connection = %self.shared.label,
            receive_maximum = ?connack.receive_maximum,
            maximum_packet_size = ?connack.max_packet_size,
            session_expiry = ?connack.session_expiry,
            "the broker's limits"
        );
    }

    /// Serves one accepted connection until it is lost or closed.
    async fn serve(&mut self, mut link: Link) -> Ended {
        let timing = self.timing;
        let mut last_write = Instant::now();
        let mut last_read = last_write;
        // When the broker last started to owe an answer (see `Timing`).
        let mut owed_since: Option<Instant> = None;
        let mut ping_outstanding = false;
        // Armed lazily: moved earlier when needed, otherwise left to fire and re-armed
        // then, so that busy traffic does not touch the timer wheel for every packet.
        let timer = tokio::time::sleep(timing.keep_alive);
        tokio::pin!(timer);
        loop {
            while link.writer.buffered() < OUTGOING_HIGH_WATER {
                let Some(publish) = self.outbox.next_publish() else {
                    break;
                };
                let pkid = publish.pkid;
                match link.writer.queue(&Outgoing::Publish(publish)) {
                    Ok(()) => {}
                    // Over the broker's maximum packet size: nothing was written, and the
                    // connection is fine; only this publish fails.
                    Err(error @ BrokerError::TooLarge(_)) => self.outbox.unsent(pkid, error),
                    Err(error) => return Ended::Lost(error),
                }
            }
            let owed = self.outbox.awaiting_answers() || ping_outstanding;
            match (owed, owed_since) {
                (true, None) => owed_since = Some(Instant::now()),
                (false, Some(_)) => owed_since = None,
                _ => {}
            }
            // Silent since: the later of when an answer became owed and the last read.
            let silent_since = owed_since.map(|since| since.max(last_read));
            let keep_alive_due = last_write + timing.keep_alive;
            let deadline = match silent_since {
                Some(since) => keep_alive_due.min(since + timing.response_timeout),
                None => keep_alive_due,
            };
            if deadline < timer.deadline() {
                timer.as_mut().reset(deadline);
            }
            tokio::select! {
                written = link.writer.write_some(), if link.writer.has_output() => {
                    if let Err(error) = written {
                        return Ended::Lost(error);
                    }
                    last_write = Instant::now();
                }
                packet = link.reader.read() => {
                    let mut next = packet.map(Some);
                    // Everything already read is handled before anything else happens.
                    while let Some(packet) = match next { Ok(packet) => packet, Err(error) => return Ended::Lost(error) } {
                        if let Err(error) = self.incoming(&mut link, packet, &mut ping_outstanding) {
                            return Ended::Lost(error);
                        }
                        next = link.reader.read_buffered();
                    }
                    last_read = Instant::now();
                }
                command = self.commands.recv() => {
                    let mut next = command;
                    let mut taken = 0;
                    while let Some(command) = next.take() {
                        match self.command(&mut link, command) {
                            Ok(true) => {}
                            Ok(false) => return Ended::Closing(link),
                            Err(error) => return Ended::Lost(error),
                        }
                        taken += 1;
                        if taken < COMMAND_BATCH {
                            next = self.commands.try_recv().ok();
                        }
                    }
                    if taken == 0 {
                        // Every handle is gone.
                        return Ended::Closing(link);
                    }
                }
                () = &mut timer => {
                    let now = Instant::now();
                    if silent_since.is_some_and(|since| now >= since + timing.response_timeout) {
                        return Ended::Lost(BrokerError::Unreachable(format!(
                            "no answer from the broker within {} ms while one was owed; the connection is considered dead",
                            timing.response_timeout.as_millis()
                        )));
                    }
                    if now >= keep_alive_due && !ping_outstanding {
                        if let Err(error) = link.writer.queue(&Outgoing::PingReq) {
                            return Ended::Lost(error);
                        }
                        ping_outstanding = true;
                        // Keep-alive counts from the last write, the ping included.
                        last_write = now;
                    }
                    // Re-armed for the next check; the top of the loop moves it earlier
                    // if something falls due sooner.
                    timer.as_mut().reset(now + timing.keep_alive.max(timing.response_timeout));
                }
            }
        }
    }

    /// Handles one packet from the broker, queueing any answer it needs.
    fn incoming(
        &mut self,
        link: &mut Link,
        packet: Incoming,
        ping_outstanding: &mut bool,
    ) -> Result<(), BrokerError> {
        let label = &self.shared.label;
        match packet {
            Incoming::Publish(publish) => {
                let pkid = publish.pkid;
                match self.shared.inbox().arrived(publish, label) {
                    Arrival::Queued => self.shared.arrived.notify_one(),
                    Arrival::Duplicate => link.writer.queue(&Outgoing::PubRec(pkid))?,
                    Arrival::Dropped => {}
                }
            }
            Incoming::PubAck(ack) => {
                let rejection = reason::publish_refused(ack.reason);
                if let Err(unexpected) = self.outbox.puback(ack.pkid, rejection) {
                    tracing::warn!(connection = %label, "ignored: {unexpected}");
                }
            }
            Incoming::PubRec(rec) => {
                let rejection = reason::publish_refused(rec.reason);
                match self.outbox.pubrec(rec.pkid, rejection) {
                    Ok(Some(pkid)) => link.writer.queue(&Outgoing::PubRel(pkid))?,
                    Ok(None) => {}
                    Err(unexpected) => tracing::warn!(connection = %label, "ignored: {unexpected}"),
                }
            }
            Incoming::PubComp(pkid) => {
                if let Err(unexpected) = self.outbox.pubcomp(pkid) {
                    tracing::warn!(connection = %label, "ignored: {unexpected}");
                }
            }
            Incoming::PubRel(pkid) => {
                // Always answered (MQTT 3.1.1 section 4.3.3), known id or not.
                self.shared.inbox().pubrel(pkid);
                link.writer.queue(&Outgoing::PubComp(pkid))?;
            }
            Incoming::SubAck(suback) => {
                let refused = reason::subscribe_refused(&suback.codes, suback.text);
                if let Some(rejection) = &refused {
                    tracing::error!(connection = %label, "the broker refused a subscription: {rejection}");
                }
                let granted = refused.is_none();
                match self.outbox.suback(suback.pkid, refused) {
                    Ok(()) if granted => self.shared.subscribed.send_modify(|count| *count += 1),
                    Ok(()) => {}
                    Err(unexpected) => tracing::warn!(connection = %label, "ignored: {unexpected}"),
                }
            }
            Incoming::PingResp => *ping_outstanding = false,
            Incoming::Disconnect(reason) => {
                return Err(BrokerError::Unreachable(format!(
                    "the broker closed the connection with DISCONNECT, {}",
                    reason::disconnect(&reason)
                )));
            }
            Incoming::ConnAck(_) => {
                return Err(BrokerError::Other(
                    "the broker sent a second CONNACK on one connection".into(),
                ));
            }
        }
        Ok(())
    }

    /// Handles one command on a live connection; `false` to close it.
    fn command(&mut self, link: &mut Link, command: Command) -> Result<bool, BrokerError> {
        match command {
            Command::Publish(job) => self.outbox.accept(job),
            Command::Subscribe { filter, qos, reply } => {
                self.record(&filter, qos);
                let subscribe = self.outbox.subscribe(filter, qos, Some(reply));
                link.writer.queue(&Outgoing::Subscribe(subscribe))?;
            }
            Command::Ack {
                pkid,
                qos,
                generation,
            } => {
                if generation == self.generation {
                    let ack = match qos {
                        QoS::ExactlyOnce => Outgoing::PubRec(pkid),
                        _ => Outgoing::PubAck(pkid),
                    };
                    link.writer.queue(&ack)?;
                }
            }
            Command::Disconnect => return Ok(false),
        }
        Ok(true)
    }

    /// Runs `waiting` (a backoff, a connect) while no connection is up, taking commands
    /// meanwhile; `None` when the connection is to close instead.
    async fn idle<T>(&mut self, waiting: impl Future<Output = T>) -> Option<T> {
        tokio::pin!(waiting);
        loop {
            tokio::select! {
                done = &mut waiting => return Some(done),
                command = self.commands.recv() => match command {
                    None | Some(Command::Disconnect) => return None,
                    // Written once connected, unless its caller gives up first.
                    Some(Command::Publish(job)) => self.outbox.accept(job),
                    Some(Command::Subscribe { filter, qos, reply }) => {
                        self.record(&filter, qos);
                        let _ = reply.send(Err(BrokerError::Unreachable(format!(
                            "not connected to {}; the subscription is made when it reconnects",
                            self.shared.label
                        ))));
                    }
                    // For a connection that is gone: the broker sends the message again.
                    Some(Command::Ack { .. }) => {}
                },
            }
        }
    }

    fn record(&mut self, filter: &str, qos: QoS) {
        match self.filters.iter_mut().find(|(known, _)| known == filter) {
            Some(entry) => entry.1 = qos,
            None => self.filters.push((filter.to_string(), qos)),
        }
    }

    /// Ends the connection: QoS 0 messages still waiting go out, then DISCONNECT (no
    /// UNSUBSCRIBE: a persistent session survives); every open request is answered.
    async fn close(mut self, link: Option<Link>) {
        self.shared.closing.store(true, Ordering::Release);
        self.shared.connected.store(false, Ordering::Release);
        if let Some(mut link) = link {
            let mut last = Ok(());
            for publish in self.outbox.drain_for_disconnect() {
                last = last.and(link.writer.queue(&Outgoing::Publish(publish)));
            }
            if last.is_ok() {
                match tokio::time::timeout(DISCONNECT_TIMEOUT, link.close()).await {
                    Ok(Ok(())) => tracing::debug!(connection = %self.shared.label, "disconnected"),
                    Ok(Err(error)) => {
                        tracing::debug!(connection = %self.shared.label, "disconnect: {error}")
                    }
                    Err(_) => {
                        tracing::debug!(connection = %self.shared.label, "disconnect timed out")
                    }
                }
            }
        }
        self.outbox.close(&BrokerError::Closed);
    }
}
