//! Dapr's gRPC API, as far as this sidecar goes: `InvokeBinding` and `GetMetadata` of the
//! `Dapr` service. Every other method answers `Unimplemented`, saying that this sidecar
//! serves bindings only. With `DAPR_API_TOKEN` set, both methods need it in the
//! `dapr-api-token` metadata, as over HTTP. Each checks it itself rather than through an
//! interceptor, which would turn every request into a `tonic::Request` and back: about 2 µs
//! of CPU per `InvokeBinding` (`docs/BENCHMARKS.md`).
//!
//! Incoming gRPC metadata (headers) does not become binding metadata, unlike daprd, which
//! copies every header in: only the request's `metadata` map does, so that a header a proxy
//! or SDK adds can never change a topic or, with MQTT 5, turn into a user property.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tonic::codegen::http;
use tonic::{Request, Response, Status};

use super::proto::dapr_server::{Dapr, DaprServer};
use super::proto::{
    AppConnectionProperties, GetMetadataRequest, GetMetadataResponse, InvokeBindingRequest,
    InvokeBindingResponse, RegisteredComponents,
};
use super::state::{InvokeFailure, Sidecar};

/// The answer to every method of Dapr's API this sidecar does not serve.
const BINDINGS_ONLY: &str =
    "this sidecar (mqtt-binding) serves Dapr's bindings API only: InvokeBinding and GetMetadata";

struct Api {
    sidecar: Arc<Sidecar>,
}

#[tonic::async_trait]
impl Dapr for Api {
    async fn invoke_binding(
        &self,
        request: Request<InvokeBindingRequest>,
    ) -> Result<Response<InvokeBindingResponse>, Status> {
        let (headers, _, request) = request.into_parts();
        check_token(self.sidecar.api_token.as_deref(), &headers)?;
        let mut metadata: Vec<(String, String)> = request.metadata.into_iter().collect();
        super::trace::carry(&mut metadata, |name| headers.get(name)?.to_str().ok());
        let invoke = crate::InvokeRequest {
            operation: request.operation,
            data: request.data,
            metadata,
        };
        match self.sidecar.invoke(&request.name, invoke).await {
            Ok(answer) => Ok(Response::new(InvokeBindingResponse {
                data: answer.data.unwrap_or_default(),
                metadata: answer.metadata.into_iter().collect(),
            })),
            // As daprd: Internal, for an unknown binding as for a failed one.
            Err(InvokeFailure::NotFound(why)) => Err(Status::internal(format!(
                "error invoking output binding {}: {why}",
                request.name
            ))),
            Err(InvokeFailure::Failed(why)) => Err(Status::internal(why)),
        }
    }

    async fn get_metadata(
        &self,
        request: Request<GetMetadataRequest>,
    ) -> Result<Response<GetMetadataResponse>, Status> {
        check_token(self.sidecar.api_token.as_deref(), request.metadata())?;
        let sidecar = &self.sidecar;
        Ok(Response::new(GetMetadataResponse {
            id: sidecar.app_id.clone(),
            registered_components: sidecar
                .components
                .iter()
                .map(|c| RegisteredComponents {
                    name: c.name.clone(),
                    r#type: c.component_type.clone(),
                    version: c.version.clone(),
                    capabilities: Vec::new(),
                })
                .collect(),
            extended_metadata: sidecar.extended_metadata().await.into_iter().collect(),
            app_connection_properties: sidecar.app_port.map(|port| AppConnectionProperties {
                port: i32::from(port),
                protocol: sidecar.app_protocol.to_string(),
                channel_address: "127.0.0.1".into(),
                max_concurrency: 0,
            }),
            runtime_version: concat!("mqtt-binding ", env!("CARGO_PKG_VERSION")).into(),
            enabled_features: Vec::new(),
        }))
    }
}

/// Serves the API on `listener` until `stop`.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    sidecar: Arc<Sidecar>,
    stop: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let api = DaprServer::new(Api { sidecar });
    tonic::transport::Server::builder()
        .layer(tower::util::MapResponseLayer::new(say_bindings_only))
        .add_service(api)
        .serve_with_incoming_shutdown(
            // Small frames go out at once, as on the HTTP API.
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            stop.cancelled_owned(),
        )
        .await
}

/// `DAPR_API_TOKEN`, if set, must come in the `dapr-api-token` metadata.
fn check_token(token: Option<&str>, metadata: &tonic::metadata::MetadataMap) -> Result<(), Status> {
    use subtle::ConstantTimeEq as _;
    let Some(token) = token else {
        return Ok(());
    };
    let given = metadata
        .get("dapr-api-token")
        .map(|value| value.as_bytes())
        .unwrap_or_default();
    if bool::from(given.ct_eq(token.as_bytes())) {
        Ok(())
    } else {
        Err(Status::unauthenticated(
            "invalid api token: the dapr-api-token metadata is missing or wrong",
        ))
    }
}

/// tonic answers a method or service it does not know with a bare `Unimplemented`; say why.
/// (The text is printable ASCII without `%`, so it needs no percent-encoding.)
fn say_bindings_only<B>(mut response: http::Response<B>) -> http::Response<B> {
    let headers = response.headers_mut();
    let unimplemented = headers
        .get("grpc-status")
        .is_some_and(|status| status == "12");
    if unimplemented && !headers.contains_key("grpc-message") {
        headers.insert(
            "grpc-message",
            http::HeaderValue::from_static(BINDINGS_ONLY),
        );
    }
    response
}
