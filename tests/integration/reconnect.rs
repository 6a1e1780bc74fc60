//! Losing the broker under load: broker restarts and connections cut right after a PUBLISH
//! while invokes are pipelined through the sidecar, and a link that goes silent without
//! closing. Every success is checked against an independent persistent subscriber.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mqtt_binding::{BindingError, BrokerError};
use reqwest::StatusCode;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::Notify;

use crate::proxy::Proxy;
use crate::sidecar::{Sidecar, binding_yaml};
use crate::support::{BrokerConfig, Mosquitto, Subscriber, WAIT, binding, create, unique};

/// A subscriber with a persistent session (clean session off, QoS 1) that reconnects on
/// its own, so that it misses nothing across broker restarts. Records every payload.
struct Collector {
    received: Arc<Mutex<Vec<String>>>,
    arrived: Arc<Notify>,
    client: AsyncClient,
    task: tokio::task::JoinHandle<()>,
}

impl Collector {
    async fn start(port: u16, topic: &str) -> Self {
        let mut options = MqttOptions::new(format!("collector-{}", unique()), "127.0.0.1", port);
        options.set_clean_session(false).set_inflight(100);
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        client
            .subscribe(topic, QoS::AtLeastOnce)
            .await
            .expect("subscribe queued");
        let received = Arc::new(Mutex::new(Vec::new()));
        let arrived = Arc::new(Notify::new());
        let (subscribed_tx, subscribed_rx) = tokio::sync::oneshot::channel();
        let task = {
            let (received, arrived) = (received.clone(), arrived.clone());
            tokio::spawn(async move {
                let mut subscribed = Some(subscribed_tx);
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Incoming(Packet::SubAck(_))) => {
                            if let Some(subscribed) = subscribed.take() {
                                let _ = subscribed.send(());
                            }
                        }
                        Ok(Event::Incoming(Packet::Publish(publish))) => {
                            let text = String::from_utf8_lossy(&publish.payload).into_owned();
                            received.lock().expect("received").push(text);
                            arrived.notify_waiters();
                        }
                        Ok(_) => {}
                        // The broker is restarting: poll again, which reconnects (paced, so
                        // that a broker that is down is not hammered).
                        Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
            })
        };
        tokio::time::timeout(WAIT, subscribed_rx)
            .await
            .expect("the collector got its SUBACK")
            .expect("the collector task is running");
        Self {
            received,
            arrived,
            client,
            task,
        }
    }

    fn received(&self) -> Vec<String> {
        self.received.lock().expect("received").clone()
    }

    /// Waits until every payload of `expected` has arrived, or `wait` passed.
    async fn wait_for_all(&self, expected: &BTreeSet<String>, wait: Duration) {
        let _ = tokio::time::timeout(wait, async {
            loop {
                let arrived = self.arrived.notified();
                let received: BTreeSet<String> = self.received().into_iter().collect();
                if expected.is_subset(&received) {
                    return;
                }
                arrived.await;
            }
        })
        .await;
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.client.try_disconnect();
        self.task.abort();
    }
}

/// How one invoke ended.
#[derive(Debug, Clone)]
enum Answer {
    Success,
    Failure(String),
}

