//! Rooms: lifecycle, product bag and pin.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use harvest_proto::{
    ErrorBody, Pinned, ProductIds, Room, RoomDetail, RoomList, RoomLive, RoomStatus,
};
use harvest_store::{NewRoom, RoomFilter, StoreError};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use crate::auth::{MaybeUser, Role, User};
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiQuery, Paging, encode_cursor};
use crate::routes::{multiline, opt_url, required_nullable, text};
use crate::state::AppState;

/// Body of `POST /api/v1/rooms`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRoom {
    /// 1–200 characters.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]*[^\s\u0000-\u001f\u007f-\u009f][^\u0000-\u001f\u007f-\u009f]*$"
    )]
    pub title: String,
    /// Up to 2,000 characters; line breaks allowed.
    #[schema(
        min_length = 1,
        max_length = 2000,
        pattern = r"^[^\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f]*[^\s\u0000-\u001f\u007f-\u009f][^\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f]*$"
    )]
    pub description: Option<String>,
    /// When the stream is announced to start (RFC 3339).
    pub scheduled_start: Option<DateTime<Utc>>,
    /// Where players fetch the video (e.g. an HLS address); an http(s) URL.
    #[schema(max_length = 2048, pattern = r"^https?://[^\s/?#]+[^\s]*$")]
    pub playback_url: Option<String>,
}

/// Query of `GET /api/v1/rooms`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RoomQuery {
    /// Only rooms in this status.
    #[param(value_type = Option<RoomStatus>)]
    pub status: Option<String>,
    /// Only rooms of this streamer.
    pub streamer: Option<String>,
    /// Page size, 1..=500 (default 50).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 500)]
    pub limit: Option<String>,
    /// `next_cursor` of the previous page.
    #[param(pattern = r"^[A-Za-z0-9_-]*$")]
    pub cursor: Option<String>,
}

/// Body of `POST /api/v1/rooms/{id}/products`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddProduct {
    pub product_id: String,
}

/// Body of `POST /api/v1/rooms/{id}/pin`: a product id to pin, or null to unpin.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PinProduct {
    #[serde(deserialize_with = "required_nullable")]
    #[schema(required = true)]
    pub product_id: Option<String>,
}

/// Publishes a room event after a change that already happened; a failure to open
/// the room's log is logged, not answered (the change stands).
async fn announce(state: &AppState, room_id: &str, data: impl Into<harvest_proto::ws::EventData>) {
    if let Err(e) = state.live.publish(room_id, data).await {
        tracing::warn!(room_id, error = %e, "could not publish a room event");
    }
}

/// The room, or 404 naming it.
async fn load_room(state: &AppState, id: &str) -> Result<Room, ApiError> {
    match state.store.room(id).await {
        Ok(room) => Ok(room),
        Err(StoreError::NotFound) => Err(ApiError::not_found("room")),
        Err(e) => Err(e.into()),
    }
}

/// The room if the caller may change it: 404 when it does not exist, 403 when it is
/// someone else's.
async fn owned_room(state: &AppState, user: &User, id: &str) -> Result<Room, ApiError> {
    let room = load_room(state, id).await?;
    user.require_owner(&room.streamer_id)?;
    Ok(room)
}

/// Create a room (streamer); it starts `scheduled`.
#[utoipa::path(post, path = "/api/v1/rooms", tag = "rooms",
    request_body = CreateRoom,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "created", body = Room),
        (status = 400, description = "invalid field", body = ErrorBody),
        (status = 401, description = "no valid token", body = ErrorBody),
        (status = 403, description = "not a streamer", body = ErrorBody),
        (status = 413, description = "body too large", body = ErrorBody),
        (status = 415, description = "not JSON", body = ErrorBody),
    ))]
pub async fn create_room(
    State(state): State<AppState>,
    user: User,
    ApiJson(body): ApiJson<CreateRoom>,
) -> Result<(StatusCode, axum::Json<Room>), ApiError> {
    user.require(Role::Streamer)?;
    let new = NewRoom {
        streamer_id: user.id.clone(),
        title: text("title", &body.title, 200)?,
        description: body
            .description
            .as_deref()
            .map(|d| multiline("description", d, 2000))
            .transpose()?,
        scheduled_start: body.scheduled_start,
        playback_url: opt_url("playback_url", body.playback_url.as_deref())?,
    };
    let room = state.store.create_room(new).await?;
    Ok((StatusCode::CREATED, axum::Json(room)))
}

