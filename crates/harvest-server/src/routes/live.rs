//! Live-room HTTP endpoints: the room event log, room stats, moderation; and the
//! snapshot a WebSocket session starts from.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use harvest_hub::RoomChannel;
use harvest_proto::ErrorBody;
use harvest_proto::ws::{self as wire};
use harvest_store::StoreError;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::{Role, User};
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiQuery, safe_uint};
use crate::state::AppState;

/// The snapshot a session that cannot recover starts from.
pub async fn snapshot(
    state: &AppState,
    room: harvest_proto::Room,
    channel: &Arc<RoomChannel>,
) -> Result<wire::RoomSnapshot, ApiError> {
    let (products, pinned) = tokio::try_join!(
        state.store.room_bag(&room.id),
        state.store.pinned_product(&room.id)
    )?;
    let pinned_product = pinned.and_then(|id| products.iter().find(|p| p.id == id).cloned());
    Ok(wire::RoomSnapshot {
        viewers: channel.viewers_total(),
        likes: channel.likes_total(),
        pinned_product,
        products,
        sales: state.flash.room_sales(&room.id).await?,
        r#match: state.contests.room_match(&room.id),
        standings: state.contests.room_standings(&room.id),
        recent_chat: state.live.recent_chat(&room.id),
        room,
    })
}

async fn load_room(state: &AppState, id: &str) -> Result<harvest_proto::Room, ApiError> {
    match state.store.room(id).await {
        Ok(room) => Ok(room),
        Err(StoreError::NotFound) => Err(ApiError::not_found("room")),
        Err(e) => Err(e.into()),
    }
}

/// Query of `GET /api/v1/rooms/{id}/events`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Events with a seq greater than this (default 0).
    #[param(value_type = Option<u64>, minimum = 0)]
    pub after_seq: Option<String>,
    /// Most events returned, 1..=500 (default 50).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 500)]
    pub limit: Option<String>,
}

/// A page of the room event log.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RoomEvents {
    pub epoch: String,
    /// Events in seq order, as the WebSocket sends them.
    #[schema(value_type = Vec<Object>)]
    pub items: Vec<serde_json::Value>,
    /// The room's latest seq, whatever `limit` cut.
    pub last_seq: u64,
}

/// Read the room event log.
#[utoipa::path(get, path = "/api/v1/rooms/{id}/events", tag = "live",
    params(("id" = String, Path, description = "room id"), EventsQuery),
    responses(
        (status = 200, description = "room events after `after_seq`", body = RoomEvents),
        (status = 400, description = "invalid parameter", body = ErrorBody),
        (status = 404, description = "no such room", body = ErrorBody),
    ))]
pub async fn room_events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<EventsQuery>,
) -> Result<axum::Json<RoomEvents>, ApiError> {
    let after: i64 = match query.after_seq.as_deref() {
        None => 0,
        Some(raw) => raw
            .parse::<u64>()
            .ok()
            .and_then(|n| i64::try_from(n).ok())
            .ok_or_else(|| {
                ApiError::field("after_seq", "after_seq must be a non-negative integer")
            })?,
    };
    let limit = crate::extract::Paging::new(query.limit, None)?.limit;
    load_room(&state, &id).await?;
    let channel = state.live.open_room(&id).await?;
    let (epoch, last_seq) = channel.position();
    let records = state.store.room_events(&id, &epoch, after, limit).await?;
    let items = records
        .iter()
        .filter_map(|r| serde_json::from_str(&r.body).ok())
        .collect();
    Ok(axum::Json(RoomEvents {
        epoch,
        items,
        last_seq,
    }))
}

/// Answer of `GET /api/v1/rooms/{id}/stats`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RoomStatsBody {
    pub viewers_now: u64,
    pub viewers_peak: u64,
    pub viewers_unique: u64,
    pub likes: u64,
    pub chat_messages: u64,
    pub orders_paid: u64,
    pub gmv_paid: i64,
    pub buyers_distinct: u64,
    pub refunds: u64,
    pub conversion: f64,
}

/// Room stats (owner, organizer, admin).
#[utoipa::path(get, path = "/api/v1/rooms/{id}/stats", tag = "live",
    params(("id" = String, Path, description = "room id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the room's figures", body = RoomStatsBody),
        (status = 401, description = "no valid token", body = ErrorBody),
        (status = 403, description = "not the owner, an organizer or an admin", body = ErrorBody),
        (status = 404, description = "no such room", body = ErrorBody),
    ))]
pub async fn room_stats(
    State(state): State<AppState>,
    user: User,
    Path(id): Path<String>,
) -> Result<axum::Json<RoomStatsBody>, ApiError> {
    let room = load_room(&state, &id).await?;
    if room.streamer_id != user.id && !user.has(Role::Organizer) {
        return Err(ApiError::forbidden(
            "only the owner, an organizer or an admin may see stats",
        ));
    }
    let s = state.live.room_stats(&id);
    let o = state.store.room_order_stats(&id).await?;
    let buyers_distinct = o.buyers_distinct.max(0) as u64;
    Ok(axum::Json(RoomStatsBody {
        viewers_now: s.viewers_now,
        viewers_peak: s.viewers_peak,
        viewers_unique: s.viewers_unique,
        likes: s.likes,
        chat_messages: s.chat_messages,
        orders_paid: o.orders_paid.max(0) as u64,
        gmv_paid: o.gmv_paid,
        buyers_distinct,
        refunds: o.refunds.max(0) as u64,
        conversion: if s.viewers_unique == 0 {
            0.0
        } else {
            buyers_distinct as f64 / s.viewers_unique as f64
        },
    }))
}

