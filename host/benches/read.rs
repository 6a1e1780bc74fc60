//! Input throughput: messages per second that `read` delivers to a handler that returns at
//! once (and acknowledges), against a raw rumqttc subscriber with manual acks, in the same
//! run on the same broker. Run: `cargo bench -p mqtt-binding --bench read [-- MESSAGES]`.
//!
//! Each run preloads MESSAGES messages into a persistent session (mosquitto with
//! `queue_qos0_messages`, so QoS 0 queues too), then times from the start of connecting to
//! the last delivery, for both. (The binding's connection opens when the binding is created,
//! so the broker starts sending before `read` runs: timing from the first delivery would
//! leave the network out of the binding's figure only.)

#![expect(clippy::print_stdout, reason = "a benchmark reports on stdout")]

#[path = "../../tests/integration/support.rs"]
#[allow(dead_code, reason = "the benchmark uses part of the test helpers")]
mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mqtt_binding::{BindingOptions, Delivery, Event, EventHandler};
use rumqttc::{AsyncClient, MqttOptions, Packet, QoS};
use support::{publish_all, runtime, unique, BrokerConfig, Mosquitto};

const RUNS: usize = 3;

fn main() {
    let messages: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(20_000);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let broker = Mosquitto::start_with(BrokerConfig {
            extra: "queue_qos0_messages true\nmax_queued_messages 0\n".into(),
            ..Default::default()
        });
        println!("read throughput, {messages} messages of 100 bytes, median of {RUNS} runs (msg/s)");
        println!("| QoS | binding `read` | raw rumqttc, manual acks | ratio |");
        println!("|---|---|---|---|");
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
            let mut binding = Vec::new();
            let mut raw = Vec::new();
            for _ in 0..RUNS {
                binding.push(binding_rate(&broker, qos, messages).await);
                raw.push(raw_rate(&broker, qos, messages).await);
            }
            let (b, r) = (median(binding), median(raw));
            println!("| {} | {b:.0} | {r:.0} | {:.2} |", qos as u8, b / r);
        }
    });
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Creates a persistent session subscribed to a fresh topic, then fills it while offline.
async fn preload(broker: &Mosquitto, qos: QoS, messages: usize, client_id: &str) -> String {
    let topic = format!("bench/{}", unique());
    let mut options = MqttOptions::new(client_id, "127.0.0.1", broker.port);
    options.set_clean_session(false);
    let (client, mut eventloop) = AsyncClient::new(options, 10);
    client.subscribe(&topic, qos).await.expect("subscribe");
    loop {
        if let rumqttc::Event::Incoming(Packet::SubAck(_)) = eventloop.poll().await.expect("connected") {
            break;
        }
    }
    client.disconnect().await.expect("disconnect");
    while eventloop.poll().await.is_ok() {}
    let payloads = vec![vec![b'x'; 100]; messages];
    publish_all(broker.port, &topic, QoS::AtLeastOnce, &payloads).await;
    topic
}

struct Count {
    seen: AtomicUsize,
    target: usize,
    done: tokio::sync::Notify,
}

impl EventHandler for Count {
    fn deliver(&self, _event: Event) -> Delivery<'_> {
        let seen = self.seen.fetch_add(1, Ordering::AcqRel) + 1;
        if seen == self.target {
            self.done.notify_one();
        }
        Box::pin(async { Ok(()) })
    }
}

async fn binding_rate(broker: &Mosquitto, qos: QoS, messages: usize) -> f64 {
    let client_id = format!("bench-binding-{}", unique());
    let topic = preload(broker, qos, messages, &client_id).await;
    let count = Arc::new(Count { seen: AtomicUsize::new(0), target: messages, done: tokio::sync::Notify::new() });
    let qos_text = (qos as u8).to_string();
    let metadata = [
        ("url", broker.url()),
        ("topic", topic),
        ("qos", qos_text),
        ("consumerID", client_id),
        ("cleanSession", "false".to_string()),
    ];
    let options = BindingOptions {
        name: "bench".into(),
        app_id: "bench".into(),
        metadata: metadata.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
        handler: Some(count.clone()),
    };
    let runtime = runtime();
    let started = Instant::now();
    let binding = runtime.binding(options).await.expect("binding");
    let reading = binding.read();
    let timed = async {
        tokio::time::timeout(Duration::from_secs(300), count.done.notified()).await.expect("all delivered");
        let elapsed = started.elapsed();
        binding.shutdown();
        elapsed
    };
    let (read, elapsed) = tokio::join!(reading, timed);
    read.expect("read ends cleanly");
    binding.close().await;
    messages as f64 / elapsed.as_secs_f64()
}

async fn raw_rate(broker: &Mosquitto, qos: QoS, messages: usize) -> f64 {
    let client_id = format!("bench-raw-{}", unique());
    let topic = preload(broker, qos, messages, &client_id).await;
    let started = Instant::now();
    let mut options = MqttOptions::new(client_id, "127.0.0.1", broker.port);
    options.set_clean_session(false).set_manual_acks(true);
    let (client, mut eventloop) = AsyncClient::new(options, messages + 16);
    eventloop.network_options.set_tcp_nodelay(true);
    client.subscribe(&topic, qos).await.expect("subscribe");
    let mut seen = 0;
    while seen < messages {
        match tokio::time::timeout(Duration::from_secs(300), eventloop.poll()).await.expect("in time") {
            Ok(rumqttc::Event::Incoming(Packet::Publish(publish))) => {
                seen += 1;
                client.try_ack(&publish).expect("ack queued");
            }
            Ok(_) => {}
            Err(error) => panic!("raw subscriber: {error}"),
        }
    }
    let elapsed = started.elapsed();
    client.disconnect().await.expect("disconnect");
    messages as f64 / elapsed.as_secs_f64()
}
