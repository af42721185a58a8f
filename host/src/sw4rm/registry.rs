//! `sw4rm.registry.RegistryService` over the message plane's registry of external agents.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::principal;
use super::proto::registry::registry_service_server::RegistryService;
use super::proto::registry::{
    DeregisterAgentRequest, DeregisterAgentResponse, HeartbeatRequest, HeartbeatResponse, RegisterAgentRequest,
    RegisterAgentResponse,
};
use super::router::registry_status;
use crate::jobs::JobManager;
use crate::messages::external::RegistryError;
use crate::messages::{CommClass, ExternalAgent};

#[derive(Debug)]
pub struct Registry {
    pub manager: Arc<JobManager>,
}

#[tonic::async_trait]
impl RegistryService for Registry {
    /// Registers the agent for the caller's principal. A refusal (an invalid or taken id) is
    /// `accepted = false` with the reason, as SW4RM's registry answers.
    async fn register_agent(
        &self,
        request: Request<RegisterAgentRequest>,
    ) -> Result<Response<RegisterAgentResponse>, Status> {
        let principal = principal(&self.manager, request.metadata())?;
        let descriptor = request
            .into_inner()
            .agent
            .ok_or_else(|| Status::invalid_argument("RegisterAgentRequest.agent is missing"))?;
        let agent = ExternalAgent {
            agent_id: descriptor.agent_id,
            name: descriptor.name,
            description: descriptor.description,
            capabilities: descriptor.capabilities,
            topics: Vec::new(),
            communication_class: CommClass::from_number(i64::from(descriptor.communication_class)).unwrap_or_default(),
        };
        match self.manager.messages().register(&principal, agent).await {
            Ok(()) => Ok(Response::new(RegisterAgentResponse { accepted: true, reason: String::new() })),
            Err(e @ (RegistryError::Invalid(_) | RegistryError::Taken(_))) => {
                Ok(Response::new(RegisterAgentResponse { accepted: false, reason: e.to_string() }))
            }
            Err(e) => Err(registry_status(e)),
        }
    }

    async fn heartbeat(&self, request: Request<HeartbeatRequest>) -> Result<Response<HeartbeatResponse>, Status> {
        let principal = principal(&self.manager, request.metadata())?;
        let agent = request.into_inner().agent_id;
        let ok = self.manager.messages().heartbeat(&principal, &agent).is_ok();
        Ok(Response::new(HeartbeatResponse { ok }))
    }

    async fn deregister_agent(
        &self,
        request: Request<DeregisterAgentRequest>,
    ) -> Result<Response<DeregisterAgentResponse>, Status> {
        let principal = principal(&self.manager, request.metadata())?;
        let agent = request.into_inner().agent_id;
        let ok = match self.manager.messages().deregister(&principal, &agent).await {
            Ok(()) => true,
            Err(RegistryError::NotFound(_)) => false,
            Err(e) => return Err(registry_status(e)),
        };
        Ok(Response::new(DeregisterAgentResponse { ok }))
    }
}
