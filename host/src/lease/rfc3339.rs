//! RFC 3339 timestamps for `expires_at` (serde helpers, since the workspace builds `time` without
//! its `serde` feature).

use serde::{Deserialize, Deserializer, Serializer};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// `2026-11-21T10:00:00Z`, for messages. Falls back to `time`'s own format for dates RFC 3339
/// cannot express (years past 9999).
pub(crate) fn display(at: OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap_or_else(|_| at.to_string())
}

pub(crate) fn serialize_option<S: Serializer>(at: &Option<OffsetDateTime>, serializer: S) -> Result<S::Ok, S::Error> {
    match at {
        Some(at) => {
            let text = at.format(&Rfc3339).map_err(serde::ser::Error::custom)?;
            serializer.serialize_some(&text)
        }
        None => serializer.serialize_none(),
    }
}

pub(crate) fn deserialize_option<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<OffsetDateTime>, D::Error> {
    Option::<String>::deserialize(deserializer)?
        .map(|text| {
            OffsetDateTime::parse(&text, &Rfc3339).map_err(|e| {
                serde::de::Error::custom(format!(
                    "expires_at: '{text}' is not an RFC 3339 time such as 2026-11-21T10:00:00Z ({e})"
                ))
            })
        })
        .transpose()
}
