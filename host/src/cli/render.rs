//! How the client commands look to a person: event lines, tables, the progress bar.
//!
//! Everything here writes to a `Write` it is handed, never to the process's stdout directly, so
//! it can be tested on a `Vec<u8>`. Colour and the progress bar appear only when stdout is a
//! terminal (and `NO_COLOR` is unset); piped output is plain lines, one per event, stable enough
//! for `grep`. Machine-readable output is `--json`, not this module.

use std::io::{self, Write};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;

use super::client::{Agent, ErrorInfo, Event, EventBody, Job, JobStatus};

/// What the output device can do.
#[derive(Debug, Clone, Copy, Default)]
pub struct Style {
    /// ANSI colours (stdout is a terminal and `NO_COLOR` is unset).
    pub color: bool,
    /// An animated progress bar for `progress` events (stdout is a terminal).
    pub progress_bar: bool,
}

impl Style {
    /// Plain text: what pipes, files and tests get.
    pub const PLAIN: Style = Style { color: false, progress_bar: false };

    /// The style for stdout as it is now.
    pub fn detect() -> Self {
        use std::io::IsTerminal as _;
        let tty = io::stdout().is_terminal();
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Style { color: tty && !no_color, progress_bar: tty }
    }

    fn paint(self, code: &str, text: &str) -> String {
        if self.color { format!("\x1b[{code}m{text}\x1b[0m") } else { text.to_owned() }
    }
}

const RED_BOLD: &str = "1;31";
const RED: &str = "31";
const GREEN: &str = "32";
const YELLOW: &str = "33";
const DIM: &str = "2";

/// Prints a job's events as they arrive, one line each, with `chunk` text streamed inline.
pub struct EventPrinter<W: Write> {
    out: W,
    style: Style,
    bar: Option<ProgressBar>,
    /// Under a progress bar: chunk text not yet ended by a newline.
    open_chunk: String,
    /// Without a bar: the last chunk written did not end its line.
    mid_line: bool,
}

impl<W: Write> std::fmt::Debug for EventPrinter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventPrinter").field("style", &self.style).field("bar", &self.bar.is_some()).finish()
    }
}

impl<W: Write> EventPrinter<W> {
    pub fn new(out: W, style: Style) -> Self {
        Self { out, style, bar: None, open_chunk: String::new(), mid_line: false }
    }

    /// Prints one event.
    pub fn event(&mut self, event: &Event) -> io::Result<()> {
        let body = event.body();
        if let EventBody::Chunk { data } = &body {
            return self.chunk(data);
        }
        self.end_chunk()?;
        if let EventBody::Progress { done, total, message } = &body
            && self.style.progress_bar
        {
            self.update_bar(*done, *total, message.as_deref());
            return Ok(());
        }
        if let EventBody::State { status, .. } = &body
            && status.is_terminal()
            && let Some(bar) = self.bar.take()
        {
            bar.finish_and_clear();
        }
        let line = event_line(event, &body, self.style);
        self.line(&line)
    }

    /// Ends any open chunk line and removes the progress bar; call once the stream is over.
    pub fn finish(&mut self) -> io::Result<()> {
        self.end_chunk()?;
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        self.out.flush()
    }

    /// Hands back the writer (tests read what was printed).
    #[cfg(test)]
    pub fn into_inner(self) -> W {
        self.out
    }

    fn line(&mut self, line: &str) -> io::Result<()> {
        let out = &mut self.out;
        let mut write = move || {
            writeln!(out, "{line}")?;
            out.flush()
        };
        match &self.bar {
            Some(bar) => bar.suspend(write),
            None => write(),
        }
    }

    /// Chunk text streams straight to the output; under a progress bar, whole lines only, since
    /// the bar redraws over a half-written line.
    fn chunk(&mut self, data: &str) -> io::Result<()> {
        if self.bar.is_none() {
            self.out.write_all(data.as_bytes())?;
            self.out.flush()?;
            if !data.is_empty() {
                self.mid_line = !data.ends_with('\n');
            }
            return Ok(());
        }
        self.open_chunk.push_str(data);
        while let Some(end) = self.open_chunk.find('\n') {
            let line: String = self.open_chunk.drain(..=end).collect();
            self.line(line.trim_end_matches(['\r', '\n']))?;
        }
        Ok(())
    }

