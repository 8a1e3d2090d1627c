//! HTTP handlers, one module per resource. Each handler carries its OpenAPI
//! description (`#[utoipa::path]`), so `/openapi.json` documents exactly the routes
//! that exist.

pub mod contests;
pub mod live;
pub mod ops;
pub mod orders;
pub mod products;
pub mod rooms;
pub mod sales;

use crate::error::ApiError;

/// Validates a single-line text field: trimmed, non-empty, at most `max` characters,
/// no control characters.
pub(crate) fn text(field: &str, value: &str, max: usize) -> Result<String, ApiError> {
    checked_text(field, value, max, false)
}

/// Like [`text`] but line breaks and tabs are allowed.
pub(crate) fn multiline(field: &str, value: &str, max: usize) -> Result<String, ApiError> {
    checked_text(field, value, max, true)
}

fn checked_text(field: &str, value: &str, max: usize, lines: bool) -> Result<String, ApiError> {
    let value = value.trim();
    if value.is_empty() {
        return Err(ApiError::field(field, format!("{field} must not be empty")));
    }
    if value.chars().count() > max {
        return Err(ApiError::field(
            field,
            format!("{field} is longer than {max} characters"),
        ));
    }
    if value
        .chars()
        .any(|c| c.is_control() && !(lines && matches!(c, '\n' | '\t' | '\r')))
    {
        return Err(ApiError::field(
            field,
            format!("{field} contains control characters"),
        ));
    }
    Ok(value.to_owned())
}

/// Optional text: absent stays absent; present must be valid.
pub(crate) fn opt_text(
    field: &str,
    value: Option<&str>,
    max: usize,
) -> Result<Option<String>, ApiError> {
    value.map(|v| text(field, v, max)).transpose()
}

/// An optional `http(s)://` URL of at most 2,048 characters.
pub(crate) fn opt_url(field: &str, value: Option<&str>) -> Result<Option<String>, ApiError> {
    let Some(value) = value else { return Ok(None) };
    let value = text(field, value, 2048)?;
    match url::Url::parse(&value) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {
            Ok(Some(value))
        }
        _ => Err(ApiError::field(
            field,
            format!("{field} must be an http or https URL"),
        )),
    }
}

/// An ISO 4217-style currency code: three upper-case letters.
pub(crate) fn currency(field: &str, value: Option<&str>) -> Result<String, ApiError> {
    match value {
        None => Ok(harvest_proto::DEFAULT_CURRENCY.to_owned()),
        Some(c) if c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase()) => Ok(c.to_owned()),
        Some(_) => Err(ApiError::field(
            field,
            "currency must be three upper-case letters, e.g. CNY",
        )),
    }
}

/// Deserializes a field that must be present but may be null.
pub(crate) fn required_nullable<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    serde::Deserialize::deserialize(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_rules() {
        assert_eq!(text("title", "  Kiwi 猕猴桃 ", 10).unwrap(), "Kiwi 猕猴桃");
        assert!(text("title", "   ", 10).is_err());
        assert!(text("title", "a\u{0}b", 10).is_err());
        assert!(text("title", "a\nb", 10).is_err());
        assert!(multiline("description", "a\nb", 10).is_ok());
        assert!(text("title", "猕猴桃猕猴桃", 5).is_err());
        assert_eq!(text("title", "猕猴桃猕猴", 5).unwrap().chars().count(), 5);
    }

    #[test]
    fn urls_and_currencies() {
        assert!(
            opt_url("u", Some("https://cdn.example/a.m3u8"))
                .unwrap()
                .is_some()
        );
        assert!(opt_url("u", Some("javascript:alert(1)")).is_err());
        assert!(opt_url("u", Some("ftp://x/y")).is_err());
        assert_eq!(currency("currency", None).unwrap(), "CNY");
        assert!(currency("currency", Some("usd")).is_err());
        assert_eq!(currency("currency", Some("USD")).unwrap(), "USD");
    }
}
