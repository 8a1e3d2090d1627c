//! Bearer-token authentication and the role and ownership checks every route uses.
//!
//! Tokens are JWTs signed with HS256 and only HS256: `alg: none`, other algorithms,
//! wrong signatures, expired or not-yet-valid tokens (5 s leeway) and tokens without
//! `sub` or `exp` are refused. Roles are `viewer`, `streamer`, `organizer` and `admin`;
//! unknown roles are ignored; any valid token may act as a viewer and `admin` may do
//! what any role may.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::state::AppState;

/// Clock leeway when checking `exp` and `nbf`.
pub const LEEWAY_S: u64 = 5;

/// A role a token may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Streamer,
    Organizer,
    Admin,
}

impl Role {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "viewer" => Some(Self::Viewer),
            "streamer" => Some(Self::Streamer),
            "organizer" => Some(Self::Organizer),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Streamer => "streamer",
            Self::Organizer => "organizer",
            Self::Admin => "admin",
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The token's `sub`.
    pub id: String,
    /// The token's `name`, or `sub` when absent.
    pub name: String,
    roles: Vec<Role>,
}

impl User {
    pub fn new(id: impl Into<String>, name: Option<String>, roles: Vec<Role>) -> Self {
        let id = id.into();
        Self {
            name: name.unwrap_or_else(|| id.clone()),
            id,
            roles,
        }
    }

    /// Whether the caller may act in `role` (admins may act in every role; everyone is
    /// a viewer).
    pub fn has(&self, role: Role) -> bool {
        role == Role::Viewer || self.roles.contains(&role) || self.roles.contains(&Role::Admin)
    }

    pub fn is_admin(&self) -> bool {
        self.roles.contains(&Role::Admin)
    }

    pub fn roles(&self) -> &[Role] {
        &self.roles
    }

    /// 403 unless the caller may act in `role`.
    pub fn require(&self, role: Role) -> Result<(), ApiError> {
        if self.has(role) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "this needs the {} role",
                role.as_str()
            )))
        }
    }

    /// 403 unless the caller owns the resource (or is an admin).
    pub fn require_owner(&self, owner_id: &str) -> Result<(), ApiError> {
        if self.id == owner_id || self.is_admin() {
            Ok(())
        } else {
            Err(ApiError::forbidden("only the owner may do this"))
        }
    }
}

/// Claims as minted and accepted.
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default)]
    roles: Vec<serde_json::Value>,
}

/// Signs and verifies tokens with one HS256 secret.
#[derive(Clone)]
pub struct Authenticator {
    inner: Arc<Keys>,
}

struct Keys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Authenticator { .. }")
    }
}

/// Why a token was refused (the message sent with 401).
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token")]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(String),
}

impl From<AuthError> for ApiError {
    fn from(err: AuthError) -> Self {
        ApiError::unauthorized(err.to_string())
    }
}

impl Authenticator {
    /// Keys for an HS256 secret; fails on an empty secret.
    pub fn new(secret: &[u8]) -> Result<Self, jsonwebtoken::errors::Error> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.leeway = LEEWAY_S;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Ok(Self {
            inner: Arc::new(Keys {
                encoding: EncodingKey::from_secret(secret)?,
                decoding: DecodingKey::from_secret(secret)?,
                validation,
            }),
        })
    }

    /// Mints a token for `sub` valid for `ttl`.
    pub fn mint(&self, sub: &str, name: Option<&str>, roles: &[Role], ttl: Duration) -> String {
        let now = jsonwebtoken::get_current_timestamp();
        let claims = Claims {
            sub: sub.to_owned(),
            exp: now + ttl.as_secs(),
            nbf: None,
            iat: Some(now),
            name: name.map(str::to_owned),
            roles: roles
                .iter()
                .map(|r| serde_json::Value::String(r.as_str().to_owned()))
                .collect(),
        };
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &self.inner.encoding,
        )
        .expect("HS256 signing with an in-memory key cannot fail")
    }

    /// Verifies a token and returns its user.
    pub fn verify(&self, token: &str) -> Result<User, AuthError> {
        let data =
            jsonwebtoken::decode::<Claims>(token, &self.inner.decoding, &self.inner.validation)
                .map_err(|e| AuthError::Invalid(e.to_string()))?;
        let claims = data.claims;
        if claims.sub.trim().is_empty() {
            return Err(AuthError::Invalid("sub is empty".into()));
        }
        if claims.sub.len() > 256 || claims.sub.chars().any(char::is_control) {
            return Err(AuthError::Invalid(
                "sub must be at most 256 bytes without control characters".into(),
            ));
        }
        let mut roles = Vec::new();
        for role in claims
            .roles
            .iter()
            .filter_map(|v| v.as_str())
            .filter_map(Role::parse)
        {
            if !roles.contains(&role) {
                roles.push(role);
            }
        }
        let name = claims
            .name
            .map(|n| n.chars().filter(|c| !c.is_control()).collect::<String>())
            .filter(|n| !n.trim().is_empty());
        Ok(User::new(claims.sub, name, roles))
    }

    /// The user of an `Authorization: Bearer` header, if the request has one.
    pub fn from_headers(&self, headers: &axum::http::HeaderMap) -> Result<Option<User>, AuthError> {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Ok(None);
        };
        let value = value
            .to_str()
            .map_err(|_| AuthError::Invalid("authorization header is not ASCII".into()))?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or_else(|| AuthError::Invalid("expected `Authorization: Bearer <token>`".into()))?;
        self.verify(token.trim()).map(Some)
    }
}

