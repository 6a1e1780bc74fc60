//! The application behind `--app-port` when it speaks gRPC (`--app-protocol grpc`), as
//! daprd talks to it: Dapr's `AppCallback` service. `ListInputBindings`, asked once, says
//! which bindings the app wants events from; `OnBindingEvent` delivers each event, and any
//! status but OK, or no answer within the timeout, fails it. An answer naming output
//! bindings in `to` sends its `data` to each of them, as daprd does.

use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use tokio::sync::OnceCell;
use tonic::transport::Channel;

use super::proto::app_callback_client::AppCallbackClient;
use super::proto::binding_event_response::BindingEventConcurrency;
use super::proto::{BindingEventRequest, BindingEventResponse};
use super::state::{InvokeFailure, Sidecar};
use crate::{Answer, Delivery, Event, EventHandler, InvokeRequest};

/// How long the app may take to answer one event (as over HTTP).
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `ListInputBindings` may take; daprd's timeout.
const LIST_TIMEOUT: Duration = Duration::from_secs(3);

/// The gRPC app on `127.0.0.1:port`.
#[derive(Debug, Clone)]
pub(crate) struct GrpcApp {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    port: u16,
    client: AppCallbackClient<Channel>,
    /// `APP_API_TOKEN`, sent in the `dapr-api-token` metadata of every call.
    token: Option<tonic::metadata::AsciiMetadataValue>,
    /// What `ListInputBindings` answered, asked once.
    wanted: OnceCell<Vec<String>>,
    /// The sidecar, once it exists, for the output bindings an answer names in `to`.
    sidecar: OnceLock<Weak<Sidecar>>,
}

impl GrpcApp {
    pub(crate) fn new(port: u16, token: Option<&str>) -> anyhow::Result<Self> {
        let token = token
            .map(|token| {
                let mut value: tonic::metadata::AsciiMetadataValue =
                    token.parse().map_err(|_| {
                        anyhow::anyhow!("APP_API_TOKEN: expected a token usable as gRPC metadata")
                    })?;
                value.set_sensitive(true);
                anyhow::Ok(value)
            })
            .transpose()?;
        let channel = Channel::from_shared(format!("http://127.0.0.1:{port}"))?
            .connect_timeout(Duration::from_secs(5))
            .connect_lazy();
        Ok(Self {
            inner: Arc::new(Inner {
                port,
                client: AppCallbackClient::new(channel),
                token,
                wanted: OnceCell::new(),
                sidecar: OnceLock::new(),
            }),
        })
    }

    pub(crate) fn port(&self) -> u16 {
        self.inner.port
    }

    /// Gives the app the sidecar, whose output bindings an answer's `to` names.
    pub(crate) fn attach(&self, sidecar: &Arc<Sidecar>) {
        let _ = self.inner.sidecar.set(Arc::downgrade(sidecar));
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(token) = &self.inner.token {
            request
                .metadata_mut()
                .insert("dapr-api-token", token.clone());
        }
        request
    }

    /// Whether the app wants the events of binding `name`: it is in the app's answer to
    /// `ListInputBindings` (asked once; an error or no answer within 3 s counts as an empty
    /// list, as with daprd).
    pub(crate) async fn wants(&self, name: &str) -> bool {
        let wanted = self
            .inner
            .wanted
            .get_or_init(|| async {
                let mut client = self.inner.client.clone();
                let call = client.list_input_bindings(self.request(()));
                match tokio::time::timeout(LIST_TIMEOUT, call).await {
                    Ok(Ok(answer)) => answer.into_inner().bindings,
                    Ok(Err(status)) => {
                        tracing::warn!("the app's ListInputBindings failed ({status}); no input bindings");
                        Vec::new()
                    }
                    Err(_) => {
                        tracing::warn!("the app's ListInputBindings did not answer within {LIST_TIMEOUT:?}; no input bindings");
                        Vec::new()
                    }
                }
            })
            .await;
        wanted.iter().any(|wanted| wanted == name)
    }

    /// The event handler of binding `name`.
    pub(crate) fn route(&self, name: &str) -> Route {
        Route {
            app: self.clone(),
            name: name.to_string(),
        }
    }

    /// Delivers one event; the answer's `data` is the app's answer (see `handler::Answer`),
    /// after it went on to the bindings in `to`.
    async fn deliver(&self, name: &str, event: Event) -> Result<Answer, String> {
        let mut client = self.inner.client.clone();
        let trace: Vec<(
            &'static str,
            tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
        )> = super::trace::HEADERS
            .into_iter()
            .filter_map(|header| {
                let value = event.metadata.get(header)?;
                Some((header, value.parse().ok()?))
            })
            .collect();
        let mut request = self.request(BindingEventRequest {
            name: name.to_string(),
            data: event.data,
            metadata: event.metadata.owned().collect(),
        });
        for (header, value) in trace {
            request.metadata_mut().insert(header, value);
        }
        let answer =
            match tokio::time::timeout(DELIVERY_TIMEOUT, client.on_binding_event(request)).await {
                Ok(Ok(answer)) => answer.into_inner(),
                Ok(Err(status)) => {
                    return Err(format!(
                        "the app answered OnBindingEvent with {:?}: {}",
                        status.code(),
                        status.message()
                    ));
                }
                Err(_) => {
                    return Err(format!(
                        "the app did not answer OnBindingEvent within {DELIVERY_TIMEOUT:?}"
                    ));
                }
            };
        let data = answer.data.clone();
        self.send_on(answer).await?;
        Ok((!data.is_empty()).then_some(data))
    }

    /// daprd's handling of `to`: the answer's data goes to each output binding named, one
    /// after the other (the first failure fails the event, so that its retry policy
    /// applies), or all at once with failures logged (`PARALLEL`).
    async fn send_on(&self, answer: BindingEventResponse) -> Result<(), String> {
        if answer.to.is_empty() {
            return Ok(());
        }
        let Some(sidecar) = self.inner.sidecar.get().and_then(Weak::upgrade) else {
            return Err("the sidecar is shutting down".into());
        };
        let request = InvokeRequest {
            operation: "create".into(),
            data: answer.data,
            metadata: Vec::new(),
        };
        let parallel = answer.concurrency == BindingEventConcurrency::Parallel as i32;
        for to in answer.to {
            let (sidecar, request) = (sidecar.clone(), request.clone());
            let send = async move {
                sidecar
                    .invoke(&to, request)
                    .await
                    .map(drop)
                    .map_err(|failure| match failure {
                        InvokeFailure::NotFound(why) | InvokeFailure::Failed(why) => {
                            format!("sending the app's answer on to {to:?}: {why}")
                        }
                    })
            };
            if parallel {
                tokio::spawn(async move {
                    if let Err(why) = send.await {
                        tracing::error!("{why}");
                    }
                });
            } else {
                send.await?;
            }
        }
        Ok(())
    }
}

/// One binding's events, to the gRPC app.
#[derive(Debug)]
pub(crate) struct Route {
    app: GrpcApp,
    name: String,
}

impl EventHandler for Route {
    fn deliver(&self, event: Event) -> Delivery<'_> {
        Box::pin(self.app.deliver(&self.name, event))
    }
}
