//! Request extractors that answer every rejection with the API's JSON error body and
//! name the offending field (`details.field`, nested as `a.b[1].c`).

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header;
use axum::http::request::Parts;
use bytes::Bytes;
use harvest_proto::{ErrorCode, MAX_SAFE_INT};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

use crate::error::ApiError;

/// A JSON body: requires `Content-Type: application/json`, respects the body limit,
/// rejects unknown fields (the target types use `deny_unknown_fields`).
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json_content_type(req.headers().get(header::CONTENT_TYPE)) {
            return Err(ApiError::new(
                ErrorCode::UnsupportedMediaType,
                "expected Content-Type: application/json",
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(ErrorCode::PayloadTooLarge, "request body is too large")
            } else {
                ApiError::new(ErrorCode::BadRequest, "could not read the request body")
            }
        })?;
        reject_nul(&bytes)?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Refuses a JSON document that holds a NUL character in any string: no text the API
/// stores may contain one (PostgreSQL cannot store it). A NUL can only appear escaped
/// (`\u0000`), so a cheap scan finds candidates and a walk names the field.
fn reject_nul(bytes: &[u8]) -> Result<(), ApiError> {
    if !bytes.windows(6).any(|w| w == b"\\u0000") {
        return Ok(());
    }
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return Ok(()); // malformed: the parser reports it
    };
    match nul_path(&value, String::new()) {
        Some(path) => {
            let mut e = ApiError::new(
                ErrorCode::BadRequest,
                "text must not contain NUL characters",
            );
            if !path.is_empty() {
                e = e.detail("field", path);
            }
            Err(e)
        }
        None => Ok(()),
    }
}

fn nul_path(value: &serde_json::Value, path: String) -> Option<String> {
    match value {
        serde_json::Value::String(s) if s.contains('\0') => Some(path),
        serde_json::Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| nul_path(v, format!("{path}[{i}]"))),
        serde_json::Value::Object(map) => map.iter().find_map(|(k, v)| {
            if k.contains('\0') {
                return Some(path.clone());
            }
            let p = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            nul_path(v, p)
        }),
        _ => None,
    }
}

fn is_json_content_type(value: Option<&axum::http::HeaderValue>) -> bool {
    let Some(value) = value.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let mime = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

/// Parses a JSON document into `T`, mapping serde's errors to 400 answers that name
/// the field.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data => data_error(&path, &inner.to_string()),
            _ => ApiError::new(ErrorCode::BadRequest, format!("malformed JSON: {inner}")),
        }
    })?;
    de.end()
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("malformed JSON: {e}")))?;
    Ok(value)
}

/// Builds the 400 of a well-formed document with a wrong value: serde reports unknown
/// and missing fields at their parent's path, so the field's own name is appended.
fn data_error(path: &str, message: &str) -> ApiError {
    let message = strip_position(message);
    let named = ["unknown field `", "missing field `"]
        .iter()
        .find_map(|prefix| message.strip_prefix(prefix))
        .and_then(|rest| rest.split('`').next());
    let field = match (path, named) {
        ("." | "", Some(name)) => name.to_owned(),
        // An unknown field is already the last segment of the path.
        (path, Some(name)) if path == name || path.ends_with(&format!(".{name}")) => {
            path.to_owned()
        }
        (parent, Some(name)) => format!("{parent}.{name}"),
        (".", None) | ("", None) => String::new(),
        (path, None) => path.to_owned(),
    };
    let mut error = ApiError::new(ErrorCode::BadRequest, message.to_owned());
    if !field.is_empty() {
        error = error.detail("field", field);
    }
    error
}

fn strip_position(message: &str) -> &str {
    match message.rfind(" at line ") {
        Some(i) => &message[..i],
        None => message,
    }
}

/// Query parameters: unknown parameters and bad values answer 400 naming the parameter.
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(de)
            .map(ApiQuery)
            .map_err(|err| {
                let path = err.path().to_string();
                data_error(&path, &err.into_inner().to_string())
            })
    }
}

