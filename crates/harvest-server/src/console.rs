//! The web console: `GET /` and its static assets under `/console/`, embedded in the
//! binary.
//!
//! The console is plain HTML, CSS and JavaScript modules (`crates/harvest-server/web/`),
//! compiled in with `include_str!`, so a fresh clone serves it with nothing to build.
//! It talks to the server only through the public HTTP and WebSocket API, like any
//! other client. Assets are served with their content type, a strong `ETag` (SHA-256 of
//! the bytes) and `Cache-Control: no-cache`, so browsers revalidate and get `304 Not
//! Modified` while the binary is unchanged.
//!
//! `/console/demo.json` lists one-click demo identities (with their tokens) only when
//! the server runs as `harvest demo` ([`AppState::set_demo_identities`]); under `serve`
//! it answers 404 like any unknown asset.

use std::sync::LazyLock;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::state::AppState;

/// One embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const ASSETS: &[Asset] = &[
    Asset {
        name: "index.html",
        content_type: "text/html; charset=utf-8",
        body: include_str!("../web/index.html"),
    },
    Asset {
        name: "console.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../web/console.css"),
    },
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../web/app.js"),
    },
    Asset {
        name: "api.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../web/api.js"),
    },
    Asset {
        name: "viewer.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../web/viewer.js"),
    },
    Asset {
        name: "streamer.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../web/streamer.js"),
    },
    Asset {
        name: "organizer.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../web/organizer.js"),
    },
    Asset {
        name: "favicon.svg",
        content_type: "image/svg+xml",
        body: include_str!("../web/favicon.svg"),
    },
];

/// The strong ETag of every asset, in `ASSETS` order.
static ETAGS: LazyLock<Vec<HeaderValue>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|a| {
            let digest = Sha256::digest(a.body.as_bytes());
            HeaderValue::from_str(&format!("\"{}\"", &hex::encode(digest)[..32]))
                .expect("a hex ETag is a valid header value")
        })
        .collect()
});

/// The names of every embedded asset (the console's files under `/console/`).
pub fn asset_names() -> impl Iterator<Item = &'static str> {
    ASSETS.iter().map(|a| a.name)
}

fn serve_asset(index: usize, headers: &HeaderMap) -> Response {
    let asset = &ASSETS[index];
    let etag = &ETAGS[index];
    let cache = [
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (header::ETAG, etag.clone()),
    ];
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    if fresh {
        return (StatusCode::NOT_MODIFIED, cache).into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        )],
        cache,
        [(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        )],
        asset.body,
    )
        .into_response()
}

/// The web console: viewer, streamer and organizer pages.
#[utoipa::path(get, path = "/", tag = "operations",
    responses((status = 200, description = "the web console (HTML); its scripts and styles load from `/console/`", content_type = "text/html")))]
pub async fn index(headers: HeaderMap) -> Response {
    serve_asset(0, &headers)
}

/// `GET /console/{file}`: an embedded asset, or the demo identities under `harvest demo`.
pub async fn asset(
    State(state): State<AppState>,
    Path(file): Path<String>,
    headers: HeaderMap,
) -> Response {
    if file == "demo.json" {
        return match state.demo_identities() {
            Some(identities) => (
                [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
                axum::Json(identities.clone()),
            )
                .into_response(),
            None => ApiError::new(
                harvest_proto::ErrorCode::NotFound,
                "no demo identities: the server is not running as harvest demo",
            )
            .into_response(),
        };
    }
    match ASSETS.iter().position(|a| a.name == file) {
        Some(index) => serve_asset(index, &headers),
        None => ApiError::not_found("console asset").into_response(),
    }
}
