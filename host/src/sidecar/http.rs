//! Dapr's HTTP API for bindings, as far as this sidecar serves it: invoking output bindings,
//! health, and metadata. Errors use Dapr's shape, `{"errorCode": ..., "message": ...}`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use super::state::{InvokeFailure, Sidecar};
use crate::InvokeRequest;
use crate::error::one_line;
use crate::registry::BindingState;

/// How long a client may take to send a whole request header, from its connection or its
/// previous request; then the connection is closed. Idle or half-sent connections would
/// otherwise be held forever, each using a descriptor.
pub(crate) const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves `router` on `listener` (HTTP/1.1, as Dapr's HTTP API) until `stop` is cancelled,
/// then lets the requests in progress finish. Connections that do not send a whole request
/// header within [`HEADER_READ_TIMEOUT`] are closed.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    api: Api,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of descriptors, usually: let connections close before trying again.
                    tracing::warn!("accepting an HTTP connection failed: {error}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = stop.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(api.clone());
        let connection = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!("HTTP connection ended: {error}");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Largest request body: the broker's default payload limit (16 MiB), twice over for JSON
/// escaping.
const MAX_BODY: usize = 32 * 1024 * 1024;

/// Most request body bytes the sidecar's invokes hold at once; an invoke reserves its
/// Content-Length (or [`MAX_BODY`] when it has none) before reading its body, and keeps it
/// until it answers. Each byte is held a few times over (the body, the parsed JSON, the
/// data, the packet), so this bounds the memory of invokes in flight to a few times 64 MiB.
pub(crate) const BODY_BUDGET: usize = 64 * 1024 * 1024;

/// The sidecar's HTTP API: the API token checked once per request, then the routes.
///
/// The check wraps the router rather than being a router layer: a layer (as was
/// `DefaultBodyLimit` too, which `invoke` does not need, as it reads its body under its own
/// limit) wraps every route in a boxed service that is cloned, and its future boxed, on
/// each request. Without them an invoke makes 34 allocations instead of 50 (the
/// hand-written floor 28; `docs/BENCHMARKS.md`).
#[derive(Clone)]
pub(crate) struct Api {
    router: Router,
    token: Option<Arc<str>>,
}

impl Api {
    pub(crate) fn new(sidecar: Arc<Sidecar>) -> Self {
        let token = sidecar.api_token.as_deref().map(Arc::from);
        let router = Router::new()
            .route("/v1.0/bindings/{name}", post(invoke).put(invoke))
            .route("/v1.0/healthz", get(healthz))
            .route("/v1.0/healthz/outbound", get(healthz_outbound))
            .route("/v1.0/metadata", get(metadata))
            .with_state(sidecar);
        Self { router, token }
    }

    /// With `DAPR_API_TOKEN` set, the refusal (401) of a request but the health checks that
    /// does not carry it in `dapr-api-token`. Compared in constant time.
    fn refusal<B>(&self, request: &axum::http::Request<B>) -> Option<Response> {
        use subtle::ConstantTimeEq as _;
        let token = self.token.as_deref()?;
        if OPEN_PATHS.contains(&request.uri().path()) {
            return None;
        }
        let given = request
            .headers()
            .get("dapr-api-token")
            .map(|value| value.as_bytes())
            .unwrap_or_default();
        if bool::from(given.ct_eq(token.as_bytes())) {
            return None;
        }
        Some(error(
            StatusCode::UNAUTHORIZED,
            "ERR_UNAUTHORIZED",
            "invalid api token: the dapr-api-token header is missing or wrong".into(),
        ))
    }
}

impl<B> tower::Service<axum::http::Request<B>> for Api
where
    B: axum::body::HttpBody<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = futures_util::future::Either<
        std::future::Ready<Result<Response, Self::Error>>,
        axum::routing::future::RouteFuture<Self::Error>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: axum::http::Request<B>) -> Self::Future {
        use futures_util::future::Either;
        match self.refusal(&request) {
            Some(refusal) => Either::Left(std::future::ready(Ok(refusal))),
            None => Either::Right(self.router.call(request)),
        }
    }
}

/// The health checks, which daprd answers without the API token. Matched on the exact
/// path: daprd once matched `/healthz` anywhere in the URL, query included, and any request
/// could slip through (GHSA-59m6-82qm-vqgj).
const OPEN_PATHS: [&str; 2] = ["/v1.0/healthz", "/v1.0/healthz/outbound"];

fn error(status: StatusCode, code: &str, message: String) -> Response {
    (
        status,
        Json(serde_json::json!({ "errorCode": code, "message": message })),
    )
        .into_response()
}

/// Dapr's output binding request body.
#[derive(Deserialize)]
struct OutputRequest {
    /// Any JSON value; published as its JSON text, as daprd does (absent is `null`).
    #[serde(default)]
    data: serde_json::Value,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    #[serde(default)]
    operation: Option<String>,
}