/// Deserializes an integer in `0..=2^53−1`, the range every JSON client represents.
pub fn safe_uint<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    let number = serde_json::Number::deserialize(d)?;
    match number.as_i64() {
        Some(n) if (0..=MAX_SAFE_INT).contains(&n) => Ok(n),
        _ if number.is_f64() => Err(serde::de::Error::custom(format!(
            "expected an integer in 0..={MAX_SAFE_INT}, got {number}"
        ))),
        _ => Err(serde::de::Error::custom(format!(
            "integer out of range: expected 0..={MAX_SAFE_INT}"
        ))),
    }
}

/// Deserializes an integer in `−(2^53−1)..=2^53−1`, for fields whose own range check
/// answers a domain code (a negative quantity is `invalid_quantity`, not malformed).
pub fn safe_int<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    let number = serde_json::Number::deserialize(d)?;
    match number.as_i64() {
        Some(n) if (-MAX_SAFE_INT..=MAX_SAFE_INT).contains(&n) => Ok(n),
        _ if number.is_f64() => Err(serde::de::Error::custom(format!(
            "expected an integer, got {number}"
        ))),
        _ => Err(serde::de::Error::custom(format!(
            "integer out of range: expected -{MAX_SAFE_INT}..={MAX_SAFE_INT}"
        ))),
    }
}

/// The `Idempotency-Key` header: 1–128 printable ASCII characters. Absent: 400
/// `missing_idempotency_key`; malformed: 400 `bad_request` naming the header.
pub fn idempotency_key(headers: &axum::http::HeaderMap) -> Result<String, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Err(ApiError::new(
            ErrorCode::MissingIdempotencyKey,
            "this request needs an Idempotency-Key header",
        ));
    };
    let bytes = value.as_bytes();
    if bytes.is_empty() || bytes.len() > 128 || !bytes.iter().all(|b| (0x20..0x7f).contains(b)) {
        return Err(ApiError::field(
            "Idempotency-Key",
            "Idempotency-Key must be 1 to 128 printable ASCII characters",
        ));
    }
    Ok(String::from_utf8_lossy(bytes).into_owned())
}

/// A `limit`/`cursor` pair of a list endpoint, validated.
#[derive(Debug, Clone)]
pub struct Paging {
    pub limit: u32,
    pub cursor: Option<String>,
}

/// Default and largest page sizes.
pub const DEFAULT_LIMIT: u32 = 50;
pub const MAX_LIMIT: u32 = 500;

impl Paging {
    pub fn new(limit: Option<String>, cursor: Option<String>) -> Result<Self, ApiError> {
        let limit = match limit {
            None => DEFAULT_LIMIT,
            Some(raw) => match raw.parse::<u32>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
                _ => {
                    return Err(ApiError::field(
                        "limit",
                        format!("limit must be an integer in 1..={MAX_LIMIT}"),
                    ));
                }
            },
        };
        let cursor = match cursor {
            None => None,
            Some(c) if c.is_empty() => None,
            Some(c) => Some(decode_cursor(&c)?),
        };
        Ok(Self { limit, cursor })
    }

    pub fn request(&self) -> harvest_store::PageRequest {
        harvest_store::PageRequest {
            after: self.cursor.clone(),
            limit: self.limit,
        }
    }
}

/// Cursors are the id of the last item seen, base64url-encoded so clients treat them
/// as opaque.
pub fn encode_cursor(id: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id)
}

fn decode_cursor(cursor: &str) -> Result<String, ApiError> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .filter(|id| uuid_like(id))
        .ok_or_else(|| ApiError::field("cursor", "invalid cursor"))
}

/// A cursor over positions (1, 2, ...): opaque to clients like the id cursors.
pub fn encode_position_cursor(position: u64) -> String {
    encode_cursor(&format!("p{position}"))
}

/// The position a [`encode_position_cursor`] cursor stands for; 400 naming `cursor`
/// when it is not one.
pub fn decode_position_cursor(cursor: &str) -> Result<u64, ApiError> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.strip_prefix('p').and_then(|n| n.parse::<u64>().ok()))
        .ok_or_else(|| ApiError::field("cursor", "invalid cursor"))
}

