//! Operations endpoints: liveness, readiness, metrics, the OpenAPI document.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use harvest_proto::{Health, Readiness};
use serde_json::{Map, Value};

use crate::state::AppState;

/// Liveness: 200 while the process runs.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "the process runs", body = Health)))]
pub async fn healthz() -> axum::Json<Health> {
    axum::Json(Health {
        status: "ok".into(),
    })
}

/// Readiness: 200 when the SQL store (and Redis, if configured) answer; 503 naming what
/// failed, and 503 during shutdown.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "ready to serve", body = Readiness),
        (status = 503, description = "a dependency is down or the node is shutting down", body = Readiness),
    ))]
pub async fn readyz(State(state): State<AppState>) -> Response {
    let mut checks = Map::new();
    let mut ok = true;
    let (sql, redis) = tokio::join!(state.store.ping(), async {
        match &state.redis {
            Some(redis) => Some(redis.ping().await),
            None => None,
        }
    });
    match sql {
        Ok(()) => checks.insert("sql".into(), Value::from("ok")),
        Err(e) => {
            ok = false;
            checks.insert("sql".into(), Value::from(e.to_string()))
        }
    };
    if let Some(redis) = redis {
        match redis {
            Ok(()) => checks.insert("redis".into(), Value::from("ok")),
            Err(e) => {
                ok = false;
                checks.insert("redis".into(), Value::from(format!("unavailable: {e}")))
            }
        };
    }
    let depth = state.payments.journal_depth().await;
    if depth > 0 {
        // Paid orders wait in the journal for SQL: degraded until they are written.
        ok = false;
        checks.insert("journal_depth".into(), Value::from(depth));
    }
    if state.is_shutting_down() {
        ok = false;
        checks.insert("shutdown".into(), Value::from("in progress"));
    }
    let (status, word) = if ok {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
    };
    (
        status,
        axum::Json(Readiness {
            status: word.into(),
            checks,
        }),
    )
        .into_response()
}

/// Prometheus text exposition.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}
