//! The agent manifest, built at compile time.
//!
//! [`export_agent!`](crate::export_agent) stores the agent's metadata as UTF-8 JSON in a custom
//! section named `corral:manifest`, so the host can read an agent's name, version and declared
//! scopes without instantiating it. The JSON is assembled here by `const fn`s, because a
//! `link_section` static must be a constant: [`manifest_len`] computes the size of the array
//! and [`manifest`] fills it, escaping every string as JSON requires (`"`, `\` and control
//! characters; other UTF-8 is copied as is).

// `buf[at]` is only written after checking `at < buf.len()`; slice `get_mut` is not `const`.
#![allow(clippy::indexing_slicing)]

/// Writes one byte at `at` if it fits; returns the next position. With an empty `buf` this
/// only counts.
const fn put(buf: &mut [u8], at: usize, byte: u8) -> usize {
    if at < buf.len() {
        buf[at] = byte;
    }
    at + 1
}

const fn put_raw(buf: &mut [u8], mut at: usize, s: &str) -> usize {
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        at = put(buf, at, bytes[i]);
        i += 1;
    }
    at
}

/// Writes `s` as a JSON string literal, quotes included.
const fn put_json_string(buf: &mut [u8], mut at: usize, s: &str) -> usize {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    at = put(buf, at, b'"');
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'"' || b == b'\\' {
            at = put(buf, at, b'\\');
            at = put(buf, at, b);
        } else if b < 0x20 {
            at = put_raw(buf, at, "\\u00");
            at = put(buf, at, HEX[(b >> 4) as usize]);
            at = put(buf, at, HEX[(b & 0x0f) as usize]);
        } else {
            at = put(buf, at, b);
        }
        i += 1;
    }
    put(buf, at, b'"')
}

/// Writes `,"key":[...]` with the strings of `items`.
const fn put_list(buf: &mut [u8], mut at: usize, key: &str, items: &[&str]) -> usize {
    at = put_raw(buf, at, ",\"");
    at = put_raw(buf, at, key);
    at = put_raw(buf, at, "\":[");
    let mut i = 0;
    while i < items.len() {
        if i > 0 {
            at = put(buf, at, b',');
        }
        at = put_json_string(buf, at, items[i]);
        i += 1;
    }
    put(buf, at, b']')
}

/// What a manifest says, as the macros collect it.
#[derive(Debug, Clone, Copy)]
pub struct Fields<'a> {
    pub name: &'a str,
    pub version: &'a str,
    pub description: &'a str,
    pub scopes: &'a [&'a str],
    pub capabilities: &'a [&'a str],
    pub topics: &'a [&'a str],
}

/// Writes the whole manifest; returns its length. Empty `capabilities` and `topics` are left
/// out, so an agent that uses neither has the same manifest as before they existed.
const fn write(buf: &mut [u8], f: Fields<'_>) -> usize {
    let mut at = put_raw(buf, 0, "{\"name\":");
    at = put_json_string(buf, at, f.name);
    at = put_raw(buf, at, ",\"version\":");
    at = put_json_string(buf, at, f.version);
    at = put_raw(buf, at, ",\"description\":");
    at = put_json_string(buf, at, f.description);
    at = put_list(buf, at, "scopes", f.scopes);
    if !f.capabilities.is_empty() {
        at = put_list(buf, at, "capabilities", f.capabilities);
    }
    if !f.topics.is_empty() {
        at = put_list(buf, at, "topics", f.topics);
    }
    put(buf, at, b'}')
}

/// The length in bytes of the manifest JSON.
pub const fn manifest_len(fields: Fields<'_>) -> usize {
    write(&mut [], fields)
}

/// The manifest JSON; `N` must be [`manifest_len`] of the same fields (checked: a mismatch
/// is a compile error where this is evaluated in a constant).
pub const fn manifest<const N: usize>(fields: Fields<'_>) -> [u8; N] {
    let mut buf = [0u8; N];
    let len = write(&mut buf, fields);
    assert!(len == N, "manifest length mismatch");
    buf
}

/// 1–64 characters of `[a-z0-9-_]`: the same rule the host applies.
pub const fn valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() > 64 {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if !(b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_') {
            return false;
        }
        i += 1;
    }
    true
}

