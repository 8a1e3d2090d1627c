//! Flash sales, reservations and holds (API.md §4).

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use chrono::{DateTime, Utc};
use harvest_proto::{AllocationList, ErrorBody, ErrorCode, Hold, RoomStatus, Sale};
use harvest_store::{NewSale, StoreError};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use crate::auth::{MaybeUser, Role, User};
use crate::error::ApiError;
use crate::extract::{
    ApiJson, ApiQuery, Paging, decode_position_cursor, encode_position_cursor, idempotency_key,
    safe_int, safe_uint,
};
use crate::flash::Reservation;
use crate::state::AppState;

/// Body of `POST /api/v1/rooms/{id}/flash-sales`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSale {
    /// A product in the room's bag.
    pub product_id: String,
    /// Sale price per unit, in minor units of the product's currency.
    #[serde(deserialize_with = "safe_uint")]
    #[schema(minimum = 0, maximum = 9007199254740991_i64)]
    pub price: i64,
    /// Units on offer, at least 1.
    #[serde(deserialize_with = "safe_uint")]
    #[schema(minimum = 1, maximum = 9007199254740991_i64)]
    pub stock: i64,
    /// Units one buyer may hold plus buy (default 1).
    #[serde(default, deserialize_with = "opt_safe_uint")]
    #[schema(value_type = Option<i64>, minimum = 1, maximum = 4294967295_i64)]
    pub per_user_limit: Option<i64>,
    /// When reservations open (default: now).
    pub starts_at: Option<DateTime<Utc>>,
    /// How long the sale runs, in seconds (default 300).
    #[serde(default, deserialize_with = "opt_safe_uint")]
    #[schema(value_type = Option<i64>, minimum = 1, maximum = 31536000)]
    pub duration_s: Option<i64>,
    /// How long a hold stays payable, 1..=3600 seconds (default 300).
    #[serde(default, deserialize_with = "opt_safe_uint")]
    #[schema(value_type = Option<i64>, minimum = 1, maximum = 3600)]
    pub hold_ttl_s: Option<i64>,
}

fn opt_safe_uint<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    safe_uint(d).map(Some)
}

fn opt_safe_int<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    safe_int(d).map(Some)
}

/// Body of `POST /api/v1/flash-sales/{id}/reservations`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Reserve {
    /// Units wanted, 1..=100 (default 1).
    #[serde(default, deserialize_with = "opt_safe_int")]
    #[schema(value_type = Option<i64>, minimum = 1, maximum = 100)]
    pub quantity: Option<i64>,
}

/// Query of `GET /api/v1/flash-sales/{id}/allocations`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AllocationQuery {
    /// Page size, 1..=500 (default 50).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 500)]
    pub limit: Option<String>,
    /// `next_cursor` of the previous page.
    #[param(pattern = r"^[A-Za-z0-9_-]*$")]
    pub cursor: Option<String>,
}

/// Largest `duration_s` of a sale: a year.
const MAX_DURATION_S: i64 = 365 * 24 * 3600;

/// Start a flash sale of a product in the room's bag (owner).
#[utoipa::path(post, path = "/api/v1/rooms/{id}/flash-sales", tag = "flash sales",
    params(("id" = String, Path, description = "room id")),
    request_body = CreateSale,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "created; `sale.scheduled` or `sale.started` reaches the room", body = Sale),
        (status = 400, description = "invalid field (`details.field` names it)", body = ErrorBody),
        (status = 401, description = "no valid token", body = ErrorBody),
        (status = 403, description = "not the room's owner", body = ErrorBody),
        (status = 404, description = "no such room", body = ErrorBody),
        (status = 409, description = "`room_ended`, or `not_in_room`: the product is not in the bag", body = ErrorBody),
        (status = 413, description = "body too large", body = ErrorBody),
        (status = 415, description = "not JSON", body = ErrorBody),
        (status = 503, description = "a dependency is down; retry", body = ErrorBody),
    ))]
