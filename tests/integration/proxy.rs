//! A TCP proxy on 127.0.0.1 between a binding and its broker, for breaking the link on
//! purpose: close every connection, close the next one to carry a PUBLISH right after it
//! went through (so the broker may have the message and the client never sees its
//! acknowledgement), or stop forwarding without closing anything (a blackhole). Stops on
//! drop.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Proxy {
    pub port: u16,
    control: Arc<Control>,
    accept: tokio::task::JoinHandle<()>,
}

struct Control {
    upstream: u16,
    /// Swallow everything, both ways, closing nothing.
    blackhole: watch::Sender<bool>,
    /// Bumped to close every connection open at that moment.
    cuts: watch::Sender<u64>,
    /// Close the next connection that forwards a PUBLISH, right after forwarding it.
    cut_after_publish: AtomicBool,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `127.0.0.1:upstream`.
    pub async fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("the proxy listens");
        let port = listener.local_addr().expect("proxy address").port();
        let control = Arc::new(Control {
            upstream,
            blackhole: watch::Sender::new(false),
            cuts: watch::Sender::new(0),
            cut_after_publish: AtomicBool::new(false),
        });
        let accepting = control.clone();
        let accept = tokio::spawn(async move {
            let mut relays = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                relays.spawn(relay(client, accepting.clone()));
            }
        });
        Self {
            port,
            control,
            accept,
        }
    }

    pub fn url(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }

    /// Closes every connection open now.
    pub fn cut(&self) {
        self.control.cuts.send_modify(|n| *n += 1);
    }

    /// Closes the next connection that carries a PUBLISH towards the broker, just after the
    /// packet went through.
    pub fn cut_after_next_publish(&self) {
        self.control
            .cut_after_publish
            .store(true, Ordering::Release);
    }

    /// Stops forwarding (`true`) without closing anything; `false` forwards again, after
    /// closing the connections whose bytes were swallowed.
    pub fn blackhole(&self, on: bool) {
        self.control.blackhole.send_replace(on);
        if !on {
            self.cut();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn relay(client: TcpStream, control: Arc<Control>) {
    let Ok(server) = TcpStream::connect(("127.0.0.1", control.upstream)).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let mut cuts = control.cuts.subscribe();
    cuts.mark_unchanged();
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    // Whichever ends first ends both: dropping the halves closes the sockets.
    tokio::select! {
        _ = pump(client_read, server_write, true, &control) => {}
        _ = pump(server_read, client_write, false, &control) => {}
        _ = cuts.changed() => {}
    }
}

async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    towards_broker: bool,
    control: &Control,
) -> std::io::Result<()> {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = from.read(&mut buffer).await?;
        if read == 0 {
            return Ok(());
        }
        if *control.blackhole.borrow() {
            continue;
        }
        to.write_all(&buffer[..read]).await?;
        // MQTT control packet type 3 in the first byte's high nibble: PUBLISH.
        let publish = buffer[0] >> 4 == 3;
        if towards_broker
            && publish
            && control
                .cut_after_publish
                .compare_exchange(true, false, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            to.flush().await?;
            return Ok(());
        }
    }
}