/// List rooms, oldest first.
#[utoipa::path(get, path = "/api/v1/rooms", tag = "rooms",
    params(RoomQuery),
    responses(
        (status = 200, description = "a page of rooms", body = RoomList),
        (status = 400, description = "invalid parameter", body = ErrorBody),
    ))]
pub async fn list_rooms(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<RoomQuery>,
) -> Result<axum::Json<RoomList>, ApiError> {
    let paging = Paging::new(query.limit, query.cursor)?;
    let status =
        match query.status.as_deref() {
            None => None,
            Some(s) => Some(RoomStatus::parse(s).ok_or_else(|| {
                ApiError::field("status", "status must be scheduled, live or ended")
            })?),
        };
    let filter = RoomFilter {
        status,
        streamer_id: query.streamer.filter(|s| !s.is_empty()),
    };
    let page = state.store.list_rooms(&filter, &paging.request()).await?;
    Ok(axum::Json(RoomList {
        items: page.items,
        next_cursor: page.next_cursor.as_deref().map(encode_cursor),
    }))
}

/// Get a room with its live state.
#[utoipa::path(get, path = "/api/v1/rooms/{id}", tag = "rooms",
    params(("id" = String, Path, description = "room id")),
    responses(
        (status = 200, description = "the room and what is live in it", body = RoomDetail),
        (status = 404, description = "no such room", body = ErrorBody),
    ))]
pub async fn get_room(
    State(state): State<AppState>,
    _caller: MaybeUser,
    Path(id): Path<String>,
) -> Result<axum::Json<RoomDetail>, ApiError> {
    let room = load_room(&state, &id).await?;
    let (product_ids, pinned_product_id) = tokio::try_join!(
        state.store.room_products(&id),
        state.store.pinned_product(&id)
    )?;
    let active_sale_ids = state.flash.room_sale_ids(&id).await?;
    let channel = state.live.hub.existing_room(&id);
    Ok(axum::Json(RoomDetail {
        room,
        live: RoomLive {
            viewers: channel.as_ref().map_or(0, |c| c.viewers_total()),
            likes: channel.as_ref().map_or(0, |c| c.likes_total()),
            pinned_product_id,
            product_ids,
            active_sale_ids,
            match_id: state.contests.room_match(&id).map(|m| m.id),
        },
    }))
}

/// Go live (owner): `scheduled → live`.
#[utoipa::path(post, path = "/api/v1/rooms/{id}/start", tag = "rooms",
    params(("id" = String, Path, description = "room id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the room, now live", body = Room),
        (status = 401, description = "no valid token", body = ErrorBody),
        (status = 403, description = "not the owner", body = ErrorBody),
        (status = 404, description = "no such room", body = ErrorBody),
        (status = 409, description = "`invalid_state`: the room is not scheduled", body = ErrorBody),
    ))]
pub async fn start_room(
    State(state): State<AppState>,
    user: User,
    Path(id): Path<String>,
) -> Result<axum::Json<Room>, ApiError> {
    owned_room(&state, &user, &id).await?;
    let room = state.store.start_room(&id).await?;
    announce(
        &state,
        &id,
        harvest_proto::ws::RoomStatusChanged {
            status: room.status,
        },
    )
    .await;
    Ok(axum::Json(room))
}

/// End the stream (owner): from `scheduled` or `live` to `ended`.
#[utoipa::path(post, path = "/api/v1/rooms/{id}/end", tag = "rooms",
    params(("id" = String, Path, description = "room id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the room, now ended", body = Room),
        (status = 401, description = "no valid token", body = ErrorBody),
        (status = 403, description = "not the owner", body = ErrorBody),
        (status = 404, description = "no such room", body = ErrorBody),
        (status = 409, description = "`invalid_state`: already ended", body = ErrorBody),
    ))]
pub async fn end_room(
    State(state): State<AppState>,
    user: User,
    Path(id): Path<String>,
) -> Result<axum::Json<Room>, ApiError> {
    owned_room(&state, &user, &id).await?;
    let room = state.store.end_room(&id).await?;
    // Running sales end with the room; their holds stay payable until they expire.
    state.flash.end_room(&id).await?;
    announce(
        &state,
        &id,
        harvest_proto::ws::RoomStatusChanged {
            status: room.status,
        },
    )
    .await;
    Ok(axum::Json(room))
}