pub async fn create_sale(
    State(state): State<AppState>,
    user: User,
    Path(room_id): Path<String>,
    ApiJson(body): ApiJson<CreateSale>,
) -> Result<(StatusCode, axum::Json<Sale>), ApiError> {
    let room = match state.store.room(&room_id).await {
        Ok(room) => room,
        Err(StoreError::NotFound) => return Err(ApiError::not_found("room")),
        Err(e) => return Err(e.into()),
    };
    user.require_owner(&room.streamer_id)?;
    if body.stock < 1 {
        return Err(ApiError::field("stock", "stock must be at least 1"));
    }
    let per_user_limit = body.per_user_limit.unwrap_or(1);
    if !(1..=i64::from(u32::MAX)).contains(&per_user_limit) {
        return Err(ApiError::field(
            "per_user_limit",
            "per_user_limit must be at least 1",
        ));
    }
    let duration_s = body.duration_s.unwrap_or(300);
    if !(1..=MAX_DURATION_S).contains(&duration_s) {
        return Err(ApiError::field(
            "duration_s",
            format!("duration_s must be between 1 and {MAX_DURATION_S}"),
        ));
    }
    let hold_ttl_s = body.hold_ttl_s.unwrap_or(300);
    if !(1..=3600).contains(&hold_ttl_s) {
        return Err(ApiError::field(
            "hold_ttl_s",
            "hold_ttl_s must be between 1 and 3600",
        ));
    }
    let now = harvest_hub::now_ms();
    let starts_at = body.starts_at.map_or(now, |t| t.timestamp_millis());
    let ends_at = starts_at.saturating_add(duration_s * 1000);
    if ends_at <= now {
        return Err(ApiError::field(
            "starts_at",
            "the sale would be over before it is created",
        ));
    }
    if room.status == RoomStatus::Ended {
        return Err(ApiError::new(ErrorCode::RoomEnded, "the room has ended"));
    }
    let bag = state.store.room_products(&room_id).await?;
    if !bag.contains(&body.product_id) {
        return Err(
            ApiError::new(ErrorCode::NotInRoom, "the product is not in the room's bag")
                .detail("field", "product_id"),
        );
    }
    let product = state.store.product(&body.product_id).await?;
    let sale = state
        .flash
        .create(NewSale {
            room_id,
            product_id: product.id,
            price: body.price,
            currency: product.currency,
            stock: body.stock,
            per_user_limit,
            starts_at,
            ends_at,
            hold_ttl_s,
        })
        .await?;
    Ok((StatusCode::CREATED, axum::Json(sale)))
}

/// A flash sale with its live numbers.
#[utoipa::path(get, path = "/api/v1/flash-sales/{id}", tag = "flash sales",
    params(("id" = String, Path, description = "flash sale id")),
    responses(
        (status = 200, description = "the sale; `remaining + held + sold == stock`", body = Sale),
        (status = 404, description = "no such sale", body = ErrorBody),
        (status = 503, description = "the stock engine is down; retry", body = ErrorBody),
    ))]
pub async fn get_sale(
    State(state): State<AppState>,
    _caller: MaybeUser,
    Path(id): Path<String>,
) -> Result<axum::Json<Sale>, ApiError> {
    Ok(axum::Json(state.flash.get(&id).await?.1))
}

/// The room's owner (or an admin) may change the sale: 404 when it does not exist,
/// 403 for anyone else.
async fn require_sale_owner(state: &AppState, user: &User, sale_id: &str) -> Result<(), ApiError> {
    let row = state.flash.row(sale_id).await?;
    let room = state.store.room(&row.room_id).await?;
    user.require_owner(&room.streamer_id)
}

/// End a flash sale now (owner); outstanding holds stay payable until they expire.
#[utoipa::path(post, path = "/api/v1/flash-sales/{id}/end", tag = "flash sales",
    params(("id" = String, Path, description = "flash sale id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the sale, now `ended`", body = Sale),
        (status = 401, description = "no valid token", body = ErrorBody),
        (status = 403, description = "not the room's owner", body = ErrorBody),
        (status = 404, description = "no such sale", body = ErrorBody),
        (status = 503, description = "a dependency is down; retry", body = ErrorBody),
    ))]
pub async fn end_sale(
    State(state): State<AppState>,
    user: User,
    Path(id): Path<String>,
) -> Result<axum::Json<Sale>, ApiError> {
    require_sale_owner(&state, &user, &id).await?;
    Ok(axum::Json(state.flash.end(&id).await?))
}

/// The sale's allocation record: successful holds in the order they were admitted
/// (owner, organizer, admin).
#[utoipa::path(get, path = "/api/v1/flash-sales/{id}/allocations", tag = "flash sales",
    params(("id" = String, Path, description = "flash sale id"), AllocationQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "allocations in position order (1, 2, ...)", body = AllocationList),
        (status = 400, description = "invalid parameter", body = ErrorBody),
        (status = 401, description = "no valid token", body = ErrorBody),
        (status = 403, description = "neither the room's owner, an organizer nor an admin", body = ErrorBody),
        (status = 404, description = "no such sale", body = ErrorBody),
        (status = 503, description = "the stock engine is down; retry", body = ErrorBody),
    ))]
