//! Metadata `concurrency`: several messages in delivery at once against a real mosquitto,
//! with an application that answers in random order and fails some; nothing is lost, and
//! the acknowledgements still leave in the order the messages arrived (read off mosquitto's
//! own log).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mqtt_binding::{Delivery, Event, EventHandler};
use rumqttc::QoS;

use crate::support::{Mosquitto, Reader, Recorder, WAIT, logged_ids, publish_all, unique};

/// An application that takes a few milliseconds per event, varying by event, and fails the
/// first delivery of every fifth one; it records what it accepted and how many deliveries it
/// had at once.
#[derive(Default)]
struct Jittery {
    accepted: Mutex<Vec<Vec<u8>>>,
    failed_once: Mutex<BTreeSet<Vec<u8>>>,
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
    arrived: tokio::sync::Notify,
}

impl EventHandler for Jittery {
    fn deliver(&self, event: Event) -> Delivery<'_> {
        Box::pin(async move {
            let now = self.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
            self.most_in_flight.fetch_max(now, Ordering::AcqRel);
            let n: u64 = String::from_utf8_lossy(&event.data).parse().unwrap_or(0);
            // A spread of answer times, so that later messages often finish first.
            let delay = (n * 7919) % 13;
            tokio::time::sleep(Duration::from_millis(delay)).await;
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            let first_time = self
                .failed_once
                .lock()
                .expect("lock")
                .insert(event.data.to_vec());
            if n.is_multiple_of(5) && first_time {
                return Err(format!("scripted failure of {n}"));
            }
            self.accepted
                .lock()
                .expect("lock")
                .push(event.data.to_vec());
            self.arrived.notify_waiters();
            Ok(None)
        })
    }
}

impl Jittery {
    async fn wait_for_distinct(&self, count: usize) -> BTreeSet<Vec<u8>> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let arrived = self.arrived.notified();
            let distinct: BTreeSet<Vec<u8>> = self
                .accepted
                .lock()
                .expect("lock")
                .iter()
                .cloned()
                .collect();
            if distinct.len() >= count {
                return distinct;
            }
            assert!(
                tokio::time::timeout_at(deadline, arrived).await.is_ok(),
                "{} of {count} messages accepted",
                distinct.len()
            );
        }
    }
}

#[tokio::test]
async fn concurrent_deliveries_lose_nothing_and_acknowledge_in_arrival_order() {
    let broker = Mosquitto::start();
    let topic = format!("concurrent/{}", unique());
    let client = format!("concurrent-{}", unique());
    let app = Arc::new(Jittery::default());
    let reader = Reader::start(
        &[
            ("url", &broker.url()),
            ("topic", &topic),
            ("qos", "1"),
            ("consumerID", &client),
            ("concurrency", "8"),
            ("backOffMaxRetries", "3"),
            ("backOffInterval", "5ms"),
        ],
        app.clone(),
    )
    .await;
    let count = 200;
    let payloads: Vec<Vec<u8>> = (0..count).map(|n| n.to_string().into_bytes()).collect();
    publish_all(broker.port, &topic, QoS::AtLeastOnce, &payloads).await;
    let accepted = app.wait_for_distinct(count).await;
    assert_eq!(
        accepted,
        payloads.iter().cloned().collect(),
        "every message"
    );
    let most = app.most_in_flight.load(Ordering::Acquire);
    assert!(
        (2..=8).contains(&most),
        "deliveries at once: {most}, expected several and at most 8"
    );
    // Every acknowledgement is in the log once it is sent: wait for the last one.
    broker
        .wait_for_log_count(&format!("Received PUBACK from {client}"), count)
        .await;
    let log = broker.log();
    let sent = logged_ids(&log, "Sending PUBLISH to", &client);
    let acknowledged = logged_ids(&log, "Received PUBACK from", &client);
    assert_eq!(sent.len(), count, "each message sent to the binding once");
    assert_eq!(acknowledged, sent, "PUBACKs in the order of the PUBLISHes");
    reader.stop().await.expect("stopped");
}

#[tokio::test]
async fn shutdown_with_messages_in_delivery_leaves_them_for_the_next_session() {
    let broker = Mosquitto::start();
    let topic = format!("concurrent-stop/{}", unique());
    let client = format!("concurrent-stop-{}", unique());
    let metadata = [
        ("url", broker.url()),
        ("topic", topic.clone()),
        ("qos", "1".to_string()),
        ("consumerID", client),
        ("cleanSession", "false".to_string()),
        ("concurrency", "4".to_string()),
    ];
    let pairs: Vec<(&str, &str)> = metadata.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // The first two are accepted; the next four stay in delivery until shutdown.
    let (holding, mut accepted) = Recorder::holding_after(2);
    let reader = Reader::start(&pairs, holding.clone()).await;
    let payloads: Vec<Vec<u8>> = (0..6).map(|n| format!("m{n}").into_bytes()).collect();
    publish_all(broker.port, &topic, QoS::AtLeastOnce, &payloads).await;
    assert_eq!(accepted.next().await.data, &b"m0"[..]);
    assert_eq!(accepted.next().await.data, &b"m1"[..]);
    holding.wait_for_calls(6).await;
    reader.stop().await.expect("stopped");

    let (recorder, mut again) = Recorder::failing(0);
    let reader = Reader::start(&pairs, recorder).await;
    let mut redelivered = Vec::new();
    for _ in 0..4 {
        redelivered.push(again.next().await.data);
    }
    redelivered.sort();
    assert_eq!(
        redelivered,
        payloads[2..].to_vec(),
        "the four in delivery, not the two accepted"
    );
    reader.stop().await.expect("stopped");
}