impl FromRequestParts<AppState> for User {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        state
            .auth
            .from_headers(&parts.headers)?
            .ok_or_else(|| AuthError::Missing.into())
    }
}

/// The caller if a token was sent (and valid), or anonymous. An invalid token is still
/// a 401: a client that sends one wants to know.
#[derive(Debug, Clone)]
pub struct MaybeUser(pub Option<User>);

impl FromRequestParts<AppState> for MaybeUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        Ok(Self(state.auth.from_headers(&parts.headers)?))
    }
}

/// Parses a duration such as `90s`, `15m`, `24h`, `7d` or a number of seconds.
pub fn parse_ttl(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("invalid duration {s:?}"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("invalid duration unit in {s:?}: use s, m, h or d")),
    };
    if secs == 0 {
        return Err("duration must be positive".into());
    }
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;

    fn auth() -> Authenticator {
        Authenticator::new(b"test-secret").unwrap()
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn sign(header: serde_json::Value, claims: serde_json::Value, secret: &[u8]) -> String {
        use hmac::{Hmac, KeyInit, Mac};
        let msg = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        );
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
        mac.update(msg.as_bytes());
        format!("{msg}.{}", B64.encode(mac.finalize().into_bytes()))
    }

    fn hs256() -> serde_json::Value {
        serde_json::json!({"alg": "HS256", "typ": "JWT"})
    }

    #[test]
    fn minted_tokens_verify() {
        let a = auth();
        let t = a.mint(
            "u1",
            Some("Zhang San"),
            &[Role::Streamer],
            Duration::from_secs(60),
        );
        let u = a.verify(&t).unwrap();
        assert_eq!(u.id, "u1");
        assert_eq!(u.name, "Zhang San");
        assert!(u.has(Role::Streamer) && u.has(Role::Viewer) && !u.has(Role::Organizer));
        let t = a.mint("u2", None, &[Role::Admin], Duration::from_secs(60));
        let u = a.verify(&t).unwrap();
        assert_eq!(u.name, "u2");
        assert!(u.has(Role::Organizer) && u.has(Role::Streamer));
    }

    #[test]
    fn hand_signed_tokens_match_the_library() {
        let t = sign(
            hs256(),
            serde_json::json!({"sub": "x", "exp": now() + 60, "roles": ["organizer", "wizard", 7]}),
            b"test-secret",
        );
        let u = auth().verify(&t).unwrap();
        assert_eq!(u.roles(), &[Role::Organizer], "unknown roles are ignored");
    }

    #[test]
    fn refused_tokens() {
        let a = auth();
        let secret = b"test-secret".as_slice();
        let cases: Vec<(&str, String)> = vec![
            (
                "expired",
                sign(
                    hs256(),
                    serde_json::json!({"sub": "x", "exp": now() - 60}),
                    secret,
                ),
            ),
            (
                "not yet valid",
                sign(
                    hs256(),
                    serde_json::json!({"sub": "x", "exp": now() + 600, "nbf": now() + 60}),
                    secret,
                ),
            ),
            (
                "wrong secret",
                sign(
                    hs256(),
                    serde_json::json!({"sub": "x", "exp": now() + 60}),
                    b"other",
                ),
            ),
            (
                "missing sub",
                sign(hs256(), serde_json::json!({"exp": now() + 60}), secret),
            ),
            (
                "empty sub",
                sign(
                    hs256(),
                    serde_json::json!({"sub": " ", "exp": now() + 60}),
                    secret,
                ),
            ),
            (
                "NUL in sub",
                sign(
                    hs256(),
                    serde_json::json!({"sub": "a\u{0}b", "exp": now() + 60}),
                    secret,
                ),
            ),
            (
                "missing exp",
                sign(hs256(), serde_json::json!({"sub": "x"}), secret),
            ),
            (
                "roles not a list",
                sign(
                    hs256(),
                    serde_json::json!({"sub": "x", "exp": now() + 60, "roles": "admin"}),
                    secret,
                ),
            ),
            (
                "HS512",
                sign(
                    serde_json::json!({"alg": "HS512"}),
                    serde_json::json!({"sub": "x", "exp": now() + 60}),
                    secret,
                ),
            ),
            (
                "alg none",
                format!(
                    "{}.{}.",
                    B64.encode(r#"{"alg":"none"}"#),
                    B64.encode(format!(r#"{{"sub":"x","exp":{}}}"#, now() + 60))
                ),
            ),
            ("garbage", "not.a.token".into()),
            ("empty", String::new()),
        ];
        for (what, token) in cases {
            assert!(a.verify(&token).is_err(), "{what} was accepted");
        }
        // Within the leeway an expired token is still accepted.
        let t = sign(
            hs256(),
            serde_json::json!({"sub": "x", "exp": now() - 2}),
            secret,
        );
        assert!(a.verify(&t).is_ok());
    }

    #[test]
    fn ttls_parse() {
        assert_eq!(parse_ttl("24h").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse_ttl("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_ttl("15m").unwrap(), Duration::from_secs(900));
        assert!(parse_ttl("0s").is_err());
        assert!(parse_ttl("1y").is_err());
        assert!(parse_ttl("h").is_err());
    }
}
