//! Federation: the swarms this host is in, and everything that changes them. The ASP endpoint
//! (`asp::http`) and the operator API (`api::swarm`) are codecs over [`Federation`]; the
//! outbox (`asp::outbox`) delivers what it queues.
//!
//! The trust model (also `docs/federation.md`):
//! - **Every inbound message is verified before anything happens**: its swarm must be one this
//!   host is in, its sender a member, its signature valid for the key this host holds for that
//!   member (learned at join from the master, or from a `member_joined` the master signed),
//!   under the scheme the member advertised; its timestamp within the skew window, its
//!   `expires_at` not passed, its id not seen before, its recipient this host or `broadcast`.
//! - **System messages act only when sent by the one allowed to**: membership changes, master
//!   transfer and mutes by the master; `member_left` by the leaver itself. A member forging a
//!   master-only action is refused and changes nothing.
//! - **Invites** are verified against the master's key by the joiner *before* it trusts the
//!   endpoint inside them (the key comes from that endpoint's `/info`, and its agent id must be
//!   the invite's master), and by the master at admission, where `max_uses` is counted durably.
//! - Between corral hosts, messages are signed with `corral-lp/1` (no ambiguity, sender
//!   covered); ASP 0.1.0 peers get and give 0.1.0 signatures. A member recorded with
//!   `corral-lp/1` is never downgraded.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, Weak};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

use super::config::SwarmConfig;
use super::identity::{self, Identity};
use super::remote::RemoteOutcome;
use super::signing::{self, Scheme};
use super::{AspError, Message, PROTOCOL_VERSION, Sender, invite, verify};
use crate::store::{Admission, InboundRecord, MemberRecord, MembershipChange, NewOutbox, Store, SwarmRecord, now_ms};

/// What `GET /swarm/info` answers (the reference's fields, plus the schemes this host signs with).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Info {
    pub agent_id: String,
    pub endpoint: String,
    pub public_key: String,
    pub protocol_version: String,
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// corral's extension: signature schemes in order of preference. A peer that lists
    /// `corral-lp/1` gets and must give only that.
    #[serde(default)]
    pub signature_schemes: Vec<String>,
}

/// The joiner's part of `POST /swarm/join`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinSender {
    pub agent_id: String,
    pub endpoint: String,
    pub public_key: String,
    /// corral's extension: the scheme the joiner signs with (absent from ASP 0.1.0 peers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature_scheme: Option<String>,
}

/// `POST /swarm/join`'s body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinRequest {
    #[serde(rename = "type")]
    pub kind: String,
    pub action: String,
    pub invite_token: String,
    pub sender: JoinSender,
}

/// A member as the wire and the API show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MemberView {
    pub agent_id: String,
    pub endpoint: String,
    pub public_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature_scheme: Option<String>,
    #[serde(default)]
    pub muted: bool,
}

/// `POST /swarm/join`'s answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinAccepted {
    pub status: String,
    pub swarm_id: String,
    #[serde(default)]
    pub swarm_name: Option<String>,
    pub members: Vec<MemberView>,
    /// corral's extension: who the master is (ASP peers: the invite's `master`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master: Option<String>,
}

/// A swarm as the operator API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SwarmView {
    pub swarm_id: String,
    pub name: String,
    pub master: String,
    pub muted: bool,
    pub members: Vec<MemberView>,
}

/// An invite as issued.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InviteView {
    pub token: String,
    /// `swarm://<swarm>@<host>?token=<token>`, as the reference prints it.
    pub url: String,
    pub expires_at: Option<String>,
    pub max_uses: Option<u64>,
}

/// The federation of one host (see the module docs).
pub struct Federation {
    identity: Arc<Identity>,
    store: Store,
    config: SwarmConfig,
    endpoint: String,
    client: reqwest::Client,
    limiter: governor::DefaultKeyedRateLimiter<String>,
    /// Wakes the outbox when something was queued.
    pub(super) wake: tokio::sync::Notify,
    /// Remote job calls waiting for their answer: request message id → (the host that must
    /// answer, where to send the outcome).
    waiters: std::sync::Mutex<HashMap<String, (String, oneshot::Sender<RemoteOutcome>)>>,
    /// The engine remote job requests run on.
    manager: Weak<crate::jobs::JobManager>,
    me: Weak<Federation>,
}

impl std::fmt::Debug for Federation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Federation")
            .field("agent_id", &self.identity.agent_id)
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

