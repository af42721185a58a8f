//! `corral secret set|list|rm`: the operator's secrets, over `/v1/secrets`. The value is read
//! from stdin or a file, never from an argument (arguments end up in shell history and in
//! every process listing), and no command prints it.

use std::io::Read as _;

use serde_json::{Value, json};

use super::SecretCommand;
use super::client::Client;
use super::commands::{Done, Failure, stderr_line, stdout_line};
use super::render;

pub(super) async fn run(client: &Client, action: SecretCommand, json: bool) -> Result<Done, Failure> {
    match action {
        SecretCommand::Set { name, allow, bearer: _, basic, header, agents, principals, value_file } => {
            let value = read_value(value_file.as_deref())?;
            let inject = match (basic, header) {
                (_, Some(h)) => json!({ "header": h }),
                (true, None) => json!("basic"),
                (false, None) => json!("bearer"),
            };
            let body =
                json!({ "value": value, "allow": allow, "inject": inject, "agents": agents, "principals": principals });
            let view = client.set_secret(&name, &body).await?;
            if json {
                stdout_line(&render::pretty(&view))?;
            } else {
                stdout_line(&format!(
                    "secret {name} set (value not shown); destinations: {}",
                    text_list(&view, "allow")
                ))?;
            }
            Ok(Done::Success)
        }
        SecretCommand::List => {
            let raw = client.secrets().await?;
            if json {
                stdout_line(&render::pretty(&raw))?;
                return Ok(Done::Success);
            }
            let secrets = raw.get("secrets").and_then(Value::as_array).cloned().unwrap_or_default();
            if secrets.is_empty() {
                stderr_line("no secrets set");
                return Ok(Done::Success);
            }
            let rows: Vec<Vec<String>> = secrets
                .iter()
                .map(|s| {
                    vec![
                        s.get("name").and_then(Value::as_str).unwrap_or_default().to_owned(),
                        injection(s.get("inject")),
                        text_list(s, "allow"),
                        or_any(text_list(s, "agents")),
                        or_any(text_list(s, "principals")),
                        s.get("rotated_at").and_then(Value::as_str).unwrap_or_default().to_owned(),
                    ]
                })
                .collect();
            stdout_line(
                render::table(&["NAME", "INJECT", "DESTINATIONS", "AGENTS", "PRINCIPALS", "SET"], &rows).trim_end(),
            )?;
            Ok(Done::Success)
        }
        SecretCommand::Rm { name } => {
            client.remove_secret(&name).await?;
            if !json {
                stdout_line(&format!("secret {name} removed"))?;
            }
            Ok(Done::Success)
        }
    }
}

/// The value from `file`, else stdin; one trailing newline (what `echo` and editors add) is dropped.
fn read_value(file: Option<&std::path::Path>) -> Result<String, Failure> {
    let mut value = match file {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| Failure::Usage(format!("cannot read the value file '{}': {e}", path.display())))?,
        None => {
            if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                stderr_line("reading the secret's value from stdin (end with Ctrl-D)");
            }
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| Failure::Usage(format!("cannot read the value from stdin: {e}")))?;
            text
        }
    };
    if value.ends_with('\n') {
        value.pop();
        if value.ends_with('\r') {
            value.pop();
        }
    }
    if value.is_empty() {
        return Err(Failure::Usage(
            "the value is empty: pipe it in (`corral secret set NAME ... < file`) or use --value-file".into(),
        ));
    }
    Ok(value)
}

fn text_list(v: &Value, key: &str) -> String {
    let items = v.get(key).and_then(Value::as_array).cloned().unwrap_or_default();
    items.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", ")
}

fn or_any(s: String) -> String {
    if s.is_empty() { "any".to_owned() } else { s }
}

fn injection(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Object(m)) => {
            m.get("header").and_then(Value::as_str).map_or_else(String::new, |h| format!("header {h}"))
        }
        _ => String::new(),
    }
}
