//! `sw4rm.router.RouterService` over the message plane.

use std::pin::Pin;
use std::sync::Arc;

use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status};

use super::codec::{self, ERROR_CODE_METADATA};
use super::principal;
use super::proto::router::router_service_server::RouterService;
use super::proto::router::{
    DeliveryAckOutcome, DeliveryAckRequest, DeliveryAckResponse, SendMessageRequest, SendMessageResponse, StreamItem,
    StreamRequest,
};
use crate::jobs::JobManager;
use crate::lease::Scope;
use crate::messages::external::RegistryError;
use crate::messages::{ErrorCode, Producer, Recipient, Release};

#[derive(Debug)]
pub struct Router {
    pub manager: Arc<JobManager>,
}

/// An answer to `SendMessage`, with the SW4RM code (if any) also in metadata.
fn answer(accepted: bool, code: Option<ErrorCode>, reason: String) -> Response<SendMessageResponse> {
    let mut response = Response::new(SendMessageResponse { accepted, reason });
    if let Some(code) = code
        && let Ok(value) = MetadataValue::try_from(code.number().to_string())
    {
        response.metadata_mut().insert(ERROR_CODE_METADATA, value);
    }
    response
}

fn refused((code, reason): codec::Refusal) -> Response<SendMessageResponse> {
    answer(false, Some(code), format!("{code}: {reason}"))
}

pub(super) fn registry_status(e: RegistryError) -> Status {
    match e {
        RegistryError::Invalid(m) => Status::invalid_argument(m),
        RegistryError::Taken(_) => Status::already_exists(e.to_string()),
        RegistryError::NotFound(_) => Status::not_found(e.to_string()),
        RegistryError::Store(e) => codec::unavailable(&e),
    }
}

type Items = Pin<Box<dyn futures::Stream<Item = Result<StreamItem, Status>> + Send>>;

#[tonic::async_trait]
impl RouterService for Router {
    async fn send_message(
        &self,
        request: Request<SendMessageRequest>,
    ) -> Result<Response<SendMessageResponse>, Status> {
        let principal = principal(&self.manager, request.metadata())?;
        let (metadata, _, body) = request.into_parts();
        let envelope = body.msg.ok_or_else(|| Status::invalid_argument("SendMessageRequest.msg is missing"))?;
        let (mut out, claimed) = match codec::outgoing(envelope, &metadata) {
            Ok(parts) => parts,
            Err(refusal) => return Ok(refused(refusal)),
        };
        // The principal's ceiling bounds what it may send to, as on HTTP (ACKs name a message).
        let (scope, target) = match &out.recipient {
            Recipient::Agent(a) => (Scope::AgentSend, a.clone()),
            Recipient::Topic(t) => (Scope::TopicPublish, t.clone()),
        };
        if out.message_type != crate::messages::MessageType::Acknowledgement
            && let Err(reason) = self.manager.policy().ceiling_for(&principal, None).grants.decide(scope, &target)
        {
            return Ok(refused((ErrorCode::PermissionDenied, format!("{scope} denied for '{target}': {reason}"))));
        }
        let producer_id = if claimed.is_empty() { principal.clone() } else { claimed };
        let plane = Arc::clone(self.manager.messages());
        let reply_to = plane.externals_of(&principal).into_iter().find(|id| *id == producer_id);
        // A registered agent that sends gets its messages' outcomes back as ACK envelopes.
        out.delivery.require_ack = reply_to.is_some();
        let producer = Producer { principal, id: producer_id, reply_to };
        match plane.send(&producer, out).await {
            Ok(accepted) => Ok(match accepted.duplicate {
                Some(code) => {
                    let first = accepted.messages.first();
                    let reason = first.map(|m| format!("{code}: {} is {}", m.id, m.stage)).unwrap_or_default();
                    answer(true, Some(code), reason)
                }
                None => answer(true, None, String::new()),
            }),
            Err(e) => Ok(refused(codec::refusal(e)?)),
        }
    }

    type StreamIncomingStream = Items;

    async fn stream_incoming(
        &self,
        request: Request<StreamRequest>,
    ) -> Result<Response<Self::StreamIncomingStream>, Status> {
        let principal = principal(&self.manager, request.metadata())?;
        let agent = request.into_inner().agent_id;
        let stream = self.manager.messages().stream(&principal, &agent).map_err(registry_status)?;
        let items = futures::stream::unfold(stream, |mut stream| async move {
            let item = stream.next().await?;
            let wire = StreamItem { msg: Some(codec::to_wire(&item.message)), seq: item.seq };
            Some((Ok(wire), stream))
        });
        Ok(Response::new(Box::pin(items)))
    }

    async fn ack_delivery(
        &self,
        request: Request<DeliveryAckRequest>,
    ) -> Result<Response<DeliveryAckResponse>, Status> {
        let principal = principal(&self.manager, request.metadata())?;
        let ack = request.into_inner();
        let outcome = match DeliveryAckOutcome::try_from(ack.outcome) {
            Ok(DeliveryAckOutcome::Delivered) => Release::Fulfilled,
            Ok(DeliveryAckOutcome::PermanentFailure) => {
                Release::Failed { note: "permanent failure (AckDelivery)".into() }
            }
            Err(_) => return Err(Status::invalid_argument(format!("unknown DeliveryAckOutcome {}", ack.outcome))),
        };
        let plane = Arc::clone(self.manager.messages());
        let recorded = plane.release(&principal, &ack.agent_id, ack.seq, outcome).await.map_err(registry_status)?;
        Ok(Response::new(DeliveryAckResponse { recorded }))
    }
}
