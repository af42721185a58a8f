//! Figures and how they are shown: one JSON line on stdout per figure as soon as it is
//! measured, and a markdown table of all of them (with targets) at the end. Problems (failed
//! requests, jobs that did not complete, a group that aborted) are shouted on stderr as they
//! happen, listed under the table, and make the bench exit non-zero.

use std::io::Write;

/// One measured number.
#[derive(Debug, Clone)]
pub struct Figure {
    pub name: String,
    pub value: f64,
    pub unit: &'static str,
    /// What `value` is compared with (the native server, the state before, the cold case).
    pub baseline: Option<f64>,
    /// The goal, as shown in the table (`≤ 200`, `ratio ≥ 0.30`).
    pub target: Option<String>,
    /// Whether the goal is met; `None` without a goal.
    pub met: Option<bool>,
    /// A ratio that is not `value / baseline` (e.g. after/before when value is after − before).
    pub ratio_override: Option<f64>,
}

impl Figure {
    pub fn new(name: &str, value: f64, unit: &'static str) -> Self {
        Self { name: name.to_string(), value, unit, baseline: None, target: None, met: None, ratio_override: None }
    }

    pub fn baseline(mut self, baseline: f64) -> Self {
        self.baseline = Some(baseline);
        self
    }

    /// Reports `ratio` instead of `value / baseline`.
    pub fn with_ratio(mut self, ratio: f64) -> Self {
        self.ratio_override = Some(ratio);
        self
    }

    /// `value / baseline` (or the explicit ratio), when there is a usable one.
    pub fn ratio(&self) -> Option<f64> {
        if let Some(r) = self.ratio_override {
            return Some(r).filter(|r| r.is_finite());
        }
        self.baseline.filter(|b| *b != 0.0 && b.is_finite()).map(|b| self.value / b).filter(|r| r.is_finite())
    }

    /// Target: `value ≤ limit`.
    pub fn at_most(mut self, limit: f64) -> Self {
        self.target = Some(format!("≤ {}", bound(limit)));
        self.met = Some(self.value <= limit);
        self
    }

    /// Target: `value ≥ limit`.
    pub fn at_least(mut self, limit: f64) -> Self {
        self.target = Some(format!("≥ {}", bound(limit)));
        self.met = Some(self.value >= limit);
        self
    }

    /// Target: `value < limit`.
    pub fn below(mut self, limit: f64) -> Self {
        self.target = Some(format!("< {}", bound(limit)));
        self.met = Some(self.value < limit);
        self
    }

    /// Target: `value / baseline ≥ min`.
    pub fn ratio_at_least(mut self, min: f64) -> Self {
        self.target = Some(format!("ratio ≥ {min:.2}"));
        self.met = Some(self.ratio().is_some_and(|r| r >= min));
        self
    }

    pub fn ratio_at_most(mut self, max: f64) -> Self {
        self.target = Some(format!("ratio ≤ {max:.2}"));
        self.met = Some(self.ratio().is_some_and(|r| r <= max));
        self
    }

    /// A target shown but not judged (e.g. it applies only to the full-size run).
    pub fn target_note(mut self, note: &str) -> Self {
        self.target = Some(note.to_string());
        self.met = None;
        self
    }

    /// The figure's JSON line, keys in a fixed order (non-finite numbers become `null`).
    pub fn json_line(&self) -> String {
        let number = |v: Option<f64>| serde_json::to_string(&v.filter(|v| v.is_finite())).unwrap_or_default();
        format!(
            r#"{{"figure": {}, "value": {}, "unit": {}, "baseline": {}, "ratio": {}}}"#,
            serde_json::Value::from(self.name.as_str()),
            number(Some(self.value)),
            serde_json::Value::from(self.unit),
            number(self.baseline),
            number(self.ratio()),
        )
    }
}

/// Everything measured so far, and what went wrong.
#[derive(Debug, Default)]
pub struct Report {
    figures: Vec<Figure>,
    problems: Vec<String>,
    timings: Vec<(String, f64)>,
}

impl Report {
    /// Records a figure and prints its JSON line.
    pub fn push(&mut self, figure: Figure) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", figure.json_line());
        let _ = out.flush();
        self.figures.push(figure);
    }

    /// Records a problem and says it loudly.
    pub fn problem(&mut self, what: String) {
        eprintln!("\n!!!!!!!! BENCH PROBLEM: {what}\n");
        self.problems.push(what);
    }

    pub fn problems(&self) -> &[String] {
        &self.problems
    }

    pub fn timing(&mut self, group: &str, secs: f64) {
        self.timings.push((group.to_string(), secs));
    }

    /// The closing markdown table (stdout), then timings and problems (stderr).
    pub fn print_table(&self) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "\n| figure | value | unit | baseline | ratio | target | met? |");
        let _ = writeln!(out, "|---|---:|---|---:|---:|---|---|");
        for f in &self.figures {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} |",
                f.name,
                num(f.value),
                f.unit,
                f.baseline.map(num).unwrap_or_else(|| "—".into()),
                f.ratio().map(|r| format!("{r:.3}")).unwrap_or_else(|| "—".into()),
                f.target.as_deref().unwrap_or("—"),
                match f.met {
                    Some(true) => "yes",
                    Some(false) => "**NO**",
                    None => "—",
                }
            );
        }
        let _ = out.flush();
        eprintln!("\ntime per group:");
        for (group, secs) in &self.timings {
            eprintln!("  {group:<16} {secs:>7.1} s");
        }
        if self.problems.is_empty() {
            eprintln!("\nno problems: every request succeeded and every job completed");
        } else {
            eprintln!("\n{} PROBLEM(S) — the figures above may be wrong:", self.problems.len());
            for p in &self.problems {
                eprintln!("  - {p}");
            }
        }
    }
}

/// A target's bound: `200`, `0.3`.
fn bound(v: f64) -> String {
    if v.fract() == 0.0 { format!("{v:.0}") } else { format!("{v}") }
}

/// A number with as many decimals as its size deserves.
pub fn num(v: f64) -> String {
    let a = v.abs();
    if !v.is_finite() {
        "n/a".into()
    } else if a >= 1000.0 || a == 0.0 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}
