//! Wiring: the router with its middleware, the startup of every component, and the
//! ordered shutdown.

use axum::serve::ListenerExt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use harvest_store::{Store, StoreOptions};
use tokio::net::TcpListener;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Authenticator;
use crate::config::Settings;
use crate::error::{ApiError, code_for_status};
use crate::metrics::Metrics;
use crate::openapi::ApiDoc;
use crate::redis_check::RedisCheck;
use crate::routes::{contests, live, ops, orders, products, rooms, sales};
use crate::state::AppState;

/// Connects and migrates the store, prepares auth and the Redis check.
pub async fn build_state(settings: Settings) -> anyhow::Result<AppState> {
    use anyhow::Context;
    // The recorder first: the components describe their series when they start.
    let metrics = Metrics::global();
    let secret = settings.jwt_secret()?;
    let store = Store::connect(
        settings.database_url.expose(),
        StoreOptions {
            max_connections: settings.sql_max_connections.max(1),
            timeout: Duration::from_millis(settings.sql_timeout_ms.max(1)),
        },
    )
    .await
    .with_context(|| format!("cannot open the database {:?}", settings.database_url))?;
    store
        .migrate()
        .await
        .context("cannot migrate the database")?;
    let redis = settings
        .redis_url
        .as_ref()
        .map(|url| {
            RedisCheck::new(
                url.expose(),
                Duration::from_millis(settings.redis_timeout_ms.max(1)),
            )
        })
        .transpose()
        .context("invalid redis_url")?;
    let live = crate::live::Live::start(&settings, store.clone())
        .context("cannot start the live rooms")?;
    live.spawn_presence();
    let flash = crate::flash::FlashSales::start(&settings, store.clone(), live.clone())
        .await
        .context("cannot start the flash-sale engine")?;
    let contests = crate::contests::Contests::start(
        store.clone(),
        live.clone(),
        settings.redis_url.is_some(),
        &settings.node_id,
    )
    .await
    .context("cannot start the contests")?;
    let payments = crate::payments::Payments::start(
        &settings,
        store.clone(),
        flash.clone(),
        live.clone(),
        contests.clone(),
    )
    .await
    .context("cannot start the payment service")?;
    spawn_event_retention(store.clone(), settings.event_retention_days);
    Ok(AppState::new(
        Arc::new(settings),
        store,
        Authenticator::new(secret.expose().as_bytes()).context("invalid jwt_secret")?,
        redis,
        metrics,
        live,
        flash,
        payments,
        contests,
    ))
}

/// Prunes room events older than the retention, hourly.
fn spawn_event_retention(store: Store, days: u64) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(3600));
        loop {
            tick.tick().await;
            let horizon = harvest_hub::now_ms() - (days as i64) * 86_400_000;
            match store.prune_room_events(horizon).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(pruned = n, "pruned old room events"),
                Err(e) => tracing::warn!(error = %e, "pruning room events failed"),
            }
        }
    });
}

/// The OpenAPI document and the router of every endpoint, with its middleware.
pub fn router(state: AppState) -> Router {
    let (api_router, openapi) = api_router().split_for_parts();
    let openapi_json: Arc<str> = openapi
        .to_json()
        .expect("the OpenAPI document serialises")
        .into();
    let body_limit = usize::try_from(state.settings.request_body_limit_bytes).unwrap_or(usize::MAX);
    let timeout = state.request_timeout();
    api_router
        .route(
            "/openapi.json",
            axum::routing::get(move || {
                let json = openapi_json.clone();
                async move {
                    (
                        [(header::CONTENT_TYPE, "application/json")],
                        json.to_string(),
                    )
                }
            }),
        )
        .route("/console/{file}", axum::routing::get(crate::console::asset))
        .fallback(|| async {
            ApiError::new(harvest_proto::ErrorCode::NotFound, "no such endpoint")
        })
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(CatchPanicLayer::custom(|_| {
            tracing::error!("handler panicked");
            ApiError::internal().into_response()
        }))
        .layer(middleware::from_fn_with_state(timeout, edge))
        .layer(TraceLayer::new_for_http())
        .layer(middleware::from_fn(crate::metrics::track))
        .with_state(state)
}