fn uuid_like(s: &str) -> bool {
    s.len() == 36
        && s.chars().enumerate().all(|(i, c)| {
            if [8, 13, 18, 23].contains(&i) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        name: String,
        inner: Vec<Inner>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        #[serde(deserialize_with = "safe_uint")]
        weight: i64,
    }

    fn field_of(json: &str) -> (String, Option<String>) {
        let err = parse_json::<Outer>(json.as_bytes()).unwrap_err();
        (
            err.code.as_str().to_owned(),
            err.details
                .get("field")
                .and_then(|v| v.as_str())
                .map(str::to_owned),
        )
    }

    #[test]
    fn errors_name_the_field_path() {
        assert_eq!(
            field_of(r#"{"name":"a","inner":[{"weight":1},{"weight":-1}]}"#),
            ("bad_request".into(), Some("inner[1].weight".into()))
        );
        assert_eq!(
            field_of(r#"{"name":"a","inner":[{"weight":1,"extra":2}]}"#),
            ("bad_request".into(), Some("inner[0].extra".into()))
        );
        assert_eq!(
            field_of(r#"{"inner":[]}"#),
            ("bad_request".into(), Some("name".into()))
        );
        assert_eq!(
            field_of(r#"{"name":"a","inner":[],"zzz":1}"#),
            ("bad_request".into(), Some("zzz".into()))
        );
        assert_eq!(field_of(r#"{"name":5,"inner":[]}"#).1, Some("name".into()));
        assert_eq!(
            field_of(r#"{"name":"a","inner":[{"weight":9007199254740992}]}"#).1,
            Some("inner[0].weight".into())
        );
        assert_eq!(
            field_of(r#"{"name":"a","inner":[{"weight":1e400}]}"#).0,
            "bad_request"
        );
    }

    #[test]
    fn malformed_json_has_no_field() {
        for body in [
            "{",
            "",
            "nul",
            "{\"name\":\"a\",\"inner\":[]} trailing",
            "\u{0}",
        ] {
            let (code, field) = field_of(body);
            assert_eq!(code, "bad_request", "{body:?}");
            assert_eq!(field, None, "{body:?}");
        }
    }

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let id = "0192f3c4-1d2e-7abc-8def-0123456789ab";
        let paging = Paging::new(None, Some(encode_cursor(id))).unwrap();
        assert_eq!(paging.cursor.as_deref(), Some(id));
        assert_eq!(paging.limit, DEFAULT_LIMIT);
        for bad in ["!!!", "bm90LWEtdXVpZA", "%00"] {
            let err = Paging::new(None, Some(bad.into())).unwrap_err();
            assert_eq!(err.details["field"], "cursor");
        }
        for bad in ["0", "501", "-1", "ten"] {
            let err = Paging::new(Some(bad.into()), None).unwrap_err();
            assert_eq!(err.details["field"], "limit");
        }
    }

    #[test]
    fn nul_characters_are_refused_with_their_field() {
        let err = reject_nul(br#"{"a":{"b":["x","y\u0000"]}}"#).unwrap_err();
        assert_eq!(err.details["field"], "a.b[1]");
        // An escaped backslash followed by `u0000` is plain text, not a NUL.
        assert!(reject_nul(br#"{"a":"\\u0000 is text"}"#).is_ok());
        assert!(reject_nul(br#"{"a":"fine"}"#).is_ok());
    }

    #[test]
    fn json_content_types() {
        let ok =
            |v: &str| is_json_content_type(Some(&axum::http::HeaderValue::from_str(v).unwrap()));
        assert!(ok("application/json"));
        assert!(ok("application/json; charset=utf-8"));
        assert!(ok("Application/JSON"));
        assert!(ok("application/merge-patch+json"));
        assert!(!ok("text/plain"));
        assert!(!is_json_content_type(None));
    }
}
