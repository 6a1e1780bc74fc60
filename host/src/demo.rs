//! `mqtt-binding demo`: an embedded broker (rumqttd) on a free loopback port, the binding
//! publishing through it, and an independent subscriber showing what arrives. Nothing to
//! install.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::time::Duration;

use anyhow::Context as _;
use mqtt_binding::{BindingOptions, InvokeRequest, Runtime, RuntimeOptions};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

const WAIT: Duration = Duration::from_secs(10);

#[expect(clippy::print_stdout, reason = "the demo's output is for the person running it")]
pub async fn run(options: RuntimeOptions) -> anyhow::Result<()> {
    let address = start_broker()?;
    println!("embedded MQTT broker listening on {address}");

    let (subscriber, mut events) = AsyncClient::new(MqttOptions::new("demo-subscriber", "127.0.0.1", address.port()), 64);
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
    .with_context(|| format!("the embedded broker did not accept a subscriber on {address} within {WAIT:?}"))?;
    println!("independent subscriber listening on demo/#");

    let runtime = Runtime::new(options)?;
    let metadata = [
        ("url", format!("tcp://127.0.0.1:{}", address.port())),
        ("topic", "demo/orders".to_string()),
        ("qos", "1".to_string()),
        ("consumerID", "demo-binding-{uuid}".to_string()),
    ];
    let mut binding = runtime
        .binding(BindingOptions {
            name: "demo".into(),
            app_id: "demo".into(),
            metadata: metadata.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
            handler: None,
        })
        .await?;
    let requests = [
        ("order 1: 2 apples", None),
        ("order 2: 1 pear", None),
        ("stock low: pears", Some("demo/alerts")),
    ];
    for (data, topic) in requests {
        let metadata = topic.map(|t| vec![("topic".to_string(), t.to_string())]).unwrap_or_default();
        binding
            .invoke(InvokeRequest { operation: "create".into(), data: data.as_bytes().to_vec(), metadata })
            .await?;
        println!("binding published {data:?} to {} (QoS 1, acknowledged)", topic.unwrap_or("demo/orders"));
    }

    let mut received = 0;
    tokio::time::timeout(WAIT, async {
        while received < requests.len() {
            if let Event::Incoming(Packet::Publish(publish)) = events.poll().await? {
                println!(
                    "subscriber received {:?} on {}",
                    String::from_utf8_lossy(&publish.payload),
                    publish.topic
                );
                received += 1;
            }
        }
        anyhow::Ok(())
    })
    .await
    .with_context(|| format!("the subscriber received {received} of {} messages", requests.len()))??;
    binding.close().await;
    let _ = subscriber.disconnect().await;
    println!("done: {received} messages published through the component and received");
    Ok(())
}

/// Starts rumqttd on a free loopback port.
fn start_broker() -> anyhow::Result<SocketAddr> {
    let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?.port();
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
    std::thread::Builder::new().name("demo-broker".into()).spawn(move || {
        if let Err(error) = broker.start() {
            tracing::error!("embedded broker stopped: {error}");
        }
    })?;
    Ok(address)
}