/// Every documented route.
pub fn api_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(ops::healthz))
        .routes(routes!(ops::readyz))
        .routes(routes!(ops::metrics))
        .routes(routes!(crate::console::index))
        .routes(routes!(products::create_product, products::list_products))
        .routes(routes!(products::get_product))
        .routes(routes!(rooms::create_room, rooms::list_rooms))
        .routes(routes!(rooms::get_room))
        .routes(routes!(rooms::start_room))
        .routes(routes!(rooms::end_room))
        .routes(routes!(rooms::add_room_product))
        .routes(routes!(rooms::remove_room_product))
        .routes(routes!(rooms::pin_product))
        .routes(routes!(sales::create_sale))
        .routes(routes!(sales::get_sale))
        .routes(routes!(sales::end_sale))
        .routes(routes!(sales::allocations))
        .routes(routes!(sales::reserve))
        .routes(routes!(sales::get_hold, sales::release_hold))
        .routes(routes!(orders::checkout))
        .routes(routes!(orders::webhook))
        .routes(routes!(orders::list_orders))
        .routes(routes!(orders::get_order))
        .routes(routes!(orders::refund))
        .routes(routes!(orders::room_orders))
        .routes(routes!(contests::create_contest))
        .routes(routes!(contests::get_contest))
        .routes(routes!(contests::create_match))
        .routes(routes!(contests::get_match))
        .routes(routes!(contests::put_judge_scores))
        .routes(routes!(contests::get_standings))
        .routes(routes!(contests::settle))
        .routes(routes!(contests::get_audit))
        .routes(routes!(live::room_events))
        .routes(routes!(live::room_stats))
        .routes(routes!(live::mute))
        .routes(routes!(live::ban))
        .routes(routes!(live::delete_chat))
        .routes(routes!(live::publish_test_event))
        .routes(routes!(crate::live::ws::ws_room))
}

/// The OpenAPI document alone.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api_router().into_openapi()
}

/// The edge of every request: a deadline, and a JSON error body for every failure
/// produced outside the handlers (routing, rejections, limits, panics).
async fn edge(State(timeout): State<Duration>, req: Request, next: Next) -> Response {
    // No id, filter or text the API knows can hold a NUL character.
    let uri = req.uri();
    if uri.path().contains("%00") {
        return ApiError::new(
            harvest_proto::ErrorCode::BadRequest,
            "the path must not contain NUL characters",
        )
        .into_response();
    }
    if let Some(query) = uri.query().filter(|q| q.contains("%00")) {
        let field = form_urlencoded::parse(query.as_bytes())
            .find(|(k, v)| k.contains('\0') || v.contains('\0'))
            .map(|(k, _)| k.into_owned())
            .unwrap_or_default();
        return ApiError::field(&field, format!("{field} must not contain NUL characters"))
            .into_response();
    }
    let response = match tokio::time::timeout(timeout, next.run(req)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!("request timed out");
            let mut e = ApiError::new(harvest_proto::ErrorCode::Unavailable, "request timed out");
            e.retry_after = Some(1);
            return e.into_response();
        }
    };
    ensure_json_error(response).await
}

async fn ensure_json_error(response: Response) -> Response {
    let status = response.status();
    if status.as_u16() < 400 {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return response;
    }
    let code = code_for_status(status);
    let retry_after = response.headers().get(header::RETRY_AFTER).cloned();
    let allow = response.headers().get(header::ALLOW).cloned();
    let body = axum::body::to_bytes(response.into_body(), 4096)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&body).trim().to_owned();
    let message = if status.is_server_error() || text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("error")
            .to_ascii_lowercase()
    } else {
        text
    };
    let mut out = ApiError::new(code, message).into_response();
    if status == StatusCode::UNPROCESSABLE_ENTITY {
        *out.status_mut() = StatusCode::BAD_REQUEST;
    }
    if let Some(v) = retry_after {
        out.headers_mut().insert(header::RETRY_AFTER, v);
    }
    if let Some(v) = allow {
        out.headers_mut().insert(header::ALLOW, v);
    }
    out
}

/// Serves until `shutdown` resolves, then shuts down in order: readiness answers 503,
/// after `shutdown_delay_ms` the listener closes, in-flight requests get up to
/// `shutdown_grace_s` to finish, and the store's connections close.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let app = router(state.clone());
    let delay = Duration::from_millis(state.settings.shutdown_delay_ms);
    let grace = Duration::from_secs(state.settings.shutdown_grace_s);
    let draining = Arc::new(tokio::sync::Notify::new());
    let signal = {
        let state = state.clone();
        let draining = draining.clone();
        async move {
            shutdown.await;
            state.begin_shutdown();
            tracing::info!("shutdown requested: readiness is off");
            tokio::time::sleep(delay).await;
            // WebSocket clients reconnect elsewhere with `since`.
            state.live.close();
            tracing::info!("no longer accepting connections; draining");
            draining.notify_one();
        }
    };
    // Events go out as soon as they are written: no Nagle delay behind a client's
    // delayed ACK.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    let server = axum::serve(listener, app).with_graceful_shutdown(signal);
    let mut server = tokio::spawn(async move { server.await });
    tokio::select! {
        result = &mut server => result??,
        () = async { draining.notified().await; tokio::time::sleep(grace).await } => {
            tracing::warn!(grace_s = grace.as_secs(), "in-flight requests did not finish in time");
            server.abort();
        }
    }
    if !state.flash.stop(Duration::from_secs(1)).await {
        tracing::warn!("hold records not yet in SQL at shutdown");
    }
    if !state.live.flush(Duration::from_secs(1)).await {
        tracing::warn!("room events not yet in SQL at shutdown");
    }
    // Sessions were told to close when draining began; what is left is dropped.
    state.live.sessions.shutdown();
    state.store.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