async fn invoke(
    State(sidecar): State<Arc<Sidecar>>,
    name: Result<Path<String>, axum::extract::rejection::PathRejection>,
    // The request itself, not a `HeaderMap` extractor, which would copy the headers.
    request: axum::extract::Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let headers = parts.headers;
    // Extraction failures answer in Dapr's shape too, not axum's plain text.
    let name = match name {
        Ok(Path(name)) => name,
        Err(rejection) => {
            return error(
                StatusCode::BAD_REQUEST,
                "ERR_MALFORMED_REQUEST",
                format!("the binding name in the path is malformed: {rejection}"),
            );
        }
    };
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|length| length > MAX_BODY) {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "ERR_MALFORMED_REQUEST",
            format!("the request body is over the limit of {MAX_BODY} bytes"),
        );
    }
    let weight = declared.unwrap_or(MAX_BODY).clamp(1, BODY_BUDGET);
    let Ok(_reserved) = sidecar
        .body_budget
        .acquire_many(u32::try_from(weight).unwrap_or(u32::MAX))
        .await
    else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "ERR_INVOKE_OUTPUT_BINDING",
            "the sidecar is shutting down".into(),
        );
    };
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(body) => body,
        Err(e) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "ERR_MALFORMED_REQUEST",
                format!("reading the request body (at most {MAX_BODY} bytes): {e}"),
            );
        }
    };
    let request: OutputRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "ERR_MALFORMED_REQUEST",
                format!("failed deserializing HTTP body: {e}"),
            );
        }
    };
    let Some(operation) = request.operation.filter(|op| !op.is_empty()) else {
        return error(
            StatusCode::BAD_REQUEST,
            "ERR_MALFORMED_REQUEST",
            "the request has no \"operation\"".into(),
        );
    };
    let data = match serde_json::to_vec(&request.data) {
        Ok(data) => data,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "ERR_MALFORMED_REQUEST",
                format!("data: {e}"),
            );
        }
    };
    let mut metadata: Vec<(String, String)> = request.metadata.into_iter().collect();
    super::trace::carry(&mut metadata, |name| headers.get(name)?.to_str().ok());
    let request = InvokeRequest {
        operation,
        data,
        metadata,
    };
    match sidecar.invoke(&name, request).await {
        Ok(response) => match response.data {
            Some(data) => (StatusCode::OK, data).into_response(),
            None => StatusCode::NO_CONTENT.into_response(),
        },
        Err(InvokeFailure::NotFound(why)) => {
            error(StatusCode::NOT_FOUND, "ERR_INVOKE_OUTPUT_BINDING", why)
        }
        Err(InvokeFailure::Failed(why)) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "ERR_INVOKE_OUTPUT_BINDING",
            why,
        ),
    }
}

/// 204 when every component is up, but those that ignore errors (`spec.ignoreErrors`,
/// which daprd logs and leaves out, as it is ready without them); 500 listing what is not.
async fn healthz(State(sidecar): State<Arc<Sidecar>>) -> Response {
    health(&sidecar, false)
}

/// 204 when every output binding is up.
async fn healthz_outbound(State(sidecar): State<Arc<Sidecar>>) -> Response {
    health(&sidecar, true)
}

fn health(sidecar: &Sidecar, outbound_only: bool) -> Response {
    let mut problems: Vec<String> = if outbound_only {
        Vec::new()
    } else {
        sidecar
            .failed
            .iter()
            .filter(|(component, _)| !component.ignore_errors)
            .map(|(component, why)| format!("{}: {why}", component.name))
            .collect()
    };
    for spec in sidecar
        .bindings
        .values()
        .filter(|spec| !outbound_only || spec.direction.output)
    {
        match sidecar.registry.state(&spec.name) {
            Some(BindingState::Up(_)) => {}
            Some(BindingState::Starting) | None => {
                problems.push(format!("{}: starting", spec.name))
            }
            Some(BindingState::Retrying(_) | BindingState::Failed(_)) if spec.ignore_errors => {}
            Some(BindingState::Retrying(why)) => problems.push(format!("{}: {why}", spec.name)),
            Some(BindingState::Failed(why)) => {
                problems.push(format!("{}: {}", spec.name, one_line(&*why)))
            }
        }
    }
    if problems.is_empty() {
        StatusCode::NO_CONTENT.into_response()
    } else {
        error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "ERR_HEALTH_NOT_READY",
            format!("not ready: {}", problems.join("; ")),
        )
    }
}

/// Dapr's metadata document, with each binding's state under `extended`.
async fn metadata(State(sidecar): State<Arc<Sidecar>>) -> Response {
    let components: Vec<serde_json::Value> = sidecar
        .components
        .iter()
        .map(|c| serde_json::json!({ "name": c.name, "type": c.component_type, "version": c.version, "capabilities": [] }))
        .collect();
    let extended = sidecar.extended_metadata().await;
    let mut document = serde_json::json!({
        "id": sidecar.app_id,
        "runtimeVersion": concat!("mqtt-binding ", env!("CARGO_PKG_VERSION")),
        "components": components,
        "extended": extended,
    });
    if let Some(port) = sidecar.app_port {
        document["appConnectionProperties"] =
            serde_json::json!({ "port": port, "protocol": sidecar.app_protocol.to_string() });
    }
    Json(document).into_response()
}
