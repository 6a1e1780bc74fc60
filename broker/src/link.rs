//! One network connection to the broker: TCP, TLS over TCP, and WebSockets over either
//! (the HTTP upgrade, then MQTT in binary frames), the CONNECT/CONNACK handshake, and MQTT packets in and out through `codec`, in the connection's MQTT
//! version. What to send and what an answer means is left to `driver` and `outbox`.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{
    AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadHalf, WriteHalf,
};
use tokio::net::TcpStream;

use super::codec::{self, ProtocolVersion};
use super::reason;
use crate::error::{BrokerError, Field};
use crate::packet::{ConnAck, Connect, Incoming, Outgoing};

/// Where and how to connect; built once per connection from the component's options.
#[derive(Clone)]
pub(super) struct Endpoint {
    pub host: String,
    pub port: u16,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// The WebSocket endpoint's path (and query) for `ws://` and `wss://`; `None` for plain
    /// MQTT over TCP or TLS.
    pub websocket_path: Option<String>,
    pub version: ProtocolVersion,
    /// With the login, which its `Debug` keeps to itself.
    pub connect: Connect,
    pub connect_timeout: Duration,
    /// Largest packet accepted from the broker, and largest written.
    pub max_packet: usize,
}

impl std::fmt::Debug for Endpoint {
    /// Where, not who: the TLS configuration and the CONNECT are left out.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls.is_some())
            .field("websocket_path", &self.websocket_path)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

/// An open, accepted MQTT connection, in two halves so that reading and writing can wait
/// at the same time.
pub(super) struct Link {
    pub reader: Reader,
    pub writer: Writer,
}

pub(super) struct Reader {
    half: ReadHalf<Box<dyn Stream>>,
    buffer: BytesMut,
    version: ProtocolVersion,
    max_packet: usize,
}

pub(super) struct Writer {
    half: WriteHalf<Box<dyn Stream>>,
    buffer: BytesMut,
    version: ProtocolVersion,
    max_packet: usize,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("buffered_out", &self.writer.buffer.len())
            .finish_non_exhaustive()
    }
}

/// The size buffers start at, and the most capacity an empty buffer keeps.
const INITIAL_BUFFER: usize = 8 * 1024;
const RETAINED_BUFFER: usize = 256 * 1024;

/// How much encoded output is buffered before the writer must catch up.
pub(super) const OUTGOING_HIGH_WATER: usize = 1 << 20;

impl Link {
    /// Opens TCP (and TLS), sends CONNECT and waits for CONNACK, all within the endpoint's
    /// connect timeout.
    pub(super) async fn open(endpoint: &Endpoint) -> Result<(Self, ConnAck), BrokerError> {
        let opening = Self::handshake(endpoint);
        match tokio::time::timeout(endpoint.connect_timeout, opening).await {
            Ok(opened) => opened,
            Err(_) => Err(BrokerError::Timeout(format!(
                "no CONNACK from {}:{} within {} ms",
                endpoint.host,
                endpoint.port,
                endpoint.connect_timeout.as_millis()
            ))),
        }
    }

