//! Federation over ASP: several real `corral serve` processes on loopback, each with an HTTPS
//! swarm endpoint (a certificate the test makes), forming swarms by invite and messaging each
//! other; and a hostile peer (this test, signing with keys it controls or steals from a host's
//! data dir) whose every forgery is refused with a stable code and changes nothing.

use std::path::PathBuf;

use base64::Engine as _;
use corral::asp::signing::{self, Scheme};
use corral::asp::{Message, Sender, invite};
use ed25519_dalek::SigningKey;
use serde_json::{Value, json};

use crate::harness::{Host, eventually};

/// One certificate (for `localhost` and 127.0.0.1) every test host serves and trusts.
struct Tls {
    _dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
    pem: String,
}

fn tls() -> Tls {
    let dir = tempfile::tempdir().unwrap();
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    Tls { _dir: dir, cert, key, pem: made.cert.pem() }
}

/// A port nobody listens on right now (for hosts that must come back on the same endpoint).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn policy(tls: &Tls, port: u16, extra: &str) -> String {
    format!(
        "[swarm]\nlisten = \"127.0.0.1:{port}\"\ntls_cert = {:?}\ntls_key = {:?}\npeer_ca = [{:?}]\nmax_skew_ms = 60000\n\
         max_body_bytes = 65536\noutbox_interval_ms = 50\noutbox_max_backoff_ms = 500\n{extra}",
        tls.cert.display().to_string(),
        tls.key.display().to_string(),
        tls.cert.display().to_string()
    )
}

fn start(tls: &Tls, agents: &[&str], extra: &str) -> Host {
    let host = Host::start_with_policy(agents, Some(&policy(tls, 0, extra)));
    assert!(host.swarm.is_some(), "no swarm endpoint:\n{}", host.logs());
    host
}

/// A client that trusts the test certificate (what a peer uses).
fn peer_client(tls: &Tls) -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(tls.pem.as_bytes()).unwrap())
        .build()
        .unwrap()
}

async fn agent_id(host: &Host) -> String {
    let (status, info) = host.get("/v1/swarm/identity").await;
    assert_eq!(status, 200, "{info}");
    info["agent_id"].as_str().unwrap().to_owned()
}

/// The host's own signing key, read from its data dir (to act as that host).
fn stolen_key(host: &Host) -> SigningKey {
    let hex_seed = std::fs::read_to_string(host.data_dir().join("identity.key")).unwrap();
    let seed: [u8; 32] = hex::decode(hex_seed.trim()).unwrap().try_into().unwrap();
    SigningKey::from_bytes(&seed)
}

async fn create(host: &Host, name: &str) -> String {
    let (status, swarm) = host.post("/v1/swarms", &json!({ "name": name })).await;
    assert_eq!(status, 200, "{swarm}");
    swarm["swarm_id"].as_str().unwrap().to_owned()
}

async fn invite_url(host: &Host, swarm: &str, body: Value) -> String {
    let (status, invite) = host.post(&format!("/v1/swarms/{swarm}/invites"), &body).await;
    assert_eq!(status, 200, "{invite}");
    invite["url"].as_str().unwrap().to_owned()
}

async fn join(host: &Host, invite: &str) -> (u16, Value) {
    host.post("/v1/swarms/join", &json!({ "invite": invite })).await
}

async fn members(host: &Host, swarm: &str) -> Vec<String> {
    let (status, view) = host.get(&format!("/v1/swarms/{swarm}")).await;
    if status != 200 {
        return Vec::new();
    }
    let mut ids: Vec<String> =
        view["members"].as_array().unwrap().iter().map(|m| m["agent_id"].as_str().unwrap().to_owned()).collect();
    ids.sort();
    ids
}

async fn inbox(host: &Host) -> Vec<Value> {
    let (status, inbox) = host.get("/v1/swarm/inbox?muted=true").await;
    assert_eq!(status, 200, "{inbox}");
    inbox["messages"].as_array().unwrap().clone()
}

/// Waits until every host lists exactly `expected` as the swarm's members.
async fn converge(hosts: &[&Host], swarm: &str, expected: &[String]) {
    let mut expected = expected.to_vec();
    expected.sort();
    for host in hosts {
        eventually("membership converges", || {
            let expected = expected.clone();
            async move { (members(host, swarm).await == expected).then_some(()) }
        })
        .await;
    }
}

/// A message from `sender` (with `key`) to `recipient`, signed under `scheme`.
fn signed(
    key: &SigningKey,
    sender: (&str, &str),
    swarm: &str,
    recipient: &str,
    kind: &str,
    content: &str,
    scheme: Scheme,
) -> Message {
    let mut m = Message {
        protocol_version: "0.1.0".into(),
        message_id: uuid::Uuid::now_v7().to_string(),
        timestamp: corral::asp::federation::timestamp(corral::store::now_ms()),
        sender: Sender { agent_id: sender.0.into(), endpoint: sender.1.into() },
        recipient: recipient.into(),
        swarm_id: swarm.into(),
        kind: kind.into(),
        content: content.into(),
        signature: String::new(),
        extra: serde_json::Map::new(),
    };
    m.signature = signing::sign(scheme, key, &m).unwrap();
    m
}

