//! `corral swarm …`: federation over `/v1/swarms` and `/v1/swarm/…` (operators only). Each
//! command prints a short line or a table, or with `--json` the server's answer as is.

use reqwest::Method;
use serde_json::{Value, json};

use super::SwarmCommand;
use super::client::Client;
use super::commands::{Done, Failure, stderr_line, stdout_line};
use super::render;

fn text(v: &Value, key: &str) -> String {
    match v.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

pub(super) async fn run(client: &Client, action: SwarmCommand, json: bool) -> Result<Done, Failure> {
    let (answer, line) = match action {
        SwarmCommand::Create { name } => {
            let v = client.swarm_call(Method::POST, &["swarms"], &[], Some(&json!({ "name": name }))).await?;
            let line =
                format!("swarm {} created ({}); this host is its master", text(&v, "swarm_id"), text(&v, "name"));
            (v, Some(line))
        }
        SwarmCommand::List => {
            let v = client.swarm_call(Method::GET, &["swarms"], &[], None).await?;
            let swarms = v.get("swarms").and_then(Value::as_array).cloned().unwrap_or_default();
            let rows: Vec<Vec<String>> = swarms
                .iter()
                .map(|s| {
                    let members = s.get("members").and_then(Value::as_array).map_or(0, Vec::len);
                    vec![text(s, "swarm_id"), text(s, "name"), text(s, "master"), members.to_string(), text(s, "muted")]
                })
                .collect();
            let table = if rows.is_empty() {
                "in no swarm".to_owned()
            } else {
                render::table(&["SWARM", "NAME", "MASTER", "MEMBERS", "MUTED"], &rows).trim_end().to_owned()
            };
            (v, Some(table))
        }
        SwarmCommand::Invite { swarm, ttl_ms, max_uses } => {
            let body = json!({ "ttl_ms": ttl_ms, "max_uses": max_uses });
            let v = client.swarm_call(Method::POST, &["swarms", &swarm, "invites"], &[], Some(&body)).await?;
            (v.clone(), Some(text(&v, "url")))
        }
        SwarmCommand::Join { invite } => {
            let v =
                client.swarm_call(Method::POST, &["swarms", "join"], &[], Some(&json!({ "invite": invite }))).await?;
            let members = v.get("members").and_then(Value::as_array).map_or(0, Vec::len);
            let line = format!("joined swarm {} ({}), {members} members", text(&v, "swarm_id"), text(&v, "name"));
            (v, Some(line))
        }
        SwarmCommand::Leave { swarm } => {
            let v = client.swarm_call(Method::POST, &["swarms", &swarm, "leave"], &[], None).await?;
            (v, Some(format!("left swarm {swarm}")))
        }
        SwarmCommand::Kick { swarm, agent_id } => {
            let body = json!({ "agent_id": agent_id });
            let v = client.swarm_call(Method::POST, &["swarms", &swarm, "kick"], &[], Some(&body)).await?;
            (v, Some(format!("{agent_id} removed from {swarm}")))
        }
        SwarmCommand::Transfer { swarm, agent_id } => {
            let body = json!({ "agent_id": agent_id });
            let v = client.swarm_call(Method::POST, &["swarms", &swarm, "transfer"], &[], Some(&body)).await?;
            (v, Some(format!("{agent_id} is now the master of {swarm}")))
        }
        SwarmCommand::Mute { swarm, agent, off } => {
            let body = json!({ "agent_id": agent, "muted": !off });
            let v = client.swarm_call(Method::POST, &["swarms", &swarm, "mute"], &[], Some(&body)).await?;
            let who = agent.unwrap_or_else(|| format!("swarm {swarm}"));
            (v, Some(format!("{who} {}", if off { "unmuted" } else { "muted" })))
        }
        SwarmCommand::Members { swarm } => {
            let v = client.swarm_call(Method::GET, &["swarms", &swarm], &[], None).await?;
            let master = text(&v, "master");
            let members = v.get("members").and_then(Value::as_array).cloned().unwrap_or_default();
            let rows: Vec<Vec<String>> = members
                .iter()
                .map(|m| {
                    let id = text(m, "agent_id");
                    let role = if id == master { "master" } else { "member" };
                    vec![id, role.to_owned(), text(m, "endpoint"), text(m, "signature_scheme"), text(m, "public_key")]
                })
                .collect();
            let table =
                render::table(&["AGENT", "ROLE", "ENDPOINT", "SCHEME", "PUBLIC KEY"], &rows).trim_end().to_owned();
            (v, Some(table))
        }
        SwarmCommand::Send { swarm, recipient, content, kind } => {
            let body = json!({ "recipient": recipient, "content": content, "type": kind });
            let v = client.swarm_call(Method::POST, &["swarms", &swarm, "messages"], &[], Some(&body)).await?;
            (v.clone(), Some(format!("queued {}", text(&v, "message_id"))))
        }
        SwarmCommand::Inbox { swarm, after, muted } => {
            let mut query = vec![("after", after.to_string())];
            if let Some(swarm) = swarm {
                query.push(("swarm", swarm));
            }
            if muted {
                query.push(("muted", "true".into()));
            }
            let v = client.swarm_call(Method::GET, &["swarm", "inbox"], &query, None).await?;
            let messages = v.get("messages").and_then(Value::as_array).cloned().unwrap_or_default();
            if messages.is_empty() && !json {
                stderr_line("no messages");
                return Ok(Done::Success);
            }
            let rows: Vec<Vec<String>> = messages
                .iter()
                .map(|m| vec![text(m, "seq"), text(m, "sender"), text(m, "type"), text(m, "content")])
                .collect();
            (v, Some(render::table(&["SEQ", "FROM", "TYPE", "CONTENT"], &rows).trim_end().to_owned()))
        }
        SwarmCommand::Outbox => {
            let v = client.swarm_call(Method::GET, &["swarm", "outbox"], &[], None).await?;
            let entries = v.get("entries").and_then(Value::as_array).cloned().unwrap_or_default();
            let rows: Vec<Vec<String>> = entries
                .iter()
                .map(|e| {
                    let state = if e.get("dead").and_then(Value::as_bool) == Some(true) { "dead" } else { "pending" };
                    vec![
                        text(e, "message_id"),
                        text(e, "peer"),
                        state.to_owned(),
                        text(e, "attempts"),
                        text(e, "last_error"),
                    ]
                })
                .collect();
            let table = if rows.is_empty() {
                "outbox empty".to_owned()
            } else {
                render::table(&["MESSAGE", "PEER", "STATE", "ATTEMPTS", "LAST ERROR"], &rows).trim_end().to_owned()
            };
            (v, Some(table))
        }
        SwarmCommand::Message { id } => {
            let v = client.swarm_call(Method::GET, &["swarm", "messages", &id], &[], None).await?;
            let stages = v.get("stages").and_then(Value::as_array).cloned().unwrap_or_default();
            let rows: Vec<Vec<String>> =
                stages.iter().map(|s| vec![text(s, "stage"), text(s, "code"), text(s, "note")]).collect();
            let table = if rows.is_empty() {
                "no stage reported yet".to_owned()
            } else {
                render::table(&["STAGE", "CODE", "NOTE"], &rows).trim_end().to_owned()
            };
            (v, Some(table))
        }
    };
    if json {
        stdout_line(&render::pretty(&answer))?;
    } else if let Some(line) = line {
        stdout_line(&line)?;
    }
    Ok(Done::Success)
}
