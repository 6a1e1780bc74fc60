//! Dapr's `InputBinding` and `OutputBinding` services for pluggable components: each call
//! names its instance in the `x-component-instance` header, and is handed to [`Instances`].

use std::sync::Arc;

use tonic::{Request, Response, Status, Streaming};

use super::instances::{Instances, Side};
use super::proto::{
    self, InputBindingInitRequest, InputBindingInitResponse, InvokeRequest, InvokeResponse,
    ListOperationsRequest, ListOperationsResponse, OutputBindingInitRequest,
    OutputBindingInitResponse, PingRequest, PingResponse, ReadRequest,
};
use super::reader::Events;
use super::socket::ConnectionId;

/// The header daprd names the component instance in.
const INSTANCE_HEADER: &str = "x-component-instance";

/// Both services, over the same instances.
#[derive(Debug, Clone)]
pub(crate) struct Services {
    pub instances: Arc<Instances>,
}

/// The instance a call is for, and the connection it came on.
fn addressed<T>(request: &Request<T>) -> Result<(String, Option<ConnectionId>), Status> {
    let name = request
        .metadata()
        .get(INSTANCE_HEADER)
        .ok_or_else(|| {
            Status::invalid_argument(format!(
                "the {INSTANCE_HEADER} header is missing: it names the component instance (daprd sends the component's name)"
            ))
        })?
        .to_str()
        .map_err(|_| Status::invalid_argument(format!("the {INSTANCE_HEADER} header is not text")))?
        .to_string();
    if name.is_empty() {
        return Err(Status::invalid_argument(format!(
            "the {INSTANCE_HEADER} header is empty"
        )));
    }
    Ok((name, request.extensions().get::<ConnectionId>().copied()))
}

#[tonic::async_trait]
impl proto::input_binding_server::InputBinding for Services {
    async fn init(
        &self,
        request: Request<InputBindingInitRequest>,
    ) -> Result<Response<InputBindingInitResponse>, Status> {
        let (name, connection) = addressed(&request)?;
        let metadata = request.into_inner().metadata.unwrap_or_default().properties;
        self.instances
            .init(&name, Side::Input, metadata, connection)
            .await?;
        Ok(Response::new(InputBindingInitResponse {}))
    }

    type ReadStream = Events;

    async fn read(
        &self,
        request: Request<Streaming<ReadRequest>>,
    ) -> Result<Response<Events>, Status> {
        let (name, connection) = addressed(&request)?;
        let events = self
            .instances
            .read(&name, request.into_inner(), connection)
            .await?;
        Ok(Response::new(events))
    }

    async fn ping(&self, _: Request<PingRequest>) -> Result<Response<PingResponse>, Status> {
        Ok(Response::new(PingResponse {}))
    }
}

#[tonic::async_trait]
impl proto::output_binding_server::OutputBinding for Services {
    async fn init(
        &self,
        request: Request<OutputBindingInitRequest>,
    ) -> Result<Response<OutputBindingInitResponse>, Status> {
        let (name, connection) = addressed(&request)?;
        let metadata = request.into_inner().metadata.unwrap_or_default().properties;
        self.instances
            .init(&name, Side::Output, metadata, connection)
            .await?;
        Ok(Response::new(OutputBindingInitResponse {}))
    }

    async fn invoke(
        &self,
        request: Request<InvokeRequest>,
    ) -> Result<Response<InvokeResponse>, Status> {
        let (name, connection) = addressed(&request)?;
        let request = request.into_inner();
        let answer = self
            .instances
            .invoke(
                &name,
                crate::InvokeRequest {
                    operation: request.operation,
                    data: request.data,
                    metadata: request.metadata.into_iter().collect(),
                },
                connection,
            )
            .await?;
        Ok(Response::new(InvokeResponse {
            data: answer.data.unwrap_or_default(),
            metadata: answer.metadata.into_iter().collect(),
            content_type: String::new(),
        }))
    }

    async fn list_operations(
        &self,
        request: Request<ListOperationsRequest>,
    ) -> Result<Response<ListOperationsResponse>, Status> {
        let (name, connection) = addressed(&request)?;
        let operations = self.instances.operations(&name, connection)?;
        Ok(Response::new(ListOperationsResponse { operations }))
    }

    async fn ping(&self, _: Request<PingRequest>) -> Result<Response<PingResponse>, Status> {
        Ok(Response::new(PingResponse {}))
    }
}