pub async fn allocations(
    State(state): State<AppState>,
    user: User,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<AllocationQuery>,
) -> Result<axum::Json<AllocationList>, ApiError> {
    let limit = Paging::new(query.limit, None)?.limit as usize;
    let after = match query.cursor.as_deref() {
        None | Some("") => 0,
        Some(c) => decode_position_cursor(c)?,
    };
    if !user.has(Role::Organizer) {
        require_sale_owner(&state, &user, &id).await?;
    }
    let items = state.flash.allocations(&id, after, limit).await?;
    let next_cursor = match items.last() {
        Some(last) if items.len() == limit => Some(encode_position_cursor(last.position)),
        _ => None,
    };
    Ok(axum::Json(AllocationList { items, next_cursor }))
}

/// Reserve units of a flash sale: a hold that expires after the sale's hold TTL
/// unless paid. A replay of the `Idempotency-Key` returns the first answer.
#[utoipa::path(post, path = "/api/v1/flash-sales/{id}/reservations", tag = "flash sales",
    params(
        ("id" = String, Path, description = "flash sale id"),
        ("Idempotency-Key" = String, Header, description = "1–128 printable ASCII characters, unique per attempt; a replay returns the first answer"),
    ),
    request_body = Reserve,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "the hold", body = Hold),
        (status = 400, description = "`missing_idempotency_key`, `invalid_quantity`, or an invalid field", body = ErrorBody),
        (status = 401, description = "no valid token", body = ErrorBody),
        (status = 404, description = "no such sale", body = ErrorBody),
        (status = 409, description = "`not_started`, `sale_ended`, `sold_out`, `limit_exceeded`, `insufficient_stock` (checked in this order), or `idempotency_key_reused`", body = ErrorBody),
        (status = 413, description = "body too large", body = ErrorBody),
        (status = 415, description = "not JSON", body = ErrorBody),
        (status = 429, description = "too many reservations; see `Retry-After`", body = ErrorBody),
        (status = 503, description = "the stock engine is down; retry with the same key", body = ErrorBody),
    ))]
pub async fn reserve(
    State(state): State<AppState>,
    user: User,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<Reserve>,
) -> Result<(StatusCode, axum::Json<Hold>), ApiError> {
    let key = idempotency_key(&headers)?;
    let quantity = match body.quantity {
        None => 1,
        Some(q) if (1..=100).contains(&q) => q as u32,
        Some(_) => {
            return Err(ApiError::new(
                ErrorCode::InvalidQuantity,
                "quantity must be between 1 and 100",
            )
            .detail("field", "quantity"));
        }
    };
    // Bodies are compared as parsed JSON: `{}` and `{"quantity": 1}` differ.
    let fingerprint = match body.quantity {
        None => "{}".to_owned(),
        Some(q) => format!("{{\"quantity\":{q}}}"),
    };
    let hold = state
        .flash
        .reserve(Reservation {
            sale_id: &id,
            user_id: &user.id,
            quantity,
            idempotency_key: &key,
            fingerprint,
        })
        .await?;
    Ok((StatusCode::CREATED, axum::Json(hold)))
}

/// A hold (its buyer or an admin; 404 for anyone else).
#[utoipa::path(get, path = "/api/v1/holds/{id}", tag = "flash sales",
    params(("id" = String, Path, description = "hold id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the hold in its current status", body = Hold),
        (status = 401, description = "no valid token", body = ErrorBody),
        (status = 404, description = "no such hold, or another buyer's", body = ErrorBody),
        (status = 503, description = "a dependency is down; retry", body = ErrorBody),
    ))]
pub async fn get_hold(
    State(state): State<AppState>,
    user: User,
    Path(id): Path<String>,
) -> Result<axum::Json<Hold>, ApiError> {
    Ok(axum::Json(state.flash.hold(&id, &user).await?))
}

/// Release a hold (its buyer): the units return to stock exactly once.
#[utoipa::path(delete, path = "/api/v1/holds/{id}", tag = "flash sales",
    params(("id" = String, Path, description = "hold id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the hold, now `released`", body = Hold),
        (status = 401, description = "no valid token", body = ErrorBody),
        (status = 404, description = "no such hold, or another buyer's", body = ErrorBody),
        (status = 409, description = "`hold_paid`, `hold_expired` or `hold_released`", body = ErrorBody),
        (status = 503, description = "a dependency is down; retry", body = ErrorBody),
    ))]
pub async fn release_hold(
    State(state): State<AppState>,
    user: User,
    Path(id): Path<String>,
) -> Result<axum::Json<Hold>, ApiError> {
    Ok(axum::Json(state.flash.release(&id, &user).await?))
}