/// Reads at most `max` bytes of a peer's answer (a peer cannot make this host buffer more).
pub(super) async fn read_capped(mut response: reqwest::Response, max: usize) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
        if body.len() + chunk.len() > max {
            return Err(format!("the answer is over {max} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Largest answer read from a peer's `/info` or `/join`.
const MAX_PEER_ANSWER: usize = 1 << 20;

/// Whether `key` may be known by `agent_id`: a `corral-…` id is derived from its key, so no
/// other key may claim it (other ids are whatever their peers call themselves).
pub fn id_fits_key(agent_id: &str, key: &ed25519_dalek::VerifyingKey) -> bool {
    !agent_id.starts_with("corral-") || identity::agent_id(key) == agent_id
}

/// An agent id a member may have: 1 to 512 characters, no control characters, no `/`, not
/// `broadcast`.
fn valid_agent_id(agent_id: &str) -> bool {
    !agent_id.is_empty()
        && agent_id.len() <= 512
        && agent_id != "broadcast"
        && !agent_id.contains('/')
        && !agent_id.chars().any(char::is_control)
}

/// The rate-limit bucket shared by every request whose sender is not (yet) known to be a
/// member: malformed bodies, unknown swarms, non-members, joins.
pub const STRANGERS: &str = "<strangers>";

/// The timestamp form ASP messages carry.
pub fn timestamp(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default().format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

fn member_view(m: &MemberRecord) -> MemberView {
    MemberView {
        agent_id: m.agent_id.clone(),
        endpoint: m.endpoint.clone(),
        public_key: m.public_key.clone(),
        signature_scheme: Some(m.scheme.clone()),
        muted: m.muted,
    }
}

fn scheme_named(name: Option<&str>) -> Scheme {
    if name == Some(Scheme::CorralLp1.name()) { Scheme::CorralLp1 } else { Scheme::Asp010 }
}

/// A system message's content: `{"action": …, …}`.
#[derive(Debug, Deserialize)]
struct SystemContent {
    action: String,
    #[serde(default)]
    agent_id: Option<String>,
    #[serde(default)]
    endpoint: Option<String>,
    #[serde(default)]
    public_key: Option<String>,
    #[serde(default)]
    signature_scheme: Option<String>,
}

impl Federation {
    pub fn new(
        identity: Identity,
        store: Store,
        config: SwarmConfig,
        endpoint: String,
        client: reqwest::Client,
        manager: Weak<crate::jobs::JobManager>,
    ) -> Arc<Federation> {
        // `per_s = 0` turns the limit off.
        let quota = config.rate_limit.quota().unwrap_or_else(|| governor::Quota::per_second(std::num::NonZeroU32::MAX));
        Arc::new_cyclic(|me| Federation {
            identity: Arc::new(identity),
            store,
            config,
            endpoint,
            client,
            limiter: governor::RateLimiter::keyed(quota),
            wake: tokio::sync::Notify::new(),
            waiters: std::sync::Mutex::new(HashMap::new()),
            manager,
            me: me.clone(),
        })
    }

    pub(super) fn me(&self) -> Option<Arc<Federation>> {
        self.me.upgrade()
    }

    pub(super) fn manager(&self) -> Option<Arc<crate::jobs::JobManager>> {
        self.manager.upgrade()
    }

    /// Queues a message to `host` whose answer (a `job.result` naming its id, from `host`)
    /// the returned receiver gets.
    pub(super) async fn send_awaiting(
        &self,
        swarm_id: &str,
        recipient: &str,
        content: String,
        host: &str,
    ) -> Result<(String, oneshot::Receiver<RemoteOutcome>), AspError> {
        let (_, members) = self.swarm_of(swarm_id).await?;
        let member = members
            .iter()
            .find(|m| m.agent_id == host)
            .ok_or_else(|| AspError::NotMember { swarm: swarm_id.to_owned(), agent: host.to_owned() })?;
        let message = self.message(swarm_id, recipient, "message", content);
        let row = self.outbox_for(&message, member)?;
        let (tx, rx) = oneshot::channel();
        self.waiters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(message.message_id.clone(), (host.to_owned(), tx));
        if let Err(e) = self.store.outbox_enqueue(vec![row]).await {
            self.forget_waiter(&message.message_id);
            return Err(e.into());
        }
        self.wake.notify_one();
        Ok((message.message_id, rx))
    }

    pub(super) fn forget_waiter(&self, request: &str) {
        self.waiters.lock().unwrap_or_else(PoisonError::into_inner).remove(request);
    }

    /// Hands `outcome` to the call waiting for `request`, if `from` is the host it asked.
    pub(super) fn answer_waiter(&self, request: &str, from: &str, outcome: RemoteOutcome) {
        let mut waiters = self.waiters.lock().unwrap_or_else(PoisonError::into_inner);
        if waiters.get(request).is_some_and(|(host, _)| host == from)
            && let Some((_, tx)) = waiters.remove(request)
        {
            let _ = tx.send(outcome);
        }
    }

    pub fn agent_id(&self) -> &str {
        &self.identity.agent_id
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn config(&self) -> &SwarmConfig {
        &self.config
    }

    pub(super) fn store(&self) -> &Store {
        &self.store
    }

    pub(super) fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// What `GET /swarm/info` answers.
    pub fn info(&self) -> Info {
        Info {
            agent_id: self.identity.agent_id.clone(),
            endpoint: self.endpoint.clone(),
            public_key: signing::public_key_b64(&self.identity.public_key()),
            protocol_version: PROTOCOL_VERSION.to_owned(),
            capabilities: vec!["message".into(), "system".into(), "notification".into()],
            signature_schemes: vec![Scheme::CorralLp1.name().into(), Scheme::Asp010.name().into()],
        }
    }

    /// Takes a token for `key` (a sender id), or says how many seconds to wait.
    pub fn check_rate(&self, key: &str) -> Result<(), AspError> {
        use governor::clock::{Clock as _, DefaultClock};
        self.limiter.check_key(&key.to_owned()).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            AspError::RateLimited(wait.as_secs().max(1))
        })
    }

    /// Forgets rate-limit buckets that are full again (keeps the keyed map bounded).
    pub(super) fn tidy_rate_limits(&self) {
        self.limiter.retain_recent();
    }

    fn own_member(&self, swarm_id: &str) -> MemberRecord {
        MemberRecord {
            swarm_id: swarm_id.to_owned(),
            agent_id: self.identity.agent_id.clone(),
            endpoint: self.endpoint.clone(),
            public_key: signing::public_key_b64(&self.identity.public_key()),
            scheme: Scheme::CorralLp1.name().to_owned(),
            muted: false,
            joined_at: now_ms(),
        }
    }

    async fn swarm_of(&self, swarm_id: &str) -> Result<(SwarmRecord, Vec<MemberRecord>), AspError> {
        self.store.swarm(swarm_id).await?.ok_or_else(|| AspError::UnknownSwarm(swarm_id.to_owned()))
    }

    // ---- operations (the operator API) ----

    /// Creates a swarm with this host as its master and only member.
    pub async fn create(&self, name: &str) -> Result<SwarmView, AspError> {
        if name.trim().is_empty() || name.len() > 256 {
            return Err(AspError::Malformed { what: "name", detail: "must be 1 to 256 characters".into() });
        }
        let swarm_id = uuid::Uuid::new_v4().to_string();
        let swarm = SwarmRecord {
            swarm_id: swarm_id.clone(),
            name: name.to_owned(),
            master: self.identity.agent_id.clone(),
            muted: false,
            joined_at: now_ms(),
        };
        self.store.swarm_save(swarm, vec![self.own_member(&swarm_id)], Vec::new()).await?;
        self.view(&swarm_id).await
    }

    /// A swarm with its members.
    pub async fn view(&self, swarm_id: &str) -> Result<SwarmView, AspError> {
        let (swarm, members) = self.swarm_of(swarm_id).await?;
        Ok(SwarmView {
            swarm_id: swarm.swarm_id,
            name: swarm.name,
            master: swarm.master,
            muted: swarm.muted,
            members: members.iter().map(member_view).collect(),
        })
    }

    /// Every swarm this host is in.
    pub async fn swarms(&self) -> Result<Vec<SwarmView>, AspError> {
        let mut out = Vec::new();
        for swarm in self.store.swarms().await? {
            out.push(self.view(&swarm.swarm_id).await?);
        }
        Ok(out)
    }

    /// Issues an invite to a swarm this host is master of.
    pub async fn invite(
        &self,
        swarm_id: &str,
        ttl_ms: Option<u64>,
        max_uses: Option<u64>,
    ) -> Result<InviteView, AspError> {
        let (swarm, _) = self.swarm_of(swarm_id).await?;
        if swarm.master != self.identity.agent_id {
            return Err(AspError::NotAllowed(format!("only the master ({}) issues invites", swarm.master)));
        }
        let now = now_ms();
        let ttl = i64::try_from(ttl_ms.unwrap_or(self.config.invite_ttl_ms)).unwrap_or(i64::MAX);
        let expires = now.saturating_add(ttl);
        let claims = invite::InviteClaims {
            swarm_id: swarm_id.to_owned(),
            master: self.identity.agent_id.clone(),
            endpoint: self.endpoint.clone(),
            iat: now / 1000,
            expires_at: Some(timestamp(expires)),
            max_uses,
        };
        let token = self.identity.issue_invite(&claims)?;
        self.store.swarm_record_invite(token_hash(&token), swarm_id.to_owned(), max_uses, Some(expires)).await?;
        let host = url::Url::parse(&self.endpoint)
            .ok()
            .and_then(|u| u.host_str().map(|h| u.port().map_or_else(|| h.to_owned(), |p| format!("{h}:{p}"))))
            .unwrap_or_default();
        Ok(InviteView {
            url: format!("swarm://{swarm_id}@{host}?token={token}"),
            token,
            expires_at: claims.expires_at,
            max_uses,
        })
    }

    /// Joins the swarm an invite (token or `swarm://` URL) names. The token is verified against
    /// the key of the master it names, fetched from the endpoint it names, before anything is
    /// sent there: a token whose endpoint was changed, or an endpoint that is not that master,
    /// is refused.
    pub async fn join(&self, invite_text: &str) -> Result<SwarmView, AspError> {
        let token = invite_text.rsplit_once("token=").map_or(invite_text, |(_, t)| t).trim();
        let claims = invite::unverified_claims(token)?;
        if !claims.endpoint.starts_with("https://") {
            return Err(AspError::InvalidToken("the invite's endpoint is not HTTPS".into()));
        }
        let base = claims.endpoint.trim_end_matches('/');
        let peer = |detail: String| AspError::Peer { endpoint: claims.endpoint.clone(), detail };
        if self.store.swarm(&claims.swarm_id).await?.is_some() {
            return Err(AspError::AlreadyMember(format!("this host (already in swarm {})", claims.swarm_id)));
        }
        let answer = self
            .client
            .get(format!("{base}/info"))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| peer(format!("GET /info: {e}")))?;
        let info: Info = serde_json::from_slice(&read_capped(answer, MAX_PEER_ANSWER).await.map_err(&peer)?)
            .map_err(|e| peer(format!("GET /info: {e}")))?;
        if info.agent_id != claims.master {
            return Err(AspError::InvalidToken(format!(
                "the invite names master '{}', but its endpoint is '{}'",
                claims.master, info.agent_id
            )));
        }
        let master_key = signing::public_key(&info.public_key)?;
        let claims = invite::verify(token, &master_key, now_ms())?;
        let request = JoinRequest {
            kind: "system".into(),
            action: "join_request".into(),
            invite_token: token.to_owned(),
            sender: JoinSender {
                agent_id: self.identity.agent_id.clone(),
                endpoint: self.endpoint.clone(),
                public_key: signing::public_key_b64(&self.identity.public_key()),
                signature_scheme: Some(Scheme::CorralLp1.name().into()),
            },
        };
        let response =
            self.client.post(format!("{base}/join")).json(&request).send().await.map_err(|e| peer(e.to_string()))?;
        let status = response.status();
        let body = String::from_utf8_lossy(&read_capped(response, MAX_PEER_ANSWER).await.map_err(&peer)?).into_owned();
        if status.as_u16() != 200 {
            return Err(peer(format!("join answered {status}: {}", body.chars().take(300).collect::<String>())));
        }
        let accepted: JoinAccepted = serde_json::from_str(&body).map_err(|e| peer(format!("join answer: {e}")))?;
        if accepted.status != "accepted" || accepted.swarm_id != claims.swarm_id {
            return Err(peer(format!("join answered status '{}' for swarm '{}'", accepted.status, accepted.swarm_id)));
        }
        let master_scheme = if info.signature_schemes.iter().any(|s| s == Scheme::CorralLp1.name()) {
            Scheme::CorralLp1
        } else {
            Scheme::Asp010
        };
        let mut members = Vec::new();
        let joined_at = now_ms();
        for m in &accepted.members {
            if m.agent_id == claims.master && m.public_key != info.public_key {
                return Err(peer("the join answer gives the master a different key than its /info".into()));
            }
            if m.agent_id == self.identity.agent_id {
                continue;
            }
            let key = signing::public_key(&m.public_key)?;
            if !valid_agent_id(&m.agent_id) || !id_fits_key(&m.agent_id, &key) || !m.endpoint.starts_with("https://") {
                return Err(peer(format!("the join answer lists an invalid member '{}'", m.agent_id)));
            }
            let scheme =
                if m.agent_id == claims.master { master_scheme } else { scheme_named(m.signature_scheme.as_deref()) };
            members.push(MemberRecord {
                swarm_id: claims.swarm_id.clone(),
                agent_id: m.agent_id.clone(),
                endpoint: m.endpoint.clone(),
                public_key: m.public_key.clone(),
                scheme: scheme.name().to_owned(),
                muted: false,
                joined_at,
            });
        }
        if !members.iter().any(|m| m.agent_id == claims.master) {
            return Err(peer("the join answer does not list the master".into()));
        }
        members.push(self.own_member(&claims.swarm_id));
        let swarm = SwarmRecord {
            swarm_id: claims.swarm_id.clone(),
            name: accepted.swarm_name.unwrap_or_default(),
            master: claims.master.clone(),
            muted: false,
            joined_at,
        };
        self.store.swarm_save(swarm, members, Vec::new()).await?;
        self.view(&claims.swarm_id).await
    }

    /// Admits a joiner (this host is the master): the invite must verify against this host's
    /// key and be unexpired, its uses below `max_uses`; then the member is added and every other
    /// member told, signed by this host, in one transaction.
    pub async fn admit(&self, request: JoinRequest) -> Result<JoinAccepted, AspError> {
        if request.kind != "system" || request.action != "join_request" {
            return Err(AspError::Malformed {
                what: "join request",
                detail: "type must be system, action join_request".into(),
            });
        }
        let claims =
            invite::unverified_claims(&request.invite_token).map_err(|e| AspError::InvalidToken(e.to_string()))?;
        if claims.master != self.identity.agent_id {
            return Err(AspError::InvalidToken(format!(
                "the invite was not issued by this host but by '{}'",
                claims.master
            )));
        }
        let claims = invite::verify(&request.invite_token, &self.identity.public_key(), now_ms())?;
        let sender = &request.sender;
        if !sender.endpoint.starts_with("https://") {
            return Err(AspError::Malformed { what: "sender.endpoint", detail: "must use HTTPS".into() });
        }
        let key = signing::public_key(&sender.public_key)?;
        if !valid_agent_id(&sender.agent_id) {
            return Err(AspError::Malformed {
                what: "sender.agent_id",
                detail: "1 to 512 characters, no '/', no control characters, not 'broadcast'".into(),
            });
        }
        if sender.agent_id == self.identity.agent_id {
            return Err(AspError::AlreadyMember(sender.agent_id.clone()));
        }
        // corral ids are derived from the key: a joiner may not claim one that is not its own.
        if !id_fits_key(&sender.agent_id, &key) {
            return Err(AspError::NotAllowed(format!("'{}' is not the agent id of the key given", sender.agent_id)));
        }
        let scheme = scheme_named(sender.signature_scheme.as_deref());
        let member = MemberRecord {
            swarm_id: claims.swarm_id.clone(),
            agent_id: sender.agent_id.clone(),
            endpoint: sender.endpoint.clone(),
            public_key: sender.public_key.clone(),
            scheme: scheme.name().to_owned(),
            muted: false,
            joined_at: now_ms(),
        };
        let content = serde_json::json!({
            "type": "system",
            "action": "member_joined",
            "swarm_id": claims.swarm_id,
            "agent_id": member.agent_id,
            "endpoint": member.endpoint,
            "public_key": member.public_key,
            "signature_scheme": member.scheme,
            "joined_at": timestamp(member.joined_at),
        })
        .to_string();
        let announcement = self.message(&claims.swarm_id, "broadcast", "system", content);
        let signer = self.clone_signer();
        let own = self.identity.agent_id.clone();
        let own_id = own.clone();
        let admission = self
            .store
            .swarm_admit(own.clone(), token_hash(&request.invite_token), member, move |before| {
                before
                    .iter()
                    .filter(|m| m.agent_id != own_id)
                    .filter_map(|m| {
                        // Signing fails only on a malformed timestamp, and this one is ours.
                        signer
                            .outbox_for(&announcement, m)
                            .inspect_err(|e| tracing::error!(error = %e, "cannot sign member_joined"))
                            .ok()
                    })
                    .collect()
            })
            .await?;
        match admission {
            Admission::Admitted(members) => {
                self.wake.notify_one();
                let (swarm, _) = self.swarm_of(&claims.swarm_id).await?;
                Ok(JoinAccepted {
                    status: "accepted".into(),
                    swarm_id: claims.swarm_id,
                    swarm_name: Some(swarm.name),
                    members: members.iter().map(member_view).collect(),
                    master: Some(swarm.master),
                })
            }
            Admission::UnknownSwarm => Err(AspError::UnknownSwarm(claims.swarm_id)),
            Admission::NotMaster(master) => {
                Err(AspError::InvalidToken(format!("this host is no longer the swarm's master ({master} is)")))
            }
            Admission::UnknownInvite => {
                Err(AspError::InvalidToken("this host has no record of issuing the invite".into()))
            }
            Admission::Exhausted(uses) => Err(AspError::InviteExhausted(uses)),
            Admission::AlreadyMember => Err(AspError::AlreadyMember(request.sender.agent_id)),
        }
    }

    /// Sends a message to a member (`recipient` = its agent id) or to every other member
    /// (`broadcast`); queued durably and delivered by the outbox. Returns the message id.
    pub async fn send(&self, swarm_id: &str, recipient: &str, kind: &str, content: String) -> Result<String, AspError> {
        if kind == "system" || !verify::TYPES.contains(&kind) {
            return Err(AspError::NotAllowed(
                "type must be message or notification (system messages come from swarm operations)".into(),
            ));
        }
        let (_, members) = self.swarm_of(swarm_id).await?;
        let message = self.message(swarm_id, recipient, kind, content);
        let host = recipient.split_once('/').map_or(recipient, |(host, _)| host);
        let targets: Vec<&MemberRecord> = if recipient == "broadcast" {
            members.iter().filter(|m| m.agent_id != self.identity.agent_id).collect()
        } else {
            let target = members
                .iter()
                .find(|m| m.agent_id == host && m.agent_id != self.identity.agent_id)
                .ok_or_else(|| AspError::NotMember { swarm: swarm_id.to_owned(), agent: host.to_owned() })?;
            vec![target]
        };
        let rows = targets.iter().map(|m| self.outbox_for(&message, m)).collect::<Result<Vec<_>, _>>()?;
        self.store.outbox_enqueue(rows).await?;
        self.wake.notify_one();
        Ok(message.message_id)
    }

    /// Leaves a swarm: tells the others (`member_left`, signed by this host) and forgets it.
    /// The master must hand its role over first while others remain.
    pub async fn leave(&self, swarm_id: &str) -> Result<(), AspError> {
        let (swarm, members) = self.swarm_of(swarm_id).await?;
        let others: Vec<&MemberRecord> = members.iter().filter(|m| m.agent_id != self.identity.agent_id).collect();
        if swarm.master == self.identity.agent_id && !others.is_empty() {
            return Err(AspError::NotAllowed(
                "the master must transfer its role before leaving (corral swarm transfer)".into(),
            ));
        }
        let content = serde_json::json!({"type": "system", "action": "member_left", "swarm_id": swarm_id, "agent_id": self.identity.agent_id}).to_string();
        let rows = self.announce(swarm_id, content, &others)?;
        self.store.swarm_change(MembershipChange::Forget { swarm_id: swarm_id.to_owned() }, rows).await?;
        self.wake.notify_one();
        Ok(())
    }

    /// Removes a member (master only) and tells everyone, the kicked member included.
    pub async fn kick(&self, swarm_id: &str, agent_id: &str) -> Result<(), AspError> {
        let (swarm, members) = self.master_of(swarm_id).await?;
        if agent_id == swarm.master {
            return Err(AspError::NotAllowed("the master cannot kick itself".into()));
        }
        if !members.iter().any(|m| m.agent_id == agent_id) {
            return Err(AspError::NotMember { swarm: swarm_id.to_owned(), agent: agent_id.to_owned() });
        }
        let content = serde_json::json!({"type": "system", "action": "member_kicked", "swarm_id": swarm_id, "agent_id": agent_id, "initiated_by": self.identity.agent_id}).to_string();
        let others: Vec<&MemberRecord> = members.iter().filter(|m| m.agent_id != self.identity.agent_id).collect();
        let rows = self.announce(swarm_id, content, &others)?;
        let change = MembershipChange::Remove { swarm_id: swarm_id.to_owned(), agent_id: agent_id.to_owned() };
        self.store.swarm_change(change, rows).await?;
        self.wake.notify_one();
        Ok(())
    }

    /// Hands the master role to another member (master only) and tells everyone.
    pub async fn transfer(&self, swarm_id: &str, agent_id: &str) -> Result<(), AspError> {
        let (_, members) = self.master_of(swarm_id).await?;
        if agent_id == self.identity.agent_id || !members.iter().any(|m| m.agent_id == agent_id) {
            return Err(AspError::NotMember { swarm: swarm_id.to_owned(), agent: agent_id.to_owned() });
        }
        let content = serde_json::json!({"type": "system", "action": "master_transferred", "swarm_id": swarm_id, "agent_id": agent_id, "initiated_by": self.identity.agent_id}).to_string();
        let others: Vec<&MemberRecord> = members.iter().filter(|m| m.agent_id != self.identity.agent_id).collect();
        let rows = self.announce(swarm_id, content, &others)?;
        let change = MembershipChange::SetMaster { swarm_id: swarm_id.to_owned(), agent_id: agent_id.to_owned() };
        self.store.swarm_change(change, rows).await?;
        self.wake.notify_one();
        Ok(())
    }

    /// Mutes (or unmutes) a whole swarm or one member, on this host only: their messages are
    /// still verified and kept, but listed only on request.
    pub async fn mute(&self, swarm_id: &str, agent_id: Option<&str>, muted: bool) -> Result<(), AspError> {
        let (_, members) = self.swarm_of(swarm_id).await?;
        let change = match agent_id {
            None => MembershipChange::MuteSwarm { swarm_id: swarm_id.to_owned(), muted },
            Some(agent) if members.iter().any(|m| m.agent_id == agent) => {
                MembershipChange::MuteMember { swarm_id: swarm_id.to_owned(), agent_id: agent.to_owned(), muted }
            }
            Some(agent) => return Err(AspError::NotMember { swarm: swarm_id.to_owned(), agent: agent.to_owned() }),
        };
        self.store.swarm_change(change, Vec::new()).await?;
        Ok(())
    }

    async fn master_of(&self, swarm_id: &str) -> Result<(SwarmRecord, Vec<MemberRecord>), AspError> {
        let (swarm, members) = self.swarm_of(swarm_id).await?;
        if swarm.master != self.identity.agent_id {
            return Err(AspError::NotAllowed(format!("only the master ({}) may do this", swarm.master)));
        }
        Ok((swarm, members))
    }

    // ---- messages ----

    /// A new unsigned message from this host.
    fn message(&self, swarm_id: &str, recipient: &str, kind: &str, content: String) -> Message {
        Message {
            protocol_version: PROTOCOL_VERSION.to_owned(),
            message_id: uuid::Uuid::new_v4().to_string(),
            timestamp: timestamp(now_ms()),
            sender: Sender { agent_id: self.identity.agent_id.clone(), endpoint: self.endpoint.clone() },
            recipient: recipient.to_owned(),
            swarm_id: swarm_id.to_owned(),
            kind: kind.to_owned(),
            content,
            signature: String::new(),
            extra: serde_json::Map::new(),
        }
    }

    /// A system message to `to`, one outbox row each.
    fn announce(&self, swarm_id: &str, content: String, to: &[&MemberRecord]) -> Result<Vec<NewOutbox>, AspError> {
        let message = self.message(swarm_id, "broadcast", "system", content);
        to.iter().map(|m| self.outbox_for(&message, m)).collect()
    }

    /// `message` signed for `member` (under its scheme), as an outbox row.
    fn outbox_for(&self, message: &Message, member: &MemberRecord) -> Result<NewOutbox, AspError> {
        self.clone_signer().outbox_for(message, member)
    }

    /// `body` (a signed message) as it should go out now: unchanged while its timestamp is
    /// fresh, else with the current time, signed again under `scheme`.
    pub(super) fn restamp(&self, body: &str, scheme: &str) -> Result<String, AspError> {
        let mut message: Message = serde_json::from_str(body)
            .map_err(|e| AspError::Malformed { what: "outbox message", detail: e.to_string() })?;
        let age = now_ms().saturating_sub(signing::instant(&message.timestamp)?);
        if u64::try_from(age).unwrap_or(0) < self.config.max_skew_ms / 4 {
            return Ok(body.to_owned());
        }
        message.timestamp = timestamp(now_ms());
        message.signature = self.identity.sign(scheme_named(Some(scheme)), &message)?;
        serde_json::to_string(&message).map_err(|e| AspError::Internal(e.to_string()))
    }

    fn clone_signer(&self) -> Signer {
        Signer(Arc::clone(&self.identity))
    }

    /// Verifies and takes an inbound message (see the module docs for every check). Nothing
    /// is written unless every check passed; then the message is remembered, stored and
    /// applied in one transaction.
    pub async fn receive(&self, message: &Message, wire: String) -> Result<(), AspError> {
        // Rate limits: a member whose signature verified has its own bucket; everyone else
        // shares one (inventing sender ids or forging a member's buys nothing, and cannot
        // drain the member's bucket).
        let stranger = |e: AspError| match self.check_rate(STRANGERS) {
            Ok(()) => e,
            Err(limited) => limited,
        };
        verify::shape(message).map_err(stranger)?;
        if message.sender.agent_id == self.identity.agent_id {
            return Err(stranger(AspError::NotAllowed("a message may not claim to come from this host".into())));
        }
        let (swarm, members) = self.swarm_of(&message.swarm_id).await.map_err(stranger)?;
        let Some(member) = members.iter().find(|m| m.agent_id == message.sender.agent_id) else {
            return Err(stranger(AspError::NotMember {
                swarm: message.swarm_id.clone(),
                agent: message.sender.agent_id.clone(),
            }));
        };
        verify::signature(message, member).map_err(stranger)?;
        self.check_rate(&member.agent_id)?;
        let now = now_ms();
        let fresh_until = verify::clock(message, now, self.config.max_skew_ms)?;
        // Remembered at least as long as the sender's outbox may retry it (re-stamped).
        let dedupe = i64::try_from(self.config.dedupe_window_ms).unwrap_or(i64::MAX);
        let seen_until = fresh_until.max(now.saturating_add(dedupe));
        let own = &self.identity.agent_id;
        let for_me = message.recipient == "broadcast"
            || message.recipient == *own
            || message.recipient.strip_prefix(own.as_str()).is_some_and(|rest| rest.starts_with('/'));
        if !for_me {
            return Err(AspError::NotAllowed(format!("the message is for '{}', not this host", message.recipient)));
        }
        let change = if message.kind == "system" {
            system_change(&swarm, &members, message, own)?
        } else {
            MembershipChange::Nothing
        };
        if message.kind == "message" {
            self.admit_agent_message(member, &message.recipient, &message.content)?;
        }
        let inbound = InboundRecord {
            seq: 0,
            message_id: message.message_id.clone(),
            swarm_id: message.swarm_id.clone(),
            sender: message.sender.agent_id.clone(),
            recipient: message.recipient.clone(),
            kind: message.kind.clone(),
            content: message.content.clone(),
            wire,
            muted: swarm.muted || member.muted,
            received_at: now_ms(),
        };
        match self.store.swarm_accept(inbound, seen_until, change).await? {
            Some(seq) => {
                if message.kind == "message" {
                    self.after_accept(
                        seq,
                        &message.swarm_id,
                        member,
                        &message.message_id,
                        &message.recipient,
                        &message.content,
                    );
                }
                Ok(())
            }
            None => Err(AspError::Replay(message.message_id.clone())),
        }
    }

    /// The outbox, live rows first.
    pub async fn outbox(&self, limit: u32) -> Result<Vec<crate::store::OutboxRecord>, AspError> {
        Ok(self.store.outbox_list(limit).await?)
    }

    /// Received messages (see `Store::swarm_inbox`).
    pub async fn inbox(
        &self,
        swarm_id: Option<String>,
        after_seq: i64,
        limit: u32,
        muted: bool,
    ) -> Result<Vec<InboundRecord>, AspError> {
        Ok(self.store.swarm_inbox(swarm_id, after_seq, limit, muted).await?)
    }
}

/// Signs as this host; cheap to move into a store op.
struct Signer(Arc<Identity>);

impl Signer {
    fn outbox_for(&self, message: &Message, member: &MemberRecord) -> Result<NewOutbox, AspError> {
        let mut signed = message.clone();
        signed.signature = self.0.sign(verify::scheme_of(member), &signed)?;
        let body = serde_json::to_string(&signed).map_err(|e| AspError::Internal(e.to_string()))?;
        Ok(NewOutbox {
            message_id: signed.message_id,
            peer: member.agent_id.clone(),
            endpoint: member.endpoint.clone(),
            scheme: member.scheme.clone(),
            system: signed.kind == "system",
            track: signed.kind == "message" && signed.recipient.contains('/'),
            body,
        })
    }
}

/// What a verified system message does, if its sender may do it (`own` is this host's id).
fn system_change(
    swarm: &SwarmRecord,
    members: &[MemberRecord],
    message: &Message,
    own: &str,
) -> Result<MembershipChange, AspError> {
    let Ok(content) = serde_json::from_str::<SystemContent>(&message.content) else {
        // Not a lifecycle event: kept in the inbox, changes nothing.
        return Ok(MembershipChange::Nothing);
    };
    let sender = message.sender.agent_id.as_str();
    let from_master = sender == swarm.master;
    let master_only = |action: &str| {
        if from_master {
            Ok(())
        } else {
            Err(AspError::NotAllowed(format!("only the master ({}) may send {action}", swarm.master)))
        }
    };
    let target = || {
        content
            .agent_id
            .clone()
            .ok_or_else(|| AspError::Malformed { what: "system content", detail: "agent_id missing".into() })
    };
    let swarm_id = swarm.swarm_id.clone();
    let is_member = |id: &str| members.iter().any(|m| m.agent_id == id);
    Ok(match content.action.as_str() {
        "member_joined" => {
            master_only("member_joined")?;
            let agent_id = target()?;
            if agent_id == own {
                return Ok(MembershipChange::Nothing);
            }
            let endpoint = content.endpoint.clone().unwrap_or_default();
            if !endpoint.starts_with("https://") {
                return Err(AspError::Malformed { what: "member_joined", detail: "endpoint must use HTTPS".into() });
            }
            let public_key = content.public_key.clone().unwrap_or_default();
            let key = signing::public_key(&public_key)?;
            if !valid_agent_id(&agent_id) || !id_fits_key(&agent_id, &key) {
                return Err(AspError::NotAllowed(format!("'{agent_id}' is not a valid member id for the key given")));
            }
            let was_lp1 = members.iter().any(|m| m.agent_id == agent_id && m.scheme == Scheme::CorralLp1.name());
            let scheme = if was_lp1 { Scheme::CorralLp1 } else { scheme_named(content.signature_scheme.as_deref()) };
            MembershipChange::Add(MemberRecord {
                swarm_id,
                agent_id,
                endpoint,
                public_key,
                scheme: scheme.name().to_owned(),
                muted: false,
                joined_at: now_ms(),
            })
        }
        "member_left" => {
            let agent_id = target()?;
            if agent_id != sender && !from_master {
                return Err(AspError::NotAllowed(format!("'{sender}' may not announce that '{agent_id}' left")));
            }
            if agent_id == own {
                // The master says this host is out: as a kick.
                MembershipChange::Forget { swarm_id }
            } else {
                MembershipChange::Remove { swarm_id, agent_id }
            }
        }
        "member_kicked" => {
            master_only("member_kicked")?;
            let agent_id = target()?;
            if agent_id == own {
                MembershipChange::Forget { swarm_id }
            } else {
                MembershipChange::Remove { swarm_id, agent_id }
            }
        }
        "master_transferred" => {
            master_only("master_transferred")?;
            let agent_id = target()?;
            if !is_member(&agent_id) {
                return Err(AspError::NotMember { swarm: swarm_id, agent: agent_id });
            }
            MembershipChange::SetMaster { swarm_id, agent_id }
        }
        "member_muted" | "member_unmuted" => {
            master_only(&content.action)?;
            let agent_id = target()?;
            MembershipChange::MuteMember { swarm_id, agent_id, muted: content.action == "member_muted" }
        }
        _ => MembershipChange::Nothing,
    })
}

/// How an invite is remembered (the token itself is a bearer credential; only its hash is kept).
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}
