//! The application behind `--app-port`, as daprd talks to it over HTTP: the OPTIONS probe
//! that tells whether it wants a binding's events, and the delivery of each event as
//! `POST /{route}`; and waiting for the app's port, whatever it speaks.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::{Delivery, Event, EventHandler};

/// How long the app may take to answer one event before the delivery counts as failed.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the OPTIONS probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest answer the app may give to an event (see `answer`).
const ANSWER_LIMIT: usize = 16 * 1024 * 1024;

/// The app on `127.0.0.1:port`.
#[derive(Debug, Clone)]
pub struct App {
    client: reqwest::Client,
    port: u16,
}

impl App {
    /// `token` (daprd's `APP_API_TOKEN`) goes to the app in the `dapr-api-token` header of
    /// every request, so that it can tell the sidecar from anyone else.
    pub fn new(port: u16, token: Option<&str>) -> anyhow::Result<Self> {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = token {
            let mut value = reqwest::header::HeaderValue::from_str(token).map_err(|_| {
                anyhow::anyhow!("APP_API_TOKEN: expected a token usable as an HTTP header value")
            })?;
            value.set_sensitive(true);
            headers.insert("dapr-api-token", value);
        }
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .default_headers(headers)
            .build()?;
        Ok(Self { client, port })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    fn url(&self, route: &str) -> String {
        format!("http://127.0.0.1:{}/{route}", self.port)
    }

    /// daprd's probe: the app wants a binding's events if `OPTIONS /{route}` answers 2xx
    /// or 405.
    pub async fn wants(&self, route: &str) -> bool {
        let probe = self
            .client
            .request(reqwest::Method::OPTIONS, self.url(route))
            .timeout(PROBE_TIMEOUT)
            .send();
        match probe.await {
            Ok(response) => {
                let status = response.status();
                status.is_success() || status == reqwest::StatusCode::METHOD_NOT_ALLOWED
            }
            Err(error) => {
                tracing::info!(route, "OPTIONS probe failed: {error}");
                false
            }
        }
    }

    /// The handler that delivers a binding's events to `route`.
    pub fn route(&self, route: &str) -> AppRoute {
        AppRoute {
            app: self.clone(),
            url: self.url(route),
        }
    }
}

/// Delivers events to one route of the app: body = payload, `Content-Type:
/// application/json` (as daprd sends), metadata as headers; a 2xx answer is success.
#[derive(Debug)]
pub struct AppRoute {
    app: App,
    url: String,
}

impl EventHandler for AppRoute {
    fn deliver(&self, event: Event) -> Delivery<'_> {
        Box::pin(async move {
            let mut request = self
                .app
                .client
                .post(&self.url)
                .timeout(DELIVERY_TIMEOUT)
                .header(reqwest::header::CONTENT_TYPE, "application/json");
            for (name, value) in event.metadata.iter() {
                match (
                    reqwest::header::HeaderName::from_bytes(name.as_bytes()),
                    reqwest::header::HeaderValue::from_bytes(value.as_bytes()),
                ) {
                    (Ok(name), Ok(value)) => request = request.header(name, value),
                    _ => {
                        tracing::warn!(metadata = %name, "metadata cannot be an HTTP header; not sent to the app")
                    }
                }
            }
            let response = request.body(event.data).send().await.map_err(|e| {
                if e.is_timeout() {
                    format!(
                        "POST {}: the app did not answer within {} s",
                        self.url,
                        DELIVERY_TIMEOUT.as_secs()
                    )
                } else {
                    format!("POST {}: {e}", self.url)
                }
            })?;
            let status = response.status();
            if !status.is_success() {
                return Err(format!("POST {}: the app answered {status}", self.url));
            }
            answer(response)
                .await
                .map_err(|e| format!("POST {}: reading the app's answer: {e}", self.url))
        })
    }
}

/// The body of the app's answer, if it has one: the response to an MQTT 5 request. At most
/// [`ANSWER_LIMIT`] bytes, so that an app cannot make the sidecar hold more than a message.
async fn answer(mut response: reqwest::Response) -> Result<Option<Vec<u8>>, String> {
    if response.content_length() == Some(0) {
        return Ok(None);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
        if body.len() + chunk.len() > ANSWER_LIMIT {
            return Err(format!("the answer is larger than {ANSWER_LIMIT} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((!body.is_empty()).then_some(body))
}

/// Waits until the app's port accepts connections, whatever it speaks; `false` if shutdown
/// came first.
pub(crate) async fn wait_until_listening(port: u16, shutdown: &CancellationToken) -> bool {
    let mut logged = tokio::time::Instant::now();
    loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return true;
        }
        if logged.elapsed() >= Duration::from_secs(5) {
            tracing::info!(
                port,
                "waiting for the app to listen before starting input bindings"
            );
            logged = tokio::time::Instant::now();
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
            () = shutdown.cancelled() => return false,
        }
    }
}