/// Add a product of the room's owner to the room's bag (owner).
#[utoipa::path(post, path = "/api/v1/rooms/{id}/products", tag = "rooms",
    params(("id" = String, Path, description = "room id")),
    request_body = AddProduct,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the bag, in the order products were added", body = ProductIds),
        (status = 400, description = "invalid field", body = ErrorBody),
        (status = 401, description = "no valid token", body = ErrorBody),
        (status = 403, description = "not the owner, or the product is another owner's", body = ErrorBody),
        (status = 404, description = "no such room or product", body = ErrorBody),
        (status = 415, description = "not JSON", body = ErrorBody),
    ))]
pub async fn add_room_product(
    State(state): State<AppState>,
    user: User,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<AddProduct>,
) -> Result<axum::Json<ProductIds>, ApiError> {
    let room = owned_room(&state, &user, &id).await?;
    let product = match state.store.product(&body.product_id).await {
        Ok(p) => p,
        Err(StoreError::NotFound) => {
            return Err(ApiError::not_found("product").detail("field", "product_id"));
        }
        Err(e) => return Err(e.into()),
    };
    if product.owner_id != room.streamer_id {
        return Err(ApiError::forbidden("the product belongs to another owner"));
    }
    let before = state.store.room_products(&id).await?;
    let product_ids = state.store.add_room_product(&id, &product.id).await?;
    if product_ids != before {
        announce(
            &state,
            &id,
            harvest_proto::ws::RoomProducts {
                product_ids: product_ids.clone(),
            },
        )
        .await;
    }
    Ok(axum::Json(ProductIds { product_ids }))
}

/// Remove a product from the bag (owner); removing the pinned product unpins it.
#[utoipa::path(delete, path = "/api/v1/rooms/{id}/products/{product_id}", tag = "rooms",
    params(("id" = String, Path, description = "room id"), ("product_id" = String, Path, description = "product id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the bag", body = ProductIds),
        (status = 401, description = "no valid token", body = ErrorBody),
        (status = 403, description = "not the owner", body = ErrorBody),
        (status = 404, description = "no such room, or the product is not in the bag", body = ErrorBody),
    ))]
pub async fn remove_room_product(
    State(state): State<AppState>,
    user: User,
    Path((id, product_id)): Path<(String, String)>,
) -> Result<axum::Json<ProductIds>, ApiError> {
    owned_room(&state, &user, &id).await?;
    let pinned_before = state.store.pinned_product(&id).await?;
    match state.store.remove_room_product(&id, &product_id).await {
        Ok(product_ids) => {
            announce(
                &state,
                &id,
                harvest_proto::ws::RoomProducts {
                    product_ids: product_ids.clone(),
                },
            )
            .await;
            if pinned_before.as_deref() == Some(product_id.as_str()) {
                announce(
                    &state,
                    &id,
                    harvest_proto::ws::ProductPinned { product: None },
                )
                .await;
            }
            Ok(axum::Json(ProductIds { product_ids }))
        }
        Err(StoreError::NotInRoom) => Err(ApiError::not_found("product in this room")),
        Err(e) => Err(e.into()),
    }
}

/// Pin a product of the bag, or unpin with null (owner).
#[utoipa::path(post, path = "/api/v1/rooms/{id}/pin", tag = "rooms",
    params(("id" = String, Path, description = "room id")),
    request_body = PinProduct,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the pinned product", body = Pinned),
        (status = 400, description = "invalid field", body = ErrorBody),
        (status = 401, description = "no valid token", body = ErrorBody),
        (status = 403, description = "not the owner", body = ErrorBody),
        (status = 404, description = "no such room", body = ErrorBody),
        (status = 409, description = "`not_in_room`: the product is not in the bag", body = ErrorBody),
        (status = 415, description = "not JSON", body = ErrorBody),
    ))]
pub async fn pin_product(
    State(state): State<AppState>,
    user: User,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<PinProduct>,
) -> Result<axum::Json<Pinned>, ApiError> {
    owned_room(&state, &user, &id).await?;
    let pinned_product_id = state
        .store
        .set_pinned_product(&id, body.product_id.as_deref())
        .await?;
    let product = match &pinned_product_id {
        Some(pid) => Some(state.store.product(pid).await?),
        None => None,
    };
    announce(&state, &id, harvest_proto::ws::ProductPinned { product }).await;
    Ok(axum::Json(Pinned { pinned_product_id }))
}