    /// Ends a half-written chunk line so the next event starts on its own line.
    fn end_chunk(&mut self) -> io::Result<()> {
        if std::mem::take(&mut self.mid_line) {
            writeln!(self.out)?;
            self.out.flush()?;
        }
        if !self.open_chunk.is_empty() {
            let pending = std::mem::take(&mut self.open_chunk);
            self.line(&pending)?;
        }
        Ok(())
    }

    fn update_bar(&mut self, done: u64, total: Option<u64>, message: Option<&str>) {
        let bar = self.bar.get_or_insert_with(|| {
            let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::stdout());
            let template = if total.is_some() {
                "{spinner} [{bar:30}] {pos}/{len} {wide_msg}"
            } else {
                "{spinner} {pos} {wide_msg}"
            };
            if let Ok(style) = ProgressStyle::with_template(template) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        if let Some(total) = total {
            bar.set_length(total);
        }
        bar.set_position(done);
        bar.set_message(message.unwrap_or_default().to_owned());
    }
}

/// One event as a line of text, without the newline.
pub fn event_line(event: &Event, body: &EventBody, style: Style) -> String {
    match body {
        EventBody::State { status, error, .. } => {
            let word = match status {
                JobStatus::Completed => style.paint(GREEN, status.as_str()),
                JobStatus::Failed | JobStatus::TimedOut => style.paint(RED, status.as_str()),
                JobStatus::Cancelled => style.paint(YELLOW, status.as_str()),
                _ => status.as_str().to_owned(),
            };
            match error {
                Some(e) => format!("[state] {word}: {}", error_text(e)),
                None => format!("[state] {word}"),
            }
        }
        EventBody::Log { level, message } => {
            let tag = format!("[{level}]");
            let tag = match level.as_str() {
                "error" => style.paint(RED, &tag),
                "warn" | "warning" => style.paint(YELLOW, &tag),
                "debug" | "trace" => style.paint(DIM, &tag),
                _ => tag,
            };
            format!("{tag} {message}")
        }
        EventBody::Progress { done, total, message } => {
            let count = match total {
                Some(total) => format!("{done}/{total}"),
                None => done.to_string(),
            };
            match message {
                Some(m) => format!("[progress] {count} {m}"),
                None => format!("[progress] {count}"),
            }
        }
        EventBody::Chunk { data } => data.trim_end_matches('\n').to_owned(),
        EventBody::Capability { scope, target, allowed: false, reason } => {
            let line = match reason {
                Some(r) => format!("denied {scope} {target}: {r}"),
                None => format!("denied {scope} {target}"),
            };
            style.paint(RED_BOLD, &line)
        }
        EventBody::Capability { scope, target, allowed: true, .. } => {
            style.paint(DIM, &format!("allowed {scope} {target}"))
        }
        EventBody::Delegated { child_id, agent } => {
            format!("[delegated] {agent} as job {child_id}")
        }
        EventBody::Other => format!("[{}] {}", event.kind, compact(&event.data)),
    }
}

/// `message (code)`, the one way errors read everywhere.
pub fn error_text(e: &ErrorInfo) -> String {
    format!("{} ({})", e.message, e.code)
}

/// What a finished-but-unsuccessful job says on stderr.
pub fn job_failure_line(job_id: &str, status: JobStatus, error: Option<&ErrorInfo>) -> String {
    let what = match status {
        JobStatus::Cancelled => "was cancelled",
        JobStatus::TimedOut => "timed out",
        _ => "failed",
    };
    match error {
        Some(e) => format!("error: job {job_id} {what}: {}", error_text(e)),
        None => format!("error: job {job_id} {what}"),
    }
}

pub fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

pub fn compact(value: &Value) -> String {
    value.to_string()
}

/// Left-aligned columns separated by two spaces; the last column is not padded.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let header: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    let mut text = String::new();
    for row in std::iter::once(&header).chain(rows) {
        let last = row.len().saturating_sub(1);
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(&widths).enumerate() {
            if i == last {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  "));
            }
        }
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

pub fn agents_table(agents: &[Agent]) -> String {
    let rows: Vec<Vec<String>> = agents
        .iter()
        .map(|a| {
            let latest = a.latest.clone().unwrap_or_else(|| "-".to_owned());
            let versions: Vec<&str> = a.versions.iter().map(|v| v.version.as_str()).collect();
            // The scopes the latest version asks for; older versions may differ.
            let scopes = a
                .versions
                .iter()
                .find(|v| Some(&v.version) == a.latest.as_ref())
                .or_else(|| a.versions.last())
                .map(|v| v.scopes.join(","))
                .unwrap_or_default();
            vec![
                a.name.clone(),
                latest,
                versions.join(","),
                if scopes.is_empty() { "-".to_owned() } else { scopes },
                a.description.clone(),
            ]
        })
        .collect();
    table(&["NAME", "LATEST", "VERSIONS", "SCOPES", "DESCRIPTION"], &rows)
}

pub fn jobs_table(jobs: &[Job]) -> String {
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|j| {
            vec![
                j.id.clone(),
                j.agent_ref(),
                j.status.to_string(),
                j.created_at.clone().unwrap_or_else(|| "-".to_owned()),
            ]
        })
        .collect();
    table(&["ID", "AGENT", "STATUS", "CREATED"], &rows)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ev(seq: u64, kind: &str, data: Value) -> Event {
        Event { seq, kind: kind.to_owned(), at: "2025-01-01T00:00:00Z".to_owned(), data }
    }

    fn printed(events: &[Event]) -> String {
        let mut p = EventPrinter::new(Vec::new(), Style::PLAIN);
        for e in events {
            p.event(e).unwrap();
        }
        p.finish().unwrap();
        String::from_utf8(p.into_inner()).unwrap()
    }

    #[test]
    fn plain_event_lines_name_level_decision_and_state() {
        let text = printed(&[
            ev(1, "state", json!({"status": "running"})),
            ev(2, "log", json!({"level": "info", "message": "hello"})),
            ev(
                3,
                "capability",
                json!({"scope": "kv.write", "target": "counter/x", "decision": "deny", "reason": "no grant"}),
            ),
            ev(4, "capability", json!({"scope": "log", "target": "*", "decision": "allow"})),
            ev(5, "progress", json!({"done": 1, "total": 3, "message": "step"})),
            ev(6, "delegated", json!({"child_id": "c1", "agent": "fetch"})),
            ev(7, "state", json!({"status": "failed", "error": {"code": "trap", "message": "boom"}})),
        ]);
        assert_eq!(
            text,
            "[state] running\n[info] hello\ndenied kv.write counter/x: no grant\nallowed log *\n\
             [progress] 1/3 step\n[delegated] fetch as job c1\n[state] failed: boom (trap)\n"
        );
    }

    #[test]
    fn chunks_stream_inline_and_the_next_line_starts_fresh() {
        let text = printed(&[
            ev(1, "chunk", json!({"data": "Hel"})),
            ev(2, "chunk", json!({"data": "lo"})),
            ev(3, "log", json!({"level": "info", "message": "after"})),
            ev(4, "chunk", json!({"data": "line\n"})),
            ev(5, "state", json!({"status": "completed"})),
        ]);
        assert_eq!(text, "Hello\n[info] after\nline\n[state] completed\n");
    }

    #[test]
    fn unknown_kinds_print_their_data_instead_of_failing() {
        let text = printed(&[ev(1, "telemetry", json!({"cpu": 3}))]);
        assert_eq!(text, "[telemetry] {\"cpu\":3}\n");
    }

    #[test]
    fn colour_highlights_denials_only_when_asked() {
        let deny = ev(1, "capability", json!({"scope": "kv.write", "target": "k", "decision": "deny"}));
        let styled = event_line(&deny, &deny.body(), Style { color: true, progress_bar: false });
        assert_eq!(styled, "\x1b[1;31mdenied kv.write k\x1b[0m");
    }

    #[test]
    fn table_pads_all_but_the_last_column() {
        let t = table(&["ID", "AGENT"], &[vec!["a".into(), "echo".into()], vec!["long-id".into(), "x".into()]]);
        assert_eq!(t, "ID       AGENT\na        echo\nlong-id  x\n");
    }
}