    async fn handshake(endpoint: &Endpoint) -> Result<(Self, ConnAck), BrokerError> {
        let tcp = connect_tcp(&endpoint.host, endpoint.port)
            .await
            .map_err(|e| {
                BrokerError::Unreachable(format!(
                    "{}:{}: {e}{}",
                    endpoint.host,
                    endpoint.port,
                    no_network_hint(&e)
                ))
            })?;
        // MQTT packets are small and latency-bound: do not let Nagle hold them back.
        let _ = tcp.set_nodelay(true);
        let stream: Box<dyn Stream> = match &endpoint.tls {
            None => Box::new(tcp),
            Some(config) => {
                let name = rustls_pki_types::ServerName::try_from(endpoint.host.clone())
                    .map_err(|e| BrokerError::Tls(format!("host {:?}: {e}", endpoint.host)))?;
                let tls = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| classify_io(&e))?;
                Box::new(tls)
            }
        };
        let stream = match &endpoint.websocket_path {
            None => stream,
            Some(path) => websocket(stream, endpoint, path).await?,
        };
        let (reader, writer) = tokio::io::split(stream);
        let mut link = Link {
            reader: Reader {
                half: reader,
                buffer: BytesMut::with_capacity(INITIAL_BUFFER),
                version: endpoint.version,
                max_packet: endpoint.max_packet,
            },
            writer: Writer {
                half: writer,
                buffer: BytesMut::with_capacity(INITIAL_BUFFER),
                version: endpoint.version,
                max_packet: endpoint.max_packet,
            },
        };
        link.writer
            .queue(&Outgoing::Connect(endpoint.connect.clone()))?;
        link.writer.flush().await?;
        match link.reader.read().await? {
            Incoming::ConnAck(connack) if connack.code == 0 => Ok((link, connack)),
            Incoming::ConnAck(connack) => Err(reason::connect_refused(
                endpoint.version,
                connack.code,
                connack.reason_string.as_deref(),
            )),
            other => Err(BrokerError::Other(format!(
                "the broker answered CONNECT with {other:?} instead of CONNACK"
            ))),
        }
    }

    /// Writes DISCONNECT after everything buffered, closes our side, and waits for the
    /// broker to close its own. Closing the socket while the broker still sends (messages
    /// in flight, a PINGRESP) would leave unread bytes, and the kernel then resets the
    /// connection: the broker may drop what it had not read yet, our last acknowledgements
    /// and the DISCONNECT included. The caller bounds the wait.
    pub(super) async fn close(mut self) -> Result<(), BrokerError> {
        self.writer.queue(&Outgoing::Disconnect)?;
        self.writer.flush().await?;
        let _ = self.writer.half.shutdown().await;
        let mut discard = [0u8; 4096];
        loop {
            match self.reader.half.read(&mut discard).await {
                Ok(0) | Err(_) => return Ok(()),
                Ok(_) => {}
            }
        }
    }
}

impl Writer {
    /// The broker's maximum packet size (MQTT 5 CONNACK): nothing larger is written, on
    /// top of the host's own limit.
    pub(super) fn limit_packet_size(&mut self, broker_max: u32) {
        let broker_max = usize::try_from(broker_max).unwrap_or(usize::MAX);
        self.max_packet = self.max_packet.min(broker_max);
    }

    /// The largest packet written on this connection.
    pub(super) fn max_packet(&self) -> usize {
        self.max_packet
    }

    /// Encodes a packet into the write buffer; `TooLarge`, with nothing written, when it is
    /// over the connection's maximum packet size.
    pub(super) fn queue(&mut self, packet: &Outgoing) -> Result<(), BrokerError> {
        codec::write(self.version, packet, &mut self.buffer, self.max_packet)
    }

    /// Whether encoded output waits to be written.
    pub(super) fn has_output(&self) -> bool {
        !self.buffer.is_empty()
    }

    pub(super) fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// Writes some of the buffered output, flushing once it is all out. Cancel-safe: what
    /// was written is gone from the buffer, the rest stays.
    pub(super) async fn write_some(&mut self) -> Result<(), BrokerError> {
        if !self.buffer.is_empty() {
            let written = self
                .half
                .write_buf(&mut self.buffer)
                .await
                .map_err(|e| classify_io(&e))?;
            if written == 0 {
                return Err(BrokerError::Unreachable(
                    "the connection was closed while writing".into(),
                ));
            }
        }
        if self.buffer.is_empty() {
            self.half.flush().await.map_err(|e| classify_io(&e))?;
            // A large packet grew the buffer; do not keep that memory while idle.
            if self.buffer.capacity() > RETAINED_BUFFER {
                self.buffer = BytesMut::with_capacity(INITIAL_BUFFER);
            }
        }
        Ok(())
    }

    /// Writes everything buffered.
    pub(super) async fn flush(&mut self) -> Result<(), BrokerError> {
        while self.has_output() {
            self.write_some().await?;
        }
        self.half.flush().await.map_err(|e| classify_io(&e))
    }
}

impl Reader {
    /// Reads the next packet. Cancel-safe: bytes read stay buffered for the next call.
    pub(super) async fn read(&mut self) -> Result<Incoming, BrokerError> {
        loop {
            if let Some(packet) = self.read_buffered()? {
                return Ok(packet);
            }
            // A large packet grew the buffer; do not keep that memory while idle.
            if self.buffer.is_empty() && self.buffer.capacity() > RETAINED_BUFFER {
                self.buffer = BytesMut::with_capacity(INITIAL_BUFFER);
            }
            let read = self
                .half
                .read_buf(&mut self.buffer)
                .await
                .map_err(|e| classify_io(&e))?;
            if read == 0 {
                return Err(BrokerError::Unreachable(
                    "the broker closed the connection".into(),
                ));
            }
        }
    }

