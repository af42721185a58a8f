//! Pattern templates in the operator's ceiling: `{agent}` and `{principal}`.
//!
//! The built-in ceiling gives every agent its own kv namespace with `kv.write = ["{agent}/**"]`
//! rather than one global space where any agent reads and overwrites every other's state. A
//! template is expanded when a lease is computed — to the job's agent name and principal,
//! escaped so the value is always literal text — and is never matched as written: a ceiling
//! pattern that still names `{agent}` where there is no agent (a principal's own send check)
//! is dropped, which only narrows. Only ceilings may use templates (they come from the
//! operator); in a manifest or request `{agent}` is just text. A literal brace in a ceiling
//! pattern is written `\{`; any other `{name}` is refused when the policy loads.

/// What the templates of one lease expand to.
#[derive(Debug, Clone, Copy)]
pub struct TemplateValues<'a> {
    /// The job's agent, or `None` outside any agent (then `{agent}` patterns are dropped).
    pub agent: Option<&'a str>,
    pub principal: &'a str,
}

const AGENT: &str = "{agent}";
const PRINCIPAL: &str = "{principal}";

/// Whether `source` uses a template; `Err` names an unknown one.
pub fn uses_templates(source: &str) -> Result<bool, String> {
    let mut used = false;
    let mut rest = source;
    while let Some(c) = rest.chars().next() {
        if c == '\\' {
            rest = rest.get(1..).unwrap_or_default();
            rest = rest.get(rest.chars().next().map_or(0, char::len_utf8)..).unwrap_or_default();
            continue;
        }
        if c == '{' {
            if rest.starts_with(AGENT) || rest.starts_with(PRINCIPAL) {
                used = true;
            } else {
                return Err(format!(
                    "pattern '{source}': unknown template (use {AGENT} or {PRINCIPAL}, or \\{{ for a literal brace)"
                ));
            }
        }
        rest = rest.get(c.len_utf8()..).unwrap_or_default();
    }
    Ok(used)
}

/// `source` with its templates replaced by the escaped values; `None` if it names `{agent}`
/// and there is none.
pub fn expand(source: &str, values: TemplateValues<'_>) -> Option<String> {
    let mut out = String::with_capacity(source.len() + 16);
    let mut rest = source;
    while let Some(c) = rest.chars().next() {
        if c == '\\' {
            out.push(c);
            rest = rest.get(1..).unwrap_or_default();
            if let Some(escaped) = rest.chars().next() {
                out.push(escaped);
                rest = rest.get(escaped.len_utf8()..).unwrap_or_default();
            }
            continue;
        }
        if let Some(after) = rest.strip_prefix(AGENT) {
            push_literal(&mut out, values.agent?);
            rest = after;
            continue;
        }
        if let Some(after) = rest.strip_prefix(PRINCIPAL) {
            push_literal(&mut out, values.principal);
            rest = after;
            continue;
        }
        out.push(c);
        rest = rest.get(c.len_utf8()..).unwrap_or_default();
    }
    Some(out)
}

/// Appends `value` so the glob reads it as literal text.
fn push_literal(out: &mut String, value: &str) {
    for c in value.chars() {
        if matches!(c, '*' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::lease::Pattern;

    const COUNTER: TemplateValues<'static> = TemplateValues { agent: Some("counter"), principal: "alice" };

    #[test]
    fn templates_expand_to_literal_values_and_escapes_stay_literal() {
        assert_eq!(expand("{agent}/**", COUNTER).unwrap(), "counter/**");
        assert_eq!(expand("shared/{principal}/*", COUNTER).unwrap(), "shared/alice/*");
        assert_eq!(expand(r"\{agent}/x", COUNTER).unwrap(), r"\{agent}/x");
        let hostile = TemplateValues { agent: Some("a"), principal: r"**\" };
        let expanded = expand("{principal}/k", hostile).unwrap();
        let pattern = Pattern::parse(&expanded).unwrap();
        assert!(pattern.matches(r"**\/k"), "the value is literal text");
        assert!(!pattern.matches("anything/k"), "a principal named ** is not a wildcard");
    }

    #[test]
    fn an_agent_template_without_an_agent_expands_to_nothing() {
        let none = TemplateValues { agent: None, principal: "alice" };
        assert_eq!(expand("{agent}/**", none), None);
        assert_eq!(expand("{principal}/**", none).unwrap(), "alice/**");
    }

    #[test]
    fn unknown_templates_are_refused_and_plain_patterns_use_none() {
        assert_eq!(uses_templates("{agent}/**"), Ok(true));
        assert_eq!(uses_templates("counter/*"), Ok(false));
        assert_eq!(uses_templates(r"\{x}"), Ok(false));
        assert!(uses_templates("{agnet}/**").unwrap_err().contains("unknown template"));
    }
}
