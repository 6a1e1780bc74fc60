//! A scripted MQTT broker on loopback for unit tests (a test's fake, never evidence on its
//! own): it speaks MQTT 3.1.1 through rumqttc's codec and does exactly what each test says.
//! It is the other side of the wire, so it names rumqttc's types directly rather than going
//! through this crate's `codec`: the client's own codec must not be what judges its packets.
//! Integration tests use a real mosquitto.

use std::time::Duration;

use bytes::BytesMut;
use rumqttc::{ConnAck, ConnectReturnCode, Packet};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use super::{BrokerSettings, ConnectOptions, Connection, ProtocolVersion, Transport};

/// How long a test waits for anything before failing.
pub const WAIT: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct FakeBroker {
    pub listener: TcpListener,
    pub port: u16,
}

#[derive(Debug)]
pub struct FakeConnection {
    stream: TcpStream,
    buffer: BytesMut,
}

impl FakeBroker {
    pub async fn start() -> Self {
        Self::start_on(0).await
    }

    /// Listens on `port` of 127.0.0.1 (0: any free port).
    pub async fn start_on(port: u16) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("listens");
        let port = listener.local_addr().expect("address").port();
        Self { listener, port }
    }

    /// Accepts the client's next connection: reads its CONNECT, answers CONNACK.
    pub async fn accept(&self, session_present: bool) -> FakeConnection {
        self.answer(ConnectReturnCode::Success, session_present)
            .await
    }

    /// Accepts the client's next connection and refuses it with CONNACK `code`.
    pub async fn refuse(&self, code: ConnectReturnCode) {
        self.answer(code, false).await;
    }

    async fn answer(&self, code: ConnectReturnCode, session_present: bool) -> FakeConnection {
        let (stream, _) = tokio::time::timeout(WAIT, self.listener.accept())
            .await
            .expect("the client connected in time")
            .expect("accept");
        let mut connection = FakeConnection {
            stream,
            buffer: BytesMut::new(),
        };
        match connection.read().await {
            Packet::Connect(_) => {}
            other => panic!("expected CONNECT, got {other:?}"),
        }
        connection
            .write(Packet::ConnAck(ConnAck::new(code, session_present)))
            .await;
        connection
    }

    pub fn options(&self) -> ConnectOptions {
        ConnectOptions {
            transport: Transport::Tcp,
            host: "127.0.0.1".into(),
            port: self.port,
            path: String::new(),
            failover: Vec::new(),
            protocol: ProtocolVersion::V311,
            client_id: "fake-test".into(),
            username: None,
            password: None,
            clean_session: false,
            session_expiry: None,
            keep_alive: Duration::from_secs(30),
            ca_cert: None,
            client_cert: None,
            client_key: None,
            connect_timeout: WAIT,
        }
    }

    /// A connection to this broker, accepted with `session_present`.
    pub async fn connect(&self, settings: BrokerSettings) -> (Connection, FakeConnection) {
        let options = self.options();
        let connecting = tokio::spawn(async move { Connection::connect(options, &settings).await });
        let accepted = self.accept(false).await;
        let connection = connecting.await.expect("connect task").expect("connected");
        (connection, accepted)
    }
}

impl FakeConnection {
    pub async fn read(&mut self) -> Packet {
        tokio::time::timeout(WAIT, async {
            loop {
                match Packet::read(&mut self.buffer, 1 << 20) {
                    Ok(packet) => return packet,
                    Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {}
                    Err(e) => panic!("the client sent garbage: {e}"),
                }
                let read = self.stream.read_buf(&mut self.buffer).await.expect("read");
                assert!(read > 0, "the client closed the connection");
            }
        })
        .await
        .expect("the client sent a packet in time")
    }

    /// The next packet other than a keep-alive (PINGREQ is answered).
    pub async fn next(&mut self) -> Packet {
        loop {
            match self.read().await {
                Packet::PingReq => self.write(Packet::PingResp).await,
                packet => return packet,
            }
        }
    }

    /// The next PUBLISH, skipping keep-alives.
    pub async fn publish(&mut self) -> rumqttc::Publish {
        loop {
            match self.read().await {
                Packet::Publish(publish) => return publish,
                Packet::PingReq => self.write(Packet::PingResp).await,
                other => panic!("expected PUBLISH, got {other:?}"),
            }
        }
    }

    pub async fn write(&mut self, packet: Packet) {
        let mut out = BytesMut::new();
        packet.write(&mut out, 1 << 20).expect("encodes");
        self.stream.write_all(&out).await.expect("write");
    }
}