    /// Takes a packet already read, without waiting.
    pub(super) fn read_buffered(&mut self) -> Result<Option<Incoming>, BrokerError> {
        codec::read(self.version, &mut self.buffer, self.max_packet)
    }
}

/// Opens TCP to `host`, a name or an address.
async fn connect_tcp(host: &str, port: u16) -> std::io::Result<TcpStream> {
    if cfg!(target_family = "wasm") {
        // tokio looks names up on a blocking thread, and wasm32-wasip2 has no threads; std
        // looks them up in place, through `wasi:sockets/ip-name-lookup`.
        let addresses: Vec<std::net::SocketAddr> =
            std::net::ToSocketAddrs::to_socket_addrs(&(host, port))?.collect();
        TcpStream::connect(addresses.as_slice()).await
    } else {
        TcpStream::connect((host, port)).await
    }
}

/// In a WASI runtime, a refused permission is the runtime's sandbox, not the broker: say
/// how to grant it.
fn no_network_hint(error: &std::io::Error) -> &'static str {
    if cfg!(target_family = "wasm") && error.kind() == std::io::ErrorKind::PermissionDenied {
        "; the WASI runtime gives this component no network: grant it (wasmtime run -S inherit-network, and -S allow-ip-name-lookup for a host name)"
    } else {
        ""
    }
}

/// Upgrades an open connection to a WebSocket at `path` with the subprotocol `mqtt`
/// (MQTT 5 section 6), and gives back the binary frames as one byte stream.
async fn websocket(
    stream: Box<dyn Stream>,
    endpoint: &Endpoint,
    path: &str,
) -> Result<Box<dyn Stream>, BrokerError> {
    use async_tungstenite::tungstenite::{self, client::IntoClientRequest as _};

    let scheme = if endpoint.tls.is_some() { "wss" } else { "ws" };
    let host = if endpoint.host.contains(':') {
        format!("[{}]", endpoint.host)
    } else {
        endpoint.host.clone()
    };
    let url = format!("{scheme}://{host}:{}{path}", endpoint.port);
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| BrokerError::invalid(Field::Path, format!("{path:?}: {e}")))?;
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        tungstenite::http::HeaderValue::from_static("mqtt"),
    );
    // A frame may hold the largest packet this client reads, and then some.
    let frame_limit = endpoint.max_packet.saturating_add(64 * 1024);
    let config = tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(frame_limit))
        .max_frame_size(Some(frame_limit));
    let (socket, response) =
        async_tungstenite::tokio::client_async_with_config(request, stream, Some(config))
            .await
            .map_err(|error| match error {
                tungstenite::Error::Io(io) => classify_io(&io),
                tungstenite::Error::Http(response) => BrokerError::Unreachable(format!(
                    "{url}: the server refused the WebSocket upgrade with HTTP {}",
                    response.status()
                )),
                other => BrokerError::Unreachable(format!("{url}: WebSocket handshake: {other}")),
            })?;
    let subprotocol = response
        .headers()
        .get("Sec-WebSocket-Protocol")
        .and_then(|value| value.to_str().ok());
    if subprotocol.map(str::trim) != Some("mqtt") {
        return Err(BrokerError::Other(format!(
            "{url}: the server accepted the WebSocket without the subprotocol \"mqtt\" (it answered {subprotocol:?}); it does not speak MQTT there"
        )));
    }
    Ok(Box::new(ws_stream_tungstenite::WsStream::new(socket)))
}

/// Sorts an I/O error into what the component can act on. Under TLS 1.3 the server
/// rejects a client certificate after the client's handshake has finished, so the alert
/// surfaces from the first MQTT read: look for a TLS cause at any depth.
fn classify_io(error: &std::io::Error) -> BrokerError {
    match rustls_cause(error) {
        Some(tls) => BrokerError::Tls(tls.to_string()),
        None => BrokerError::Unreachable(error.to_string()),
    }
}

/// The `rustls::Error` behind an error, if any. rustls errors travel inside `io::Error`s,
/// whose `source()` skips the wrapped error, so those are opened with `get_ref`.
fn rustls_cause<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(tls) = error.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        let wrapped = error
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref);
        if let Some(tls) = wrapped.and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
            return Some(tls);
        }
        next = error.source();
    }
    None
}
