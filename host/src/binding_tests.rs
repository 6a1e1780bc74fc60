//! A binding end to end (the component, the imports, the connection) against the scripted
//! broker of `broker::fake`: an invoke answered by its PUBACK or failed as unconfirmed, an
//! acknowledgement for a message of an earlier connection, and shutdown in the middle of a
//! delivery. The integration tests do the same against a real mosquitto.

use std::sync::{Arc, OnceLock};

use rumqttc::{Packet, PubAck, Publish, QoS, SubAck, SubscribeReasonCode};
use tokio::sync::{mpsc, watch};

use crate::broker::fake::{FakeBroker, FakeConnection, WAIT};
use crate::{
    Binding, BindingError, BindingOptions, BrokerError, Delivery, Event, EventHandler,
    InvokeRequest, Runtime, RuntimeOptions,
};

fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| Runtime::new(RuntimeOptions::default()).expect("the component loads"))
}

/// An application that reports each event and holds it until the gate opens.
struct Gate {
    events: mpsc::UnboundedSender<Event>,
    open: watch::Receiver<bool>,
}

impl EventHandler for Gate {
    fn deliver(&self, event: Event) -> Delivery<'_> {
        Box::pin(async move {
            let _ = self.events.send(event);
            let mut open = self.open.clone();
            let _ = open.wait_for(|open| *open).await;
            Ok(None)
        })
    }
}

/// Creates a binding on `broker` (QoS 1) and accepts its connection.
async fn start(
    broker: &FakeBroker,
    handler: Option<Arc<dyn EventHandler>>,
) -> (Arc<Binding>, FakeConnection) {
    let options = BindingOptions {
        name: "fake".into(),
        app_id: "fake-app".into(),
        metadata: vec![
            ("url".into(), format!("tcp://127.0.0.1:{}", broker.port)),
            ("topic".into(), "t".into()),
            ("qos".into(), "1".into()),
        ],
        handler,
    };
    let starting = tokio::spawn(async move { runtime().binding(options).await });
    let link = broker.accept(false).await;
    let binding = starting.await.expect("start task").expect("binding");
    (Arc::new(binding), link)
}

fn invoke(binding: &Arc<Binding>, data: &str) -> tokio::task::JoinHandle<Result<(), BindingError>> {
    let (binding, data) = (binding.clone(), data.as_bytes().to_vec());
    tokio::spawn(async move {
        let request = InvokeRequest {
            operation: "create".into(),
            data,
            metadata: Vec::new(),
        };
        binding.invoke(request).await.map(drop)
    })
}

async fn within<T>(task: tokio::task::JoinHandle<T>) -> T {
    tokio::time::timeout(WAIT, task)
        .await
        .expect("answered in time")
        .expect("task")
}

/// Answers the binding's SUBSCRIBE with a SUBACK granting QoS 1.
async fn grant_subscription(link: &mut FakeConnection) {
    match link.next().await {
        Packet::Subscribe(subscribe) => {
            let granted = vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)];
            link.write(Packet::SubAck(SubAck::new(subscribe.pkid, granted)))
                .await;
        }
        other => panic!("expected SUBSCRIBE, got {other:?}"),
    }
}

fn message(pkid: u16, payload: &str) -> Packet {
    let mut publish = Publish::new("t", QoS::AtLeastOnce, payload.as_bytes().to_vec());
    publish.pkid = pkid;
    Packet::Publish(publish)
}

#[tokio::test]
async fn invoke_answers_on_its_puback_and_fails_unconfirmed_after_a_new_session() {
    let broker = FakeBroker::start().await;
    let (binding, mut link) = start(&broker, None).await;

    let acknowledged = invoke(&binding, "a");
    let sent = link.publish().await;
    link.write(Packet::PubAck(PubAck::new(sent.pkid))).await;
    within(acknowledged).await.expect("success on its PUBACK");

    let lost = invoke(&binding, "b");
    link.publish().await;
    drop(link);
    let _new_session = broker.accept(false).await;
    match within(lost).await {
        Err(BindingError::Broker(BrokerError::Unconfirmed(text))) => {
            assert!(text.contains("new session"), "{text}")
        }
        other => panic!("expected unconfirmed, and no retry by the component, got {other:?}"),
    }
}

#[tokio::test]
async fn a_message_from_an_earlier_connection_is_not_acknowledged_on_the_next() {
    let broker = FakeBroker::start().await;
    let (events, mut delivered) = mpsc::unbounded_channel();
    let (gate, open) = watch::channel(false);
    let handler = Arc::new(Gate { events, open });
    let (binding, mut first) = start(&broker, Some(handler)).await;
    let reading = {
        let binding = binding.clone();
        tokio::spawn(async move { binding.read().await })
    };
    grant_subscription(&mut first).await;
    first.write(message(7, "old")).await;
    let held = tokio::time::timeout(WAIT, delivered.recv())
        .await
        .expect("delivered");
    assert_eq!(held.expect("event").data, &b"old"[..]);

    drop(first);
    let mut second = broker.accept(false).await;
    grant_subscription(&mut second).await;
    // The application accepts "old" now, on the new connection: its PUBACK must not go out,
    // since packet id 7 may name another message here.
    gate.send_replace(true);
    second.write(message(8, "new")).await;
    let next = tokio::time::timeout(WAIT, delivered.recv())
        .await
        .expect("delivered");
    assert_eq!(next.expect("event").data, &b"new"[..]);
    match second.next().await {
        Packet::PubAck(ack) => assert_eq!(ack.pkid, 8, "only the new message is acknowledged"),
        other => panic!("expected PUBACK 8, got {other:?}"),
    }
    binding.shutdown();
    within(reading).await.expect("read ends cleanly");
}

#[tokio::test]
async fn shutdown_in_the_middle_of_a_delivery_leaves_the_message_unacknowledged() {
    let broker = FakeBroker::start().await;
    let (events, mut delivered) = mpsc::unbounded_channel();
    let (_gate, open) = watch::channel(false);
    let handler = Arc::new(Gate { events, open });
    let (binding, mut link) = start(&broker, Some(handler)).await;
    let reading = {
        let binding = binding.clone();
        tokio::spawn(async move { binding.read().await })
    };
    grant_subscription(&mut link).await;
    link.write(message(3, "in hand")).await;
    tokio::time::timeout(WAIT, delivered.recv())
        .await
        .expect("delivered")
        .expect("event");

    binding.shutdown();
    within(reading).await.expect("read ends cleanly");
    let closing = {
        let binding = binding.clone();
        tokio::spawn(async move { binding.close().await })
    };
    match link.next().await {
        Packet::Disconnect => {}
        other => panic!("expected DISCONNECT and no acknowledgement, got {other:?}"),
    }
    drop(link);
    within(closing).await;
}