/// 2,000 QoS 1 invokes, 32 in flight, through `mqtt-binding run`; meanwhile the broker is
/// restarted `RESTARTS` times (env `MQTT_BINDING_RESTARTS`, default 3) and, between
/// restarts, the binding's connection is cut right after a PUBLISH went through (so the
/// broker may have the message and the binding never sees its PUBACK). Then: every 204 was
/// received; a failure that said "not sent" never was; a lone invoke succeeds at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_invokes_through_restarts_and_cuts_lose_no_acknowledged_message() {
    const INVOKES: usize = 2_000;
    const IN_FLIGHT: usize = 32;
    let restarts: usize = std::env::var("MQTT_BINDING_RESTARTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(3);

    let mut broker = Mosquitto::start_with(BrokerConfig {
        persistence: true,
        // The collector may be away while the binding publishes: queue everything for it.
        extra: "max_queued_messages 0\n".into(),
        ..BrokerConfig::default()
    });
    let topic = format!("reliable/{}", unique());
    let collector = Collector::start(broker.port, &topic).await;
    let proxy = Proxy::start(broker.port).await;
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        dir.path().join("orders.yaml"),
        binding_yaml(
            "orders",
            &[("url", &proxy.url()), ("topic", &topic), ("qos", "1")],
            None,
        ),
    )
    .expect("component file");
    let sidecar = Arc::new(Sidecar::start(dir.path(), None, &[]).await);
    sidecar.healthy().await;

    let answers: Arc<Mutex<BTreeMap<String, Answer>>> = Arc::default();
    let answered = Arc::new(tokio::sync::watch::Sender::new(0usize));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..IN_FLIGHT {
        let (sidecar, answers, answered, next) = (
            sidecar.clone(),
            answers.clone(),
            answered.clone(),
            next.clone(),
        );
        workers.spawn(async move {
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n >= INVOKES {
                    return;
                }
                let payload = format!("m-{n}");
                let body = serde_json::json!({ "operation": "create", "data": payload });
                let (status, text) = sidecar.post("orders", &body.to_string()).await;
                let answer = match status {
                    StatusCode::NO_CONTENT => Answer::Success,
                    StatusCode::INTERNAL_SERVER_ERROR => Answer::Failure(text),
                    other => panic!("unexpected answer {other} to invoke {n}: {text}"),
                };
                // Published as its JSON text, quotes included.
                answers
                    .lock()
                    .expect("answers")
                    .insert(format!("\"{payload}\""), answer);
                answered.send_modify(|count| *count += 1);
            }
        });
    }

    // The chaos: alternately a cut right after a PUBLISH and, `restarts` times, a broker
    // restart, each once a further slice of the invokes has been answered.
    let rounds = restarts * 2 + 2;
    let mut answered_rx = answered.subscribe();
    for round in 1..=rounds {
        let target = INVOKES * round / (rounds + 1);
        let reached = tokio::time::timeout(
            Duration::from_secs(120),
            answered_rx.wait_for(|count| *count >= target),
        )
        .await;
        assert!(reached.is_ok(), "invokes stalled before {target} answers");
        if round % 2 == 0 && round / 2 <= restarts {
            tokio::task::block_in_place(|| broker.restart());
        } else {
            proxy.cut_after_next_publish();
        }
    }
    while let Some(worker) = workers.join_next().await {
        worker.expect("a worker panicked");
    }

    let answers = answers.lock().expect("answers").clone();
    let successes: BTreeSet<String> = answers
        .iter()
        .filter(|(_, answer)| matches!(answer, Answer::Success))
        .map(|(payload, _)| payload.clone())
        .collect();
    collector.wait_for_all(&successes, WAIT).await;
    let received = collector.received();
    let unique_received: BTreeSet<String> = received.iter().cloned().collect();
    let never_received: Vec<&String> = successes.difference(&unique_received).collect();
    let failures: Vec<(&String, &String)> = answers
        .iter()
        .filter_map(|(payload, answer)| match answer {
            Answer::Failure(text) => Some((payload, text)),
            Answer::Success => None,
        })
        .collect();
    let failures_received: Vec<&(&String, &String)> = failures
        .iter()
        .filter(|(payload, _)| unique_received.contains(*payload))
        .collect();
    eprintln!(
        "{INVOKES} invokes, {IN_FLIGHT} in flight, {restarts} broker restarts, {} cuts: \
         {} successes, {} failures, {} successes never received, {} failures received anyway, {} duplicates",
        rounds - restarts,
        successes.len(),
        failures.len(),
        never_received.len(),
        failures_received.len(),
        received.len() - unique_received.len(),
    );
    assert!(
        never_received.is_empty(),
        "answered 204 but never received: {never_received:?}"
    );
    for (payload, text) in &failures {
        assert!(
            text.contains("not sent") || text.contains("may have"),
            "a failure must say whether {payload} was sent: {text}"
        );
    }
    for (payload, text) in &failures_received {
        assert!(
            text.contains("may have"),
            "{payload} was received although its failure said it was not sent: {text}"
        );
    }

    // The binding is not left broken: a lone invoke succeeds and arrives.
    let (status, text) = sidecar
        .post("orders", r#"{"operation":"create","data":"lone"}"#)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "lone invoke: {text}");
    let lone = BTreeSet::from(["\"lone\"".to_string()]);
    collector.wait_for_all(&lone, WAIT).await;
    assert!(
        collector.received().contains(&"\"lone\"".to_string()),
        "the lone invoke never arrived"
    );
    let sidecar = Arc::into_inner(sidecar).expect("the workers are done");
    assert!(sidecar.terminate().await.success());
}

/// The link stops forwarding without closing (a blackhole): the publish in flight fails as
/// unconfirmed within its timeout, the link is found dead meanwhile (the next invoke fails
/// at once as unreachable instead of waiting out a timeout), and once the link works again
/// the binding reconnects and publishes.
#[tokio::test]
async fn a_silent_link_is_found_dead_and_the_binding_recovers() {
    let broker = Mosquitto::start();
    let proxy = Proxy::start(broker.port).await;
    let topic = format!("silent/{}", unique());
    let mut subscriber = Subscriber::start(broker.port, &topic).await;
    let mut binding = binding(&[("url", &proxy.url()), ("topic", &topic), ("qos", "1")])
        .await
        .expect("init");
    create(&mut binding, b"before", &[])
        .await
        .expect("create while the link works");
    assert_eq!(&subscriber.next().await.payload[..], b"before");

    proxy.blackhole(true);
    let started = Instant::now();
    match create(&mut binding, b"swallowed", &[]).await {
        Err(BindingError::Broker(BrokerError::Unconfirmed(text))) => {
            assert!(text.contains("no acknowledgement"), "{text}")
        }
        other => panic!("expected unconfirmed, got {other:?}"),
    }
    // The publish timeout (10 s) bounds it, not two keep-alive periods (60 s).
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    match create(&mut binding, b"refused", &[]).await {
        Err(BindingError::Broker(BrokerError::Unreachable(text))) => {
            assert!(text.contains("not sent"), "{text}")
        }
        other => panic!("expected unreachable (the link was found dead), got {other:?}"),
    }

    proxy.blackhole(false);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match create(&mut binding, b"after", &[]).await {
            Ok(()) => break,
            Err(BindingError::Broker(BrokerError::Unreachable(_))) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the binding never reconnected"
                );
            }
            Err(other) => panic!("expected success or unreachable, got {other:?}"),
        }
    }
    assert_eq!(&subscriber.next().await.payload[..], b"after");
    binding.close().await;
}