/// `MAJOR.MINOR.PATCH`, each a decimal number, optionally followed by `-pre` and/or `+build`.
pub const fn valid_version(version: &str) -> bool {
    let bytes = version.as_bytes();
    let mut i = 0;
    let mut part = 0;
    while part < 3 {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return false;
        }
        part += 1;
        if part < 3 {
            if i >= bytes.len() || bytes[i] != b'.' {
                return false;
            }
            i += 1;
        }
    }
    // `-pre` then `+build`, each non-empty and printable (the host splits on the first `+`).
    if i < bytes.len() && bytes[i] == b'-' {
        i += 1;
        let start = i;
        while i < bytes.len() && bytes[i] != b'+' {
            if !bytes[i].is_ascii_graphic() {
                return false;
            }
            i += 1;
        }
        if i == start {
            return false;
        }
    }
    if i < bytes.len() && bytes[i] == b'+' {
        i += 1;
        if i == bytes.len() {
            return false;
        }
        while i < bytes.len() {
            if !bytes[i].is_ascii_graphic() {
                return false;
            }
            i += 1;
        }
    }
    i == bytes.len()
}

/// Every scope non-empty, without whitespace or control characters.
pub const fn valid_scopes(scopes: &[&str]) -> bool {
    let mut i = 0;
    while i < scopes.len() {
        let bytes = scopes[i].as_bytes();
        if bytes.is_empty() {
            return false;
        }
        let mut j = 0;
        while j < bytes.len() {
            if bytes[j] <= b' ' || bytes[j] == 0x7f {
                return false;
            }
            j += 1;
        }
        i += 1;
    }
    true
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;

    fn json(name: &str, version: &str, description: &str, scopes: &[&str]) -> serde_json::Value {
        of(Fields { name, version, description, scopes, capabilities: &[], topics: &[] })
    }

    fn of(fields: Fields<'_>) -> serde_json::Value {
        let mut buf = vec![0u8; manifest_len(fields)];
        let len = write(&mut buf, fields);
        assert_eq!(len, buf.len());
        serde_json::from_slice(&buf).expect("manifest is valid JSON")
    }

    #[test]
    fn capabilities_and_topics_appear_only_when_given() {
        let plain = json("a", "1.0.0", "", &["log"]);
        assert!(plain.get("capabilities").is_none() && plain.get("topics").is_none(), "{plain}");
        let full = of(Fields {
            name: "greeter",
            version: "1.0.0",
            description: "",
            scopes: &["log"],
            capabilities: &["greeting"],
            topics: &["greetings", "hello \"world\""],
        });
        assert_eq!(full["capabilities"], serde_json::json!(["greeting"]));
        assert_eq!(full["topics"], serde_json::json!(["greetings", "hello \"world\""]));
    }

    #[test]
    fn manifest_escapes_json_special_characters() {
        let description = "say \"hi\"\\ \n\ttab \u{1} ünï ✓";
        let value = json("echo", "0.1.0", description, &["log", "kv.write:counter/*"]);
        assert_eq!(value["name"], "echo");
        assert_eq!(value["description"], description);
        assert_eq!(value["scopes"], serde_json::json!(["log", "kv.write:counter/*"]));
    }

    #[test]
    fn manifest_with_no_scopes_is_an_empty_list() {
        assert_eq!(json("a", "1.0.0", "", &[])["scopes"], serde_json::json!([]));
    }

    #[test]
    fn names_follow_the_host_rule() {
        assert!(valid_name("echo"));
        assert!(valid_name("my_agent-2"));
        assert!(!valid_name(""));
        assert!(!valid_name("Echo"));
        assert!(!valid_name("a/b"));
        assert!(!valid_name(&"a".repeat(65)));
    }

    #[test]
    fn versions_are_major_minor_patch() {
        assert!(valid_version("0.1.0"));
        assert!(valid_version("10.20.30-rc.1+build.5"));
        assert!(!valid_version("1.0"));
        assert!(!valid_version("1.0.0-"));
        assert!(!valid_version("1..0"));
        assert!(!valid_version("v1.0.0"));
        assert!(!valid_version("1.0.0 beta"));
        assert!(!valid_version("1.0.0-+b"));
        assert!(!valid_version("1.0.0+"));
        assert!(valid_version("1.0.0+b-1"));
    }
}