/// Body of a mute.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MuteBody {
    #[schema(min_length = 1)]
    pub user_id: String,
    /// 1..=2,592,000 seconds (30 days).
    #[serde(deserialize_with = "safe_uint")]
    #[schema(minimum = 1, maximum = 2592000)]
    pub duration_s: i64,
}

/// Body of a ban.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BanBody {
    #[schema(min_length = 1)]
    pub user_id: String,
}

async fn moderated_room(
    state: &AppState,
    user: &User,
    id: &str,
) -> Result<harvest_proto::Room, ApiError> {
    let room = load_room(state, id).await?;
    user.require_owner(&room.streamer_id)?;
    Ok(room)
}

/// Mute a user in the room (owner, admin).
#[utoipa::path(post, path = "/api/v1/rooms/{id}/moderation/mutes", tag = "live",
    params(("id" = String, Path, description = "room id")),
    request_body = MuteBody,
    security(("bearer" = [])),
    responses(
        (status = 204, description = "muted"),
        (status = 400, description = "invalid field", body = ErrorBody),
        (status = 401, description = "no valid token", body = ErrorBody),
        (status = 403, description = "not the owner", body = ErrorBody),
        (status = 404, description = "no such room", body = ErrorBody),
        (status = 415, description = "not JSON", body = ErrorBody),
    ))]
pub async fn mute(
    State(state): State<AppState>,
    user: User,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<MuteBody>,
) -> Result<StatusCode, ApiError> {
    moderated_room(&state, &user, &id).await?;
    let target = crate::routes::text("user_id", &body.user_id, 128)?;
    if !(1..=2_592_000).contains(&body.duration_s) {
        return Err(ApiError::field(
            "duration_s",
            "duration_s must be in 1..=2592000",
        ));
    }
    state
        .live
        .mute(&id, &target, harvest_hub::now_ms() + body.duration_s * 1000)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Ban a user from the room (owner, admin): their connections close with 4003 and new
/// ones are refused.
#[utoipa::path(post, path = "/api/v1/rooms/{id}/moderation/bans", tag = "live",
    params(("id" = String, Path, description = "room id")),
    request_body = BanBody,
    security(("bearer" = [])),
    responses(
        (status = 204, description = "banned"),
        (status = 400, description = "invalid field", body = ErrorBody),
        (status = 401, description = "no valid token", body = ErrorBody),
        (status = 403, description = "not the owner", body = ErrorBody),
        (status = 404, description = "no such room", body = ErrorBody),
        (status = 415, description = "not JSON", body = ErrorBody),
    ))]
pub async fn ban(
    State(state): State<AppState>,
    user: User,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<BanBody>,
) -> Result<StatusCode, ApiError> {
    moderated_room(&state, &user, &id).await?;
    let target = crate::routes::text("user_id", &body.user_id, 128)?;
    state.live.ban(&id, &target).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Delete a chat message (owner, admin): the room event `chat.deleted` tells every viewer.
#[utoipa::path(delete, path = "/api/v1/rooms/{id}/chat/{message_id}", tag = "live",
    params(("id" = String, Path, description = "room id"), ("message_id" = String, Path, description = "chat message id")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "deleted"),
        (status = 401, description = "no valid token", body = ErrorBody),
        (status = 403, description = "not the owner", body = ErrorBody),
        (status = 404, description = "no such room", body = ErrorBody),
    ))]
pub async fn delete_chat(
    State(state): State<AppState>,
    user: User,
    Path((id, message_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    moderated_room(&state, &user, &id).await?;
    state.live.forget_chat(&id, &message_id);
    state
        .live
        .publish(&id, wire::ChatDeleted { message_id })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Body of a load-test message.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TestEventBody {
    /// The message, at most 4096 bytes.
    #[schema(max_length = 4096)]
    pub text: String,
}

/// Where a load-test message went in the room's event log.
#[derive(Debug, Serialize, ToSchema)]
pub struct TestEventPublished {
    pub seq: u64,
}

/// Publish a `test.message` room event (admin only; served only when the server runs
/// with `test_publish` on, else 404). For load tests that measure the fan-out alone:
/// the event goes through the hub, the bus and the room event log like every room
/// event, without the SQL writes of a product, sale or order change.
#[utoipa::path(post, path = "/api/v1/admin/rooms/{id}/test-events", tag = "live",
    params(("id" = String, Path, description = "room id")),
    request_body = TestEventBody,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "published", body = TestEventPublished),
        (status = 400, description = "invalid field", body = ErrorBody),
        (status = 401, description = "no valid token", body = ErrorBody),
        (status = 403, description = "not an admin", body = ErrorBody),
        (status = 404, description = "no such room, or the test publish path is off", body = ErrorBody),
        (status = 415, description = "not JSON", body = ErrorBody),
        (status = 503, description = "live delivery unavailable", body = ErrorBody),
    ))]
pub async fn publish_test_event(
    State(state): State<AppState>,
    user: User,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<TestEventBody>,
) -> Result<axum::Json<TestEventPublished>, ApiError> {
    if !state.settings.test_publish {
        return Err(ApiError::new(
            harvest_proto::ErrorCode::NotFound,
            "the test publish path is off (setting test_publish)",
        ));
    }
    if !user.is_admin() {
        return Err(ApiError::forbidden("this needs the admin role"));
    }
    if body.text.len() > 4096 {
        return Err(ApiError::field("text", "text must be at most 4096 bytes"));
    }
    load_room(&state, &id).await?;
    let seq = state
        .live
        .publish(&id, wire::TestMessage { text: body.text })
        .await?;
    Ok(axum::Json(TestEventPublished { seq }))
}