async fn post_raw(client: &reqwest::Client, endpoint: &str, path: &str, body: Vec<u8>) -> (u16, Value) {
    let resp = client
        .post(format!("{endpoint}/{path}"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn deliver(client: &reqwest::Client, host: &Host, message: &Message) -> (u16, Value) {
    post_raw(client, host.swarm.as_deref().unwrap(), "message", serde_json::to_vec(message).unwrap()).await
}

fn refused(answer: &(u16, Value), status: u16, code: &str) {
    assert_eq!(answer.0, status, "{}", answer.1);
    assert_eq!(answer.1["error"]["code"], code, "{}", answer.1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hosts_form_a_swarm_by_invite_and_messages_flow_between_them() {
    let tls = tls();
    let (a, b, c) = (start(&tls, &[], ""), start(&tls, &[], ""), start(&tls, &[], ""));
    let (ida, idb, idc) = (agent_id(&a).await, agent_id(&b).await, agent_id(&c).await);
    let swarm = create(&a, "trio").await;
    let url = invite_url(&a, &swarm, json!({ "max_uses": 2 })).await;
    assert!(url.starts_with(&format!("swarm://{swarm}@127.0.0.1:")), "{url}");
    let joined = join(&b, &url).await;
    assert_eq!(joined.0, 200, "{}", joined.1);
    // The CLI does the same as the API.
    let out = c.cli(&["swarm", "join", &url]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains(&format!("joined swarm {swarm}")), "{out:?}");
    let everyone = vec![ida.clone(), idb.clone(), idc.clone()];
    converge(&[&a, &b, &c], &swarm, &everyone).await;

    // Between corral hosts every member signs with the unambiguous scheme.
    let (_, view) = b.get(&format!("/v1/swarms/{swarm}")).await;
    for m in view["members"].as_array().unwrap() {
        assert_eq!(m["signature_scheme"], "corral-lp/1", "{view}");
    }
    assert_eq!(view["master"], ida.as_str());
    let info: Value = peer_client(&tls)
        .get(format!("{}/info", a.swarm.as_deref().unwrap()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["agent_id"], ida.as_str());
    assert_eq!(info["signature_schemes"][0], "corral-lp/1");

    // Direct and broadcast messages arrive once each, from who sent them.
    let (status, sent) =
        b.post(&format!("/v1/swarms/{swarm}/messages"), &json!({ "recipient": idc, "content": "hello C" })).await;
    assert_eq!(status, 200, "{sent}");
    let out = c.cli(&["swarm", "send", &swarm, "broadcast", "hello all", "--type", "notification"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    eventually("C has B's message", || async {
        inbox(&c).await.iter().any(|m| m["sender"] == idb.as_str() && m["content"] == "hello C").then_some(())
    })
    .await;
    for host in [&a, &b] {
        eventually("the broadcast reached every other member", || async {
            inbox(host)
                .await
                .iter()
                .any(|m| m["sender"] == idc.as_str() && m["content"] == "hello all" && m["type"] == "notification")
                .then_some(())
        })
        .await;
    }
    let out = a.cli(&["swarm", "inbox"]).await;
    assert!(out.stdout.contains("hello all"), "{out:?}");
    // An invite to a swarm this host is already in cannot replace what it knows.
    refused(&join(&b, &invite_url(&a, &swarm, json!({})).await).await, 409, "ALREADY_MEMBER");
    let out = a.cli(&["swarm", "members", &swarm]).await;
    assert!(out.stdout.contains("master") && out.stdout.contains(&idc), "{out:?}");
    // A's outbox drained: every member_joined was delivered.
    eventually("A's outbox is empty", || async {
        let (_, outbox) = a.get("/v1/swarm/outbox").await;
        outbox["entries"].as_array().unwrap().is_empty().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_replayed_stale_and_oversize_messages_are_refused_with_stable_codes_and_change_nothing() {
    let tls = tls();
    let (a, b) = (start(&tls, &[], ""), start(&tls, &[], ""));
    let (ida, idb) = (agent_id(&a).await, agent_id(&b).await);
    let swarm = create(&a, "guarded").await;
    let url = invite_url(&a, &swarm, json!({})).await;
    assert_eq!(join(&b, &url).await.0, 200);
    converge(&[&a, &b], &swarm, &[ida.clone(), idb.clone()]).await;
    let client = peer_client(&tls);
    let b_key = stolen_key(&b);
    let b_sender = (idb.as_str(), b.swarm.as_deref().unwrap());
    let lp1 = Scheme::CorralLp1;

    // The genuine article is accepted (B's key, B's scheme).
    let good = signed(&b_key, b_sender, &swarm, &ida, "message", "genuine", lp1);
    let answer = deliver(&client, &a, &good).await;
    assert_eq!(answer.0, 200, "{}", answer.1);
    assert_eq!(answer.1, json!({ "status": "queued", "message_id": good.message_id }));

    // An exact replay.
    refused(&deliver(&client, &a, &good).await, 409, "DUPLICATE_MESSAGE");
    // An all-zero signature.
    let mut zero = signed(&b_key, b_sender, &swarm, &ida, "message", "zero", lp1);
    zero.signature = base64::engine::general_purpose::STANDARD.encode([0u8; 64]);
    refused(&deliver(&client, &a, &zero).await, 401, "INVALID_SIGNATURE");
    // The wrong key, claiming to be B.
    let stranger = SigningKey::from_bytes(&[7u8; 32]);
    refused(
        &deliver(&client, &a, &signed(&stranger, b_sender, &swarm, &ida, "message", "x", lp1)).await,
        401,
        "INVALID_SIGNATURE",
    );
    // B's key under ASP 0.1.0: B advertised corral-lp/1, so no downgrade.
    refused(
        &deliver(&client, &a, &signed(&b_key, b_sender, &swarm, &ida, "message", "x", Scheme::Asp010)).await,
        401,
        "INVALID_SIGNATURE",
    );
    // A non-member, and an unknown swarm.
    let outsider = ("corral-0000000000000000", "https://127.0.0.1:1/swarm");
    refused(
        &deliver(&client, &a, &signed(&stranger, outsider, &swarm, &ida, "message", "x", lp1)).await,
        403,
        "NOT_MEMBER",
    );
    let nowhere = uuid::Uuid::now_v7().to_string();
    refused(
        &deliver(&client, &a, &signed(&b_key, b_sender, &nowhere, &ida, "message", "x", lp1)).await,
        404,
        "SWARM_NOT_FOUND",
    );
    // A stale timestamp (well signed), and a passed expires_at.
    let mut stale = signed(&b_key, b_sender, &swarm, &ida, "message", "old", lp1);
    stale.timestamp = corral::asp::federation::timestamp(corral::store::now_ms() - 10 * 60_000);
    stale.signature = signing::sign(lp1, &b_key, &stale).unwrap();
    refused(&deliver(&client, &a, &stale).await, 400, "STALE_MESSAGE");
    let mut expired = signed(&b_key, b_sender, &swarm, &ida, "message", "late", lp1);
    expired
        .extra
        .insert("expires_at".into(), json!(corral::asp::federation::timestamp(corral::store::now_ms() - 1_000)));
    // corral-lp/1 covers expires_at: added after signing, it breaks the signature…
    refused(&deliver(&client, &a, &expired).await, 401, "INVALID_SIGNATURE");
    // …signed with it, the passed expiry is what is refused.
    expired.signature = signing::sign(lp1, &b_key, &expired).unwrap();
    refused(&deliver(&client, &a, &expired).await, 400, "MESSAGE_EXPIRED");

    // The ambiguous twin: under 0.1.0 both sign the same bytes; under corral-lp/1 they do not.
    // (`<A>/message` + `message` + `/x` and `<A>/` + `message` + `message/x`: both for A.)
    let original = signed(&b_key, b_sender, &swarm, &format!("{ida}/message"), "message", "/x", lp1);
    let mut twin = original.clone();
    twin.recipient = format!("{ida}/");
    twin.content = "message/x".into();
    assert_eq!(signing::payload(Scheme::Asp010, &original).unwrap(), signing::payload(Scheme::Asp010, &twin).unwrap());
    refused(&deliver(&client, &a, &twin).await, 401, "INVALID_SIGNATURE");

    // A non-member forging member_kicked of B; B (a member) forging master-only actions.
    let kick_b = json!({ "action": "member_kicked", "agent_id": idb }).to_string();
    refused(
        &deliver(&client, &a, &signed(&stranger, outsider, &swarm, "broadcast", "system", &kick_b, lp1)).await,
        403,
        "NOT_MEMBER",
    );
    let take_over = json!({ "action": "master_transferred", "agent_id": idb }).to_string();
    refused(
        &deliver(&client, &a, &signed(&b_key, b_sender, &swarm, "broadcast", "system", &take_over, lp1)).await,
        403,
        "NOT_AUTHORIZED",
    );
    let fake_member = json!({
        "action": "member_joined", "agent_id": "corral-ffffffffffffffff", "endpoint": "https://127.0.0.1:1/swarm",
        "public_key": signing::public_key_b64(&stranger.verifying_key()),
    })
    .to_string();
    refused(
        &deliver(&client, &a, &signed(&b_key, b_sender, &swarm, "broadcast", "system", &fake_member, lp1)).await,
        403,
        "NOT_AUTHORIZED",
    );
    let kick_a = json!({ "action": "member_kicked", "agent_id": ida }).to_string();
    refused(
        &deliver(&client, &a, &signed(&b_key, b_sender, &swarm, "broadcast", "system", &kick_a, lp1)).await,
        403,
        "NOT_AUTHORIZED",
    );

    // Oversize and malformed bodies.
    let big = signed(&b_key, b_sender, &swarm, &ida, "message", &"x".repeat(100_000), lp1);
    refused(&deliver(&client, &a, &big).await, 413, "PAYLOAD_TOO_LARGE");
    let endpoint = a.swarm.as_deref().unwrap();
    refused(&post_raw(&client, endpoint, "message", b"{\"message_id\": ".to_vec()).await, 400, "INVALID_FORMAT");
    refused(&post_raw(&client, endpoint, "message", b"[1, 2]".to_vec()).await, 400, "INVALID_FORMAT");

    // Nothing changed: the same members, the same master, one message in the inbox.
    assert_eq!(members(&a, &swarm).await, {
        let mut both = vec![ida.clone(), idb.clone()];
        both.sort();
        both
    });
    let (_, view) = a.get(&format!("/v1/swarms/{swarm}")).await;
    assert_eq!(view["master"], ida.as_str());
    let received = inbox(&a).await;
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(received[0]["content"], "genuine");
    // Every refusal is in the audit table with its code.
    let codes: Vec<String> = eventually("refusals audited", || async {
        let db = a.db();
        let mut stmt =
            db.prepare("SELECT reason FROM audit WHERE scope = 'swarm.receive' AND decision = 'deny'").unwrap();
        let rows: Vec<String> = stmt.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect();
        (rows.len() >= 15).then_some(rows)
    })
    .await;
    for code in [
        "DUPLICATE_MESSAGE",
        "INVALID_SIGNATURE",
        "NOT_AUTHORIZED",
        "NOT_MEMBER",
        "SWARM_NOT_FOUND",
        "STALE_MESSAGE",
        "MESSAGE_EXPIRED",
        "PAYLOAD_TOO_LARGE",
        "INVALID_FORMAT",
    ] {
        assert!(codes.iter().any(|r| r.starts_with(code)), "{code} not audited: {codes:?}");
    }
}

/// Re-encodes an invite's claims with `change` applied, keeping the original signature.
fn spliced(token: &str, change: impl FnOnce(&mut Value)) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut claims: Value = serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
    change(&mut claims);
    format!("{}.{}.{}", parts[0], b64.encode(serde_json::to_vec(&claims).unwrap()), parts[2])
}

fn token_of(url: &str) -> String {
    url.rsplit_once("token=").unwrap().1.to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invites_are_verified_before_their_endpoint_is_trusted_and_counted_durably_by_the_master() {
    let tls = tls();
    let (a, b, c) = (start(&tls, &[], ""), start(&tls, &[], ""), start(&tls, &[], ""));
    let ida = agent_id(&a).await;
    let swarm = create(&a, "gated").await;
    let client = peer_client(&tls);

    // Expired: refused by the joiner (it verifies first) and by the master.
    let expired = invite_url(&a, &swarm, json!({ "ttl_ms": 1 })).await;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let answer = join(&b, &expired).await;
    refused(&answer, 401, "INVITE_EXPIRED");
    let join_body = |token: &str, host: &Host, key: &SigningKey| {
        json!({
            "type": "system", "action": "join_request", "invite_token": token,
            "sender": { "agent_id": corral::asp::identity::agent_id(&key.verifying_key()),
                        "endpoint": host.swarm.as_deref().unwrap(),
                        "public_key": signing::public_key_b64(&key.verifying_key()) },
        })
    };
    let b_key = stolen_key(&b);
    let direct = post_raw(
        &client,
        a.swarm.as_deref().unwrap(),
        "join",
        serde_json::to_vec(&join_body(&token_of(&expired), &b, &b_key)).unwrap(),
    )
    .await;
    refused(&direct, 401, "INVITE_EXPIRED");

    // Forged: a token claiming A as master, signed by someone else.
    let forger = SigningKey::from_bytes(&[9u8; 32]);
    let claims = invite::unverified_claims(&token_of(&expired)).unwrap();
    let forged = invite::issue(&forger, &invite::InviteClaims { expires_at: None, ..claims.clone() }).unwrap();
    refused(&join(&b, &forged).await, 401, "INVALID_SIGNATURE");
    let direct = post_raw(
        &client,
        a.swarm.as_deref().unwrap(),
        "join",
        serde_json::to_vec(&join_body(&forged, &b, &b_key)).unwrap(),
    )
    .await;
    refused(&direct, 401, "INVALID_SIGNATURE");

    // Spliced: A's genuine token with C's endpoint in it. C is not A: the joiner refuses before
    // sending anything to C. And a token naming A's endpoint but signed by C: refused too.
    let once = invite_url(&a, &swarm, json!({ "max_uses": 1 })).await;
    let c_endpoint = c.swarm.clone().unwrap();
    let redirected = spliced(&token_of(&once), |claims| claims["endpoint"] = json!(c_endpoint));
    refused(&join(&b, &redirected).await, 401, "INVALID_TOKEN");
    let c_key = stolen_key(&c);
    let signed_by_c = invite::issue(&c_key, &invite::InviteClaims { expires_at: None, ..claims }).unwrap();
    refused(&join(&b, &signed_by_c).await, 401, "INVALID_SIGNATURE");
    assert!(members(&b, &swarm).await.is_empty());

    // max_uses = 1: B gets in; C, with the same invite, does not — nor directly.
    let (status, joined) = join(&b, &once).await;
    assert_eq!(status, 200, "{joined}");
    let second = join(&c, &once).await;
    assert_eq!(second.0, 502, "{}", second.1);
    assert!(second.1["error"]["message"].as_str().unwrap().contains("INVITE_EXHAUSTED"), "{}", second.1);
    let direct = post_raw(
        &client,
        a.swarm.as_deref().unwrap(),
        "join",
        serde_json::to_vec(&join_body(&token_of(&once), &c, &c_key)).unwrap(),
    )
    .await;
    refused(&direct, 403, "INVITE_EXHAUSTED");
    // A joiner may not claim a corral id that is not its key's.
    let multi = invite_url(&a, &swarm, json!({})).await;
    let mut impostor = join_body(&token_of(&multi), &c, &c_key);
    impostor["sender"]["agent_id"] = json!(agent_id(&b).await);
    refused(
        &post_raw(&client, a.swarm.as_deref().unwrap(), "join", serde_json::to_vec(&impostor).unwrap()).await,
        403,
        "NOT_AUTHORIZED",
    );
    let mut expected = vec![ida.clone(), agent_id(&b).await];
    expected.sort();
    assert_eq!(members(&a, &swarm).await, expected);
    assert!(members(&c, &swarm).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_master_changes_membership_and_every_member_follows_its_signed_word() {
    let tls = tls();
    let (a, b, c) = (start(&tls, &[], ""), start(&tls, &[], ""), start(&tls, &[], ""));
    let (ida, idb, idc) = (agent_id(&a).await, agent_id(&b).await, agent_id(&c).await);
    let swarm = create(&a, "ruled").await;
    let url = invite_url(&a, &swarm, json!({})).await;
    assert_eq!(join(&b, &url).await.0, 200);
    assert_eq!(join(&c, &url).await.0, 200);
    converge(&[&a, &b, &c], &swarm, &[ida.clone(), idb.clone(), idc.clone()]).await;

    // A non-master may not kick; the master may, and everyone (the kicked too) follows.
    refused(&b.post(&format!("/v1/swarms/{swarm}/kick"), &json!({ "agent_id": idc })).await, 403, "NOT_AUTHORIZED");
    let out = a.cli(&["swarm", "kick", &swarm, &idc]).await;
    assert_eq!(out.code, 0, "{out:?}");
    converge(&[&a, &b], &swarm, &[ida.clone(), idb.clone()]).await;
    eventually("C forgot the swarm", || async { (c.get(&format!("/v1/swarms/{swarm}")).await.0 == 404).then_some(()) })
        .await;

    // The master role moves to B; B now admits and A's word no longer counts.
    refused(&a.post(&format!("/v1/swarms/{swarm}/leave"), &json!({})).await, 403, "NOT_AUTHORIZED");
    let out = a.cli(&["swarm", "transfer", &swarm, &idb]).await;
    assert_eq!(out.code, 0, "{out:?}");
    eventually("B is master on B", || async {
        let (_, view) = b.get(&format!("/v1/swarms/{swarm}")).await;
        (view["master"] == idb.as_str()).then_some(())
    })
    .await;
    refused(&a.post(&format!("/v1/swarms/{swarm}/invites"), &json!({})).await, 403, "NOT_AUTHORIZED");
    // A's invites died with its role: C cannot get back in with the one it had.
    let stale = join(&c, &url).await;
    assert_eq!(stale.0, 502, "{}", stale.1);
    assert!(stale.1["error"]["message"].as_str().unwrap().contains("no longer the swarm's master"), "{}", stale.1);
    let again = invite_url(&b, &swarm, json!({})).await;
    assert_eq!(join(&c, &again).await.0, 200);
    converge(&[&a, &b, &c], &swarm, &[ida.clone(), idb.clone(), idc.clone()]).await;

    // A leaves: the others drop it; A forgets the swarm.
    let out = a.cli(&["swarm", "leave", &swarm]).await;
    assert_eq!(out.code, 0, "{out:?}");
    converge(&[&b, &c], &swarm, &[idb.clone(), idc.clone()]).await;
    assert_eq!(a.get(&format!("/v1/swarms/{swarm}")).await.0, 404);

    // Muting is local: C's messages to B are kept but listed only on request.
    assert_eq!(b.post(&format!("/v1/swarms/{swarm}/mute"), &json!({ "agent_id": idc })).await.0, 200);
    assert_eq!(
        c.post(&format!("/v1/swarms/{swarm}/messages"), &json!({ "recipient": idb, "content": "psst" })).await.0,
        200
    );
    eventually("B kept C's muted message", || async {
        inbox(&b).await.iter().any(|m| m["content"] == "psst" && m["muted"] == true).then_some(())
    })
    .await;
    let (_, unmuted) = b.get("/v1/swarm/inbox").await;
    assert!(!unmuted["messages"].as_array().unwrap().iter().any(|m| m["content"] == "psst"), "{unmuted}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_in_the_outbox_survive_kill_9_of_the_sender_and_arrive_exactly_once() {
    let tls = tls();
    let (port_a, port_b) = (free_port(), free_port());
    let mut a = Host::start_with_policy(&[], Some(&policy(&tls, port_a, "")));
    let mut b = Host::start_with_policy(&[], Some(&policy(&tls, port_b, "")));
    let (ida, idb) = (agent_id(&a).await, agent_id(&b).await);
    let swarm = create(&a, "durable").await;
    let url = invite_url(&a, &swarm, json!({})).await;
    assert_eq!(join(&b, &url).await.0, 200);
    converge(&[&a, &b], &swarm, &[ida.clone(), idb.clone()]).await;

    // B goes down; A queues five messages it cannot deliver, then is killed.
    b.kill_9();
    for i in 0..5 {
        let (status, sent) = a
            .post(&format!("/v1/swarms/{swarm}/messages"), &json!({ "recipient": idb, "content": format!("m{i}") }))
            .await;
        assert_eq!(status, 200, "{sent}");
    }
    eventually("A tried and failed", || async {
        let (_, outbox) = a.get("/v1/swarm/outbox").await;
        let entries = outbox["entries"].as_array().unwrap().clone();
        (entries.len() == 5 && entries.iter().all(|e| e["attempts"].as_u64() >= Some(1))).then_some(())
    })
    .await;
    a.kill_9();

    // Both come back on the same endpoints; the outbox delivers, the receiver dedupes.
    b.spawn();
    a.spawn();
    eventually("all five arrived", || async { (inbox(&b).await.len() >= 5).then_some(()) }).await;
    eventually("A's outbox drained", || async {
        let (_, outbox) = a.get("/v1/swarm/outbox").await;
        outbox["entries"].as_array().unwrap().is_empty().then_some(())
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let mut contents: Vec<String> = inbox(&b).await.iter().map(|m| m["content"].as_str().unwrap().to_owned()).collect();
    contents.sort();
    assert_eq!(contents, ["m0", "m1", "m2", "m3", "m4"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wasm_agent_delegates_to_an_agent_on_another_host_under_both_hosts_policies() {
    let tls = tls();
    // A's jobs may delegate to echo and counter on any swarm host; nothing else remote.
    let a = start(
        &tls,
        &["orchestrator"],
        "[ceiling.grants]\n\"log\" = [\"**\"]\n\"events\" = [\"**\"]\n\"agent.delegate\" = [\"**\"]\n\
         \"swarm.delegate\" = [\"*/*/echo\", \"*/*/counter\"]\n",
    );
    let ida = agent_id(&a).await;
    // B lets A run echo (with nothing but logs), not counter.
    let b = start(
        &tls,
        &["echo", "counter"],
        &format!(
            "[[swarm.peers]]\nagent_id = \"{ida}\"\nagents = [\"echo\"]\n[swarm.peers.ceiling.grants]\n\"log\" = [\"**\"]\n"
        ),
    );
    let idb = agent_id(&b).await;
    let swarm = create(&a, "across").await;
    assert_eq!(join(&b, &invite_url(&a, &swarm, json!({})).await).await.0, 200);
    converge(&[&a, &b], &swarm, &[ida.clone(), idb.clone()]).await;

    // Within both: the orchestrator on A gets echo's output from B.
    let remote_echo = format!("{swarm}/{idb}/echo");
    let job =
        a.run("orchestrator", json!({ "tasks": [{ "agent": remote_echo, "input": { "from": "A" } }] }), None).await;
    assert_eq!(job["status"], "completed", "{job}\n{}\n{}", a.logs(), b.logs());
    assert_eq!(job["output"]["results"][0]["echo"]["from"], "A", "{job}");
    // On B it ran as an ordinary job of the peer principal.
    let peer_jobs: i64 = b
        .db()
        .query_row(
            "SELECT count(*) FROM jobs WHERE principal = ?1 AND agent LIKE 'echo%' AND status = 'completed'",
            [format!("peer:{ida}")],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(peer_jobs, 1);

    // Outside A's lease (greeter is not granted): denied on A, B never asked.
    let job = a
        .run("orchestrator", json!({ "tasks": [{ "agent": format!("{swarm}/{idb}/greeter"), "input": {} }] }), None)
        .await;
    assert_eq!(job["status"], "failed", "{job}");
    assert!(job["error"]["message"].as_str().unwrap().contains("swarm.delegate"), "{job}");
    let denied_on_a: Vec<(String, String)> = {
        let db = a.db();
        let mut stmt = db
            .prepare("SELECT target, reason FROM audit WHERE scope = 'swarm.delegate' AND decision = 'deny'")
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, Option<String>>(1)?.unwrap_or_default())))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    assert!(denied_on_a.iter().any(|(t, _)| t.ends_with("/greeter")), "{denied_on_a:?}");

    // Allowed by A, outside B's policy for A (counter is not in its agents): denied by B,
    // typed on A, audited on both.
    let job = a
        .run("orchestrator", json!({ "tasks": [{ "agent": format!("{swarm}/{idb}/counter"), "input": {} }] }), None)
        .await;
    assert_eq!(job["status"], "failed", "{job}");
    let message = job["error"]["message"].as_str().unwrap();
    assert!(message.contains("refused by the remote host") && message.contains("may not run 'counter'"), "{job}");
    let denied_on_b: i64 = b
        .db()
        .query_row("SELECT count(*) FROM audit WHERE scope = 'swarm.delegate' AND decision = 'deny' AND target = 'counter' AND principal = ?1", [format!("peer:{ida}")], |r| r.get(0))
        .unwrap();
    assert_eq!(denied_on_b, 1);
    let denied_on_a: i64 = a
        .db()
        .query_row("SELECT count(*) FROM audit WHERE scope = 'swarm.delegate' AND decision = 'deny' AND target LIKE '%/counter'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(denied_on_a, 1);
    let counter_jobs: i64 =
        b.db().query_row("SELECT count(*) FROM jobs WHERE agent LIKE 'counter%'", [], |r| r.get(0)).unwrap();
    assert_eq!(counter_jobs, 0, "nothing ran on B");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wasm_agent_messages_an_agent_on_another_host_and_its_stages_come_back() {
    let tls = tls();
    let a = start(
        &tls,
        &["relay"],
        "[ceiling.grants]\n\"log\" = [\"**\"]\n\"kv.read\" = [\"relay/**\"]\n\"kv.write\" = [\"relay/**\"]\n\
         \"swarm.send\" = [\"*/*/greeter\", \"*/*/echo\"]\n",
    );
    let ida = agent_id(&a).await;
    // B lets A message greeter, which may count in its own kv namespace; not echo.
    let b = start(
        &tls,
        &["greeter", "echo"],
        &format!(
            "[[swarm.peers]]\nagent_id = \"{ida}\"\nagents = [\"greeter\"]\n[swarm.peers.ceiling.grants]\n\"log\" = [\"**\"]\n\
             \"kv.read\" = [\"greeter/**\"]\n\"kv.write\" = [\"greeter/**\"]\n"
        ),
    );
    let idb = agent_id(&b).await;
    let swarm = create(&a, "chatty").await;
    assert_eq!(join(&b, &invite_url(&a, &swarm, json!({})).await).await.0, 200);
    converge(&[&a, &b], &swarm, &[ida.clone(), idb.clone()]).await;

    let job = a
        .run("relay", json!({ "send": { "to": format!("{swarm}/{idb}/greeter"), "payload": { "name": "ada" } } }), None)
        .await;
    assert_eq!(job["status"], "completed", "{job}\n{}", a.logs());
    let id = job["output"]["ids"][0].as_str().unwrap().to_owned();
    // On B it went through the message plane, from A's principal, and was FULFILLED; A sees it.
    let stages = eventually("A hears FULFILLED", || async {
        let (_, view) = a.get(&format!("/v1/swarm/messages/{id}")).await;
        let stages: Vec<String> =
            view["stages"].as_array().unwrap().iter().map(|s| s["stage"].as_str().unwrap().to_owned()).collect();
        stages.contains(&"FULFILLED".to_owned()).then_some(stages)
    })
    .await;
    assert_eq!(stages, ["RECEIVED", "FULFILLED"]);
    let (principal, stage): (String, String) = b
        .db()
        .query_row("SELECT principal, stage FROM messages WHERE idempotency_token = ?1", [&id], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!((principal.as_str(), stage.as_str()), (format!("peer:{ida}").as_str(), "FULFILLED"));
    let out = a.cli(&["swarm", "message", &id]).await;
    assert!(out.stdout.contains("FULFILLED"), "{out:?}");

    // Outside A's lease: denied on A, typed, nothing sent.
    let job = a.run("relay", json!({ "send": { "to": format!("{swarm}/{idb}/counter"), "payload": {} } }), None).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert!(job["error"]["message"].as_str().unwrap().contains("swarm.send"), "{job}");
    // Allowed by A, refused by B (echo is not in A's entry there): the outbox reports it.
    let job = a.run("relay", json!({ "send": { "to": format!("{swarm}/{idb}/echo"), "payload": {} } }), None).await;
    assert_eq!(job["status"], "completed", "{job}");
    let refused_id = job["output"]["ids"][0].as_str().unwrap().to_owned();
    let note = eventually("A's outbox gives up", || async {
        let (_, view) = a.get(&format!("/v1/swarm/messages/{refused_id}")).await;
        view["stages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["stage"] == "FAILED")
            .map(|s| s["note"].as_str().unwrap_or_default().to_owned())
    })
    .await;
    assert!(note.contains("403") && note.contains("may not message 'echo'"), "{note}");
    let on_b: i64 = b
        .db()
        .query_row("SELECT count(*) FROM messages WHERE idempotency_token = ?1", [&refused_id], |r| r.get(0))
        .unwrap();
    assert_eq!(on_b, 0);
}

/// The Python peer (tests/asp-python/peer.py), killed with the test.
struct PythonPeer {
    child: std::process::Child,
    endpoint: String,
    agent_id: String,
    control: reqwest::Client,
}

impl Drop for PythonPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl PythonPeer {
    fn start(tls: &Tls) -> PythonPeer {
        use std::io::BufRead as _;
        let python = crate::harness::repo().join("target/py/bin/python");
        assert!(python.exists(), "no {} — run ./dev test (it installs the Python tools)", python.display());
        let mut child = std::process::Command::new(python)
            .arg(crate::harness::repo().join("tests/asp-python/peer.py"))
            .args(["--port", &free_port().to_string(), "--seed", &"42".repeat(32)])
            .arg("--cert")
            .arg(&tls.cert)
            .arg("--key")
            .arg(&tls.key)
            .arg("--ca")
            .arg(&tls.cert)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let ready: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        std::thread::spawn(move || lines.for_each(drop));
        PythonPeer {
            child,
            endpoint: ready["ready"].as_str().unwrap().to_owned(),
            agent_id: ready["agent_id"].as_str().unwrap().to_owned(),
            control: peer_client(tls),
        }
    }

    async fn call(&self, path: &str, body: Option<Value>) -> Value {
        let base = self.endpoint.trim_end_matches("/swarm");
        let request = match body {
            Some(body) => self.control.post(format!("{base}/control/{path}")).json(&body),
            None => self.control.get(format!("{base}/control/{path}")),
        };
        request.send().await.unwrap().json().await.unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_asp_peer_joins_and_messages_a_corral_host_and_corral_joins_and_messages_it() {
    let tls = tls();
    let corral = start(&tls, &[], "");
    let idc = agent_id(&corral).await;
    let python = PythonPeer::start(&tls);

    // The peer joins corral's swarm with corral's invite, and messages it (0.1.0 signatures,
    // Python's JSON: non-ASCII escaped).
    let swarm = create(&corral, "mixed").await;
    let url = invite_url(&corral, &swarm, json!({ "max_uses": 1 })).await;
    let joined = python.call("join", Some(json!({ "invite": url }))).await;
    assert_eq!(joined["status"], "accepted", "{joined}");
    let (_, view) = corral.get(&format!("/v1/swarms/{swarm}")).await;
    let member =
        view["members"].as_array().unwrap().iter().find(|m| m["agent_id"] == python.agent_id.as_str()).cloned();
    assert_eq!(member.unwrap()["signature_scheme"], "asp-0.1.0", "{view}");
    let content = "héllo ✓ 🐝 \"quoted\" \\ back\nnewline";
    let sent = python.call("send", Some(json!({ "swarm_id": swarm, "recipient": idc, "content": content }))).await;
    assert_eq!(sent["status"], 200, "{sent}");
    let received = inbox(&corral).await;
    assert!(
        received.iter().any(|m| m["sender"] == python.agent_id.as_str() && m["content"] == content),
        "{received:?}"
    );

    // corral answers; the peer verifies corral's 0.1.0 signature (it advertised no other scheme).
    let (status, queued) = corral
        .post(
            &format!("/v1/swarms/{swarm}/messages"),
            &json!({ "recipient": python.agent_id, "content": "hi python ✓" }),
        )
        .await;
    assert_eq!(status, 200, "{queued}");
    eventually("the peer verified corral's message", || async {
        let got = python.call("received", None).await;
        got["received"].as_array().unwrap().iter().any(|m| m["content"] == "hi python ✓").then_some(())
    })
    .await;

    // The reverse: corral joins the peer's swarm (verifying its invite against its /info key).
    let state = python.call("state", None).await;
    let theirs = state["swarm_id"].as_str().unwrap();
    let (status, joined) = join(&corral, state["invite"].as_str().unwrap()).await;
    assert_eq!(status, 200, "{joined}");
    assert_eq!(joined["master"], python.agent_id.as_str());
    let sent = python.call("send", Some(json!({ "swarm_id": theirs, "recipient": idc, "content": "welcome" }))).await;
    assert_eq!(sent["status"], 200, "{sent}");
    let (status, _) = corral
        .post(&format!("/v1/swarms/{theirs}/messages"), &json!({ "recipient": python.agent_id, "content": "thanks" }))
        .await;
    assert_eq!(status, 200);
    eventually("the peer got corral's message in its own swarm", || async {
        let got = python.call("received", None).await;
        got["received"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["content"] == "thanks" && m["swarm_id"] == theirs)
            .then_some(())
    })
    .await;
    // A message the peer signs wrongly is still refused.
    let forged = signed(
        &SigningKey::from_bytes(&[3u8; 32]),
        (python.agent_id.as_str(), python.endpoint.as_str()),
        &swarm,
        &idc,
        "message",
        "x",
        Scheme::Asp010,
    );
    refused(&deliver(&peer_client(&tls), &corral, &forged).await, 401, "INVALID_SIGNATURE");
}

/// An HTTP server on loopback that holds its first request until released, then answers every
/// request `200 slow-ok`. Returns its port, a receiver that fires when the first request
/// arrived, and the releaser.
fn slow_server() -> (u16, std::sync::mpsc::Receiver<()>, std::sync::mpsc::Sender<()>) {
    use std::io::{Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (arrived_tx, arrived) = std::sync::mpsc::channel();
    let (release, released) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let mut first = true;
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            if first {
                first = false;
                let _ = arrived_tx.send(());
                // Hold this one (its host is about to be killed) until released.
                let _ = released.recv();
                continue;
            }
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\nconnection: close\r\n\r\nslow-ok");
        }
    });
    (port, arrived, release)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_job_whose_host_is_killed_mid_run_is_answered_after_its_restart() {
    let tls = tls();
    let (web, arrived, release) = slow_server();
    let a = start(
        &tls,
        &["orchestrator"],
        "[ceiling.grants]\n\"log\" = [\"**\"]\n\"events\" = [\"**\"]\n\"agent.delegate\" = [\"**\"]\n\
         \"swarm.delegate\" = [\"*/*/fetch\"]\n[ceiling.limits]\ndeadline_ms = 60000\n",
    );
    let ida = agent_id(&a).await;
    let b_policy = policy(
        &tls,
        free_port(),
        &format!(
            "[[swarm.peers]]\nagent_id = \"{ida}\"\nagents = [\"fetch\"]\n[swarm.peers.ceiling.grants]\n\"log\" = [\"**\"]\n\
             \"net.fetch\" = [\"http://127.0.0.1:{web}/**\"]\n"
        ),
    );
    let mut b = Host::start_with_policy(&["fetch"], Some(&b_policy));
    let idb = agent_id(&b).await;
    let swarm = create(&a, "resilient").await;
    assert_eq!(join(&b, &invite_url(&a, &swarm, json!({})).await).await.0, 200);
    converge(&[&a, &b], &swarm, &[ida.clone(), idb.clone()]).await;

    // A's orchestrator asks B's fetch for the slow URL; B is killed while its job waits on it.
    let task = json!({ "tasks": [{ "agent": format!("{swarm}/{idb}/fetch"), "input": { "url": format!("http://127.0.0.1:{web}/slow") } }] });
    let (status, job) = a.post("/v1/jobs", &json!({ "agent": "orchestrator", "input": task })).await;
    assert!(status == 200 || status == 202, "{job}");
    let job_id = job["id"].as_str().unwrap().to_owned();
    tokio::task::spawn_blocking(move || arrived.recv_timeout(std::time::Duration::from_secs(30)).unwrap())
        .await
        .unwrap();
    b.kill_9();
    let _ = release.send(());

    // B comes back: its job is recovered and run again, and the request it had accepted is
    // answered — A's job completes with the result, and B ran one job for it, not two.
    b.spawn();
    let done = a.wait_done(&job_id).await;
    assert_eq!(done["status"], "completed", "{done}\n{}", b.logs());
    assert_eq!(done["output"]["results"][0]["body"], "slow-ok", "{done}");
    let jobs_on_b: i64 = b
        .db()
        .query_row("SELECT count(*) FROM jobs WHERE principal = ?1", [format!("peer:{ida}")], |r| r.get(0))
        .unwrap();
    assert_eq!(jobs_on_b, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_configured_certificate_the_endpoint_serves_a_self_signed_one_made_at_first_start() {
    let host = Host::start_with_policy(&[], Some("[swarm]\nlisten = \"127.0.0.1:0\"\n"));
    let endpoint = host.swarm.clone().expect("a swarm endpoint");
    let dir = host.data_dir().join("swarm-tls");
    let cert = std::fs::read(dir.join("cert.pem")).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.join("key.pem")).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the key is private: {mode:o}");
    }
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&cert).unwrap())
        .build()
        .unwrap();
    let health: Value = client.get(format!("{endpoint}/health")).send().await.unwrap().json().await.unwrap();
    assert_eq!(health["status"], "healthy");
    assert_eq!(health["agent_id"], agent_id(&host).await.as_str());
    // Plain HTTP gets nothing from the TLS listener.
    let plain = reqwest::Client::new().get(endpoint.replace("https://", "http://") + "/health").send().await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
}
