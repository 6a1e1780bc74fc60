//! `mqtt-binding demo`: an embedded broker (rumqttd) on a free loopback port, the binding
//! publishing through it, and an independent subscriber showing what arrives. Nothing to
//! install.

use std::borrow::Cow;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::time::Duration;

use anyhow::Context as _;
use std::sync::Arc;

use mqtt_binding::{
    BindingOptions, Delivery, EventHandler, InvokeRequest, Runtime, RuntimeOptions,
};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

const WAIT: Duration = Duration::from_secs(10);

#[expect(
    clippy::print_stdout,
    reason = "the demo's output is for the person running it"
)]
pub async fn run(options: RuntimeOptions) -> anyhow::Result<()> {
    let address = start_broker()?;
    println!("embedded MQTT broker listening on {address}");

    let (subscriber, mut events) = AsyncClient::new(
        MqttOptions::new("demo-subscriber", "127.0.0.1", address.port()),
        64,
    );
    subscriber.subscribe("demo/#", QoS::AtLeastOnce).await?;
    // The subscriber's first successful connect is also the sign that the broker is up.
    tokio::time::timeout(WAIT, async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => return,
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await
    .with_context(|| {
        format!("the embedded broker did not accept a subscriber on {address} within {WAIT:?}")
    })?;
    println!("independent subscriber listening on demo/#");

    let runtime = Runtime::new(options)?;
    let metadata = [
        ("url", format!("tcp://127.0.0.1:{}", address.port())),
        ("topic", "demo/#".to_string()),
        ("qos", "1".to_string()),
        ("consumerID", "demo-binding-{uuid}".to_string()),
    ];
    let (delivered_tx, mut delivered) = tokio::sync::mpsc::unbounded_channel();
    let binding = runtime
        .binding(BindingOptions {
            name: "demo".into(),
            app_id: "demo".into(),
            metadata: metadata
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            handler: Some(Arc::new(Forward(delivered_tx))),
        })
        .await?;
    let requests = [
        ("order 1: 2 apples", "demo/orders"),
        ("order 2: 1 pear", "demo/orders"),
        ("stock low: pears", "demo/alerts"),
    ];
    let reading = binding.read();
    let demo = async {
        tokio::time::timeout(WAIT, binding.wait_subscribed())
            .await
            .context("the binding did not subscribe")??;
        println!("binding subscribed to demo/# (its input side)");
        for (data, topic) in requests {
            let metadata = vec![("topic".to_string(), topic.to_string())];
            binding
                .invoke(InvokeRequest {
                    operation: "create".into(),
                    data: data.as_bytes().to_vec(),
                    metadata,
                })
                .await?;
            println!("binding published {data:?} to {topic} (QoS 1, acknowledged by the broker)");
        }
        tokio::time::timeout(WAIT, async {
            for _ in requests {
                let publish = loop {
                    if let Event::Incoming(Packet::Publish(publish)) = events.poll().await? {
                        break publish;
                    }
                };
                println!("independent subscriber received {:?} on {}", String::from_utf8_lossy(&publish.payload), publish.topic);
                let (data, topic) = delivered.recv().await.context("the binding stopped delivering")?;
                println!("binding delivered {data:?} from {topic} to the application, then acknowledged it");
            }
            anyhow::Ok(())
        })
        .await
        .context("not every message arrived in time")??;
        binding.shutdown();
        anyhow::Ok(())
    };
    let (read, demo) = tokio::join!(reading, demo);
    binding.close().await;
    let _ = subscriber.disconnect().await;
    // A failed read explains a demo that timed out waiting for it.
    read.context("the binding's input side failed")?;
    demo?;
    println!(
        "done: {} messages published through the component, received, and read back",
        requests.len()
    );
    Ok(())
}

/// The demo's application: passes each event on to be printed.
struct Forward(tokio::sync::mpsc::UnboundedSender<(String, String)>);

impl EventHandler for Forward {
    fn deliver(&self, event: mqtt_binding::Event) -> Delivery<'_> {
        let topic = event
            .metadata
            .get("topic")
            .map(Cow::into_owned)
            .unwrap_or_default();
        let sent = self
            .0
            .send((String::from_utf8_lossy(&event.data).into_owned(), topic));
        Box::pin(async move {
            sent.map(|()| None)
                .map_err(|_| "the demo stopped".to_string())
        })
    }
}

/// Starts rumqttd on a free loopback port.
fn start_broker() -> anyhow::Result<SocketAddr> {
    let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port();
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let config: rumqttd::Config = serde_json::from_value(serde_json::json!({
        "id": 0,
        "router": {
            "max_connections": 16,
            "max_outgoing_packet_count": 200,
            "max_segment_size": 104857600,
            "max_segment_count": 10
        },
        "v4": { "1": {
            "name": "demo",
            "listen": address.to_string(),
            "next_connection_delay_ms": 1,
            "connections": {
                "connection_timeout_ms": 60000,
                "max_payload_size": 1048576,
                "max_inflight_count": 100,
                "dynamic_filters": true
            }
        }}
    }))
    .context("configuring the embedded broker")?;
    let mut broker = rumqttd::Broker::new(config);
    // rumqttd runs its own threads and never returns; the process exit ends it.
    std::thread::Builder::new()
        .name("demo-broker".into())
        .spawn(move || {
            if let Err(error) = broker.start() {
                tracing::error!("embedded broker stopped: {error}");
            }
        })?;
    Ok(address)
}
