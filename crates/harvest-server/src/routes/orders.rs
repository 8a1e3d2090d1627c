//! Checkout, the payment webhook, orders, refunds and the room's order export.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use harvest_proto::{ErrorBody, ErrorCode, Order, OrderStatus};
use harvest_stock::HoldStatus;
use harvest_store::StoreError;
use hmac::{KeyInit, Mac};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::{Role, User};
use crate::error::ApiError;
use crate::extract::{
    ApiJson, ApiQuery, Paging, encode_cursor, idempotency_key, parse_json, safe_uint,
};
use crate::state::AppState;

/// Body of `POST /api/v1/holds/{id}/checkout`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Checkout {
    /// `simulated`: the built-in provider, for development and demos.
    #[schema(pattern = "^simulated$")]
    pub method: String,
}

/// Body of `POST /api/v1/payments/webhook`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookEvent {
    /// The provider's id of this notification; replays answer the first answer.
    #[schema(min_length = 1, max_length = 200)]
    pub event_id: String,
    pub hold_id: String,
    /// The provider's payment reference.
    #[schema(max_length = 200)]
    pub provider_ref: String,
    /// Minor units; must equal the hold's amount.
    #[serde(deserialize_with = "safe_uint")]
    #[schema(minimum = 0, maximum = 9007199254740991_i64)]
    pub amount: i64,
    pub currency: String,
    pub status: WebhookStatus,
}

/// What the provider reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WebhookStatus {
    Succeeded,
    Failed,
}

/// Answer of the webhook.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WebhookAnswer {
    /// The order the payment made (or found); null for a failed payment.
    pub order_id: Option<String>,
}

/// A page of orders.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OrderList {
    pub items: Vec<Order>,
    pub next_cursor: Option<String>,
}

/// Body of `POST /api/v1/orders/{id}/refund`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Refund {
    /// Why the order is refunded (1–500 characters).
    #[schema(min_length = 1, max_length = 500)]
    pub reason: String,
}

/// Query of `GET /api/v1/orders`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct OrdersQuery {
    /// `true`: the caller's own orders (required unless the caller is an admin, who
    /// otherwise sees every order).
    #[param(value_type = Option<bool>)]
    pub mine: Option<String>,
    /// Page size, 1..=500 (default 50).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 500)]
    pub limit: Option<String>,
    /// `next_cursor` of the previous page.
    #[param(pattern = r"^[A-Za-z0-9_-]*$")]
    pub cursor: Option<String>,
}

/// Query of `GET /api/v1/rooms/{id}/orders`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ExportQuery {
    /// `json` (default) or `csv`.
    #[param(value_type = Option<String>, pattern = "^(json|csv)$")]
    pub format: Option<String>,
}

/// Pay a hold with the built-in simulated provider (the buyer).
#[utoipa::path(post, path = "/api/v1/holds/{id}/checkout", tag = "orders",
    params(
        ("id" = String, Path, description = "hold id"),
        ("Idempotency-Key" = String, Header, description = "1–128 printable ASCII characters"),
    ),
    request_body = Checkout,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the order (the same one for every repeat)", body = Order),
        (status = 400, description = "`missing_idempotency_key`, or an invalid field", body = ErrorBody),
        (status = 401, description = "no valid token", body = ErrorBody),
        (status = 404, description = "no such hold, or another buyer's", body = ErrorBody),
        (status = 409, description = "`hold_expired` or `hold_released`", body = ErrorBody),
        (status = 413, description = "body too large", body = ErrorBody),
        (status = 415, description = "not JSON", body = ErrorBody),
        (status = 503, description = "the payment cannot be recorded safely yet; retry", body = ErrorBody),
    ))]
pub async fn checkout(
    State(state): State<AppState>,
    user: User,
    Path(hold_id): Path<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<Checkout>,
) -> Result<axum::Json<Order>, ApiError> {
    idempotency_key(&headers)?;
    if body.method != "simulated" {
        return Err(ApiError::field("method", "method must be \"simulated\""));
    }
    if !state.settings.payment_simulated {
        return Err(ApiError::field(
            "method",
            "the simulated payment method is disabled on this server",
        ));
    }
    let (row, hold, _) = state.flash.find_hold(&hold_id).await?;
    if hold.user_id != user.id {
        return Err(ApiError::not_found("hold"));
    }
    match hold.status {
        HoldStatus::Released => {
            return Err(ApiError::new(
                ErrorCode::HoldReleased,
                "the hold was released",
            ));
        }
        HoldStatus::Expired => {
            return Err(ApiError::new(
                ErrorCode::HoldExpired,
                "the hold has expired",
            ));
        }
        HoldStatus::Paid | HoldStatus::Held => {}
    }
    let order = state
        .payments
        .pay(
            &row,
            &hold,
            Some(&user.name),
            "simulated",
            Some(&format!("sim-{}", harvest_store::new_id())),
        )
        .await?;
    Ok(axum::Json(order))
}

/// Verifies `Harvest-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
fn verify_signature(secret: &[u8], header: Option<&str>, body: &[u8], now_s: i64) -> bool {
    let Some(header) = header else { return false };
    let mut t = None;
    let mut v1 = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", value)) => t = value.parse::<i64>().ok(),
            Some(("v1", value)) => v1.push(value.to_owned()),
            _ => {}
        }
    }
    let Some(t) = t else { return false };
    if (now_s - t).abs() > 300 {
        return false;
    }
    v1.iter().any(|sig| {
        let Ok(expected) = hex::decode(sig) else {
            return false;
        };
        let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret) else {
            return false;
        };
        mac.update(t.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac.verify_slice(&expected).is_ok()
    })
}

/// The payment provider's notification (signed, no JWT).
#[utoipa::path(post, path = "/api/v1/payments/webhook", tag = "orders",
    params(("Harvest-Signature" = String, Header, description = "`t=<unix seconds>,v1=<hex HMAC-SHA256(secret, \"<t>.<raw body>\")>`")),
    request_body = WebhookEvent,
    responses(
        (status = 200, description = "`{order_id}` (null for a failed payment)", body = WebhookAnswer),
        (status = 400, description = "invalid field", body = ErrorBody),
        (status = 401, description = "`invalid_signature`: bad or missing signature, or a timestamp more than 300 s away", body = ErrorBody),
        (status = 404, description = "no such hold", body = ErrorBody),
        (status = 409, description = "`amount_mismatch`, or `hold_expired` / `hold_released`: a late payment, recorded for refund", body = ErrorBody),
        (status = 413, description = "body too large", body = ErrorBody),
        (status = 503, description = "the payment cannot be recorded safely yet; retry", body = ErrorBody),
    ))]
pub async fn webhook(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(secret) = &state.settings.payment_webhook_secret else {
        return ApiError::new(
            ErrorCode::InvalidSignature,
            "the payment webhook is disabled",
        )
        .into_response();
    };
    let signature = headers
        .get("harvest-signature")
        .and_then(|v| v.to_str().ok());
    let now_s = harvest_hub::now_ms() / 1000;
    if !verify_signature(secret.expose().as_bytes(), signature, &body, now_s) {
        return ApiError::new(ErrorCode::InvalidSignature, "invalid webhook signature")
            .into_response();
    }
    let event: WebhookEvent = match parse_json(&body) {
        Ok(e) => e,
        Err(e) => return e.into_response(),
    };
    if event.event_id.is_empty() || event.event_id.len() > 200 {
        return ApiError::field("event_id", "event_id must be 1 to 200 characters").into_response();
    }
    match state.store.payment_event(&event.event_id).await {
        Ok(Some((status, body))) => return stored_answer(status, body),
        Ok(None) => {}
        // SQL is down: paying is idempotent per hold, so go on without the replay record.
        Err(e) => tracing::warn!(error = %e, "cannot read webhook replay records"),
    }
    let (status, answer) = match webhook_outcome(&state, &event).await {
        Ok(answer) => (
            StatusCode::OK,
            serde_json::to_string(&answer).unwrap_or_default(),
        ),
        Err(e) if matches!(e.status().as_u16(), 409) => (
            e.status(),
            serde_json::to_string(&e.body()).unwrap_or_default(),
        ),
        // Not final: a retry is a fresh attempt.
        Err(e) => return e.into_response(),
    };
    let now = harvest_hub::now_ms();
    match state
        .store
        .save_payment_event(&event.event_id, status.as_u16(), &answer, now)
        .await
    {
        Ok((status, body)) => stored_answer(status, body),
        Err(e) => {
            tracing::warn!(error = %e, "cannot keep the webhook answer for replays");
            stored_answer(status.as_u16(), answer)
        }
    }
}

fn stored_answer(status: u16, body: String) -> Response {
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

async fn webhook_outcome(
    state: &AppState,
    event: &WebhookEvent,
) -> Result<WebhookAnswer, ApiError> {
    let (row, hold, _) = state.flash.find_hold(&event.hold_id).await?;
    let amount = i64::from(hold.quantity).saturating_mul(row.price);
    if event.amount != amount || event.currency != row.currency {
        return Err(ApiError::new(
            ErrorCode::AmountMismatch,
            "the amount or currency differs from the hold's",
        )
        .detail("amount", amount)
        .detail("currency", row.currency.clone()));
    }
    if event.status == WebhookStatus::Failed {
        // The hold stays held until it expires; the buyer may pay again.
        return Ok(WebhookAnswer { order_id: None });
    }
    match state
        .payments
        .pay(&row, &hold, None, "webhook", Some(&event.provider_ref))
        .await
    {
        Ok(order) => Ok(WebhookAnswer {
            order_id: Some(order.id),
        }),
        Err(crate::payments::PayError::Late(status)) => {
            let reason = if status == HoldStatus::Released {
                "hold_released"
            } else {
                "hold_expired"
            };
            state
                .store
                .record_late_payment(
                    &event.event_id,
                    &event.hold_id,
                    &event.provider_ref,
                    event.amount,
                    &event.currency,
                    reason,
                    harvest_hub::now_ms(),
                )
                .await?;
            tracing::warn!(hold_id = %event.hold_id, reason, "late payment recorded for refund");
            Err(crate::payments::PayError::Late(status).into())
        }
        Err(e) => Err(e.into()),
    }
}

/// The caller's orders (`mine=true`), or every order for an admin.
#[utoipa::path(get, path = "/api/v1/orders", tag = "orders",
    params(OrdersQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "a page of orders, oldest first", body = OrderList),
        (status = 400, description = "invalid parameter", body = ErrorBody),
        (status = 401, description = "no valid token", body = ErrorBody),
    ))]
pub async fn list_orders(
    State(state): State<AppState>,
    user: User,
    ApiQuery(query): ApiQuery<OrdersQuery>,
) -> Result<axum::Json<OrderList>, ApiError> {
    let mine = match query.mine.as_deref() {
        None => false,
        Some("true") => true,
        Some("false") => false,
        Some(_) => return Err(ApiError::field("mine", "mine must be true or false")),
    };
    if !mine && !user.is_admin() {
        return Err(ApiError::field("mine", "mine=true is required"));
    }
    let paging = Paging::new(query.limit, query.cursor)?;
    let buyer = mine.then_some(user.id.as_str());
    let page = state.store.list_orders(buyer, &paging.request()).await?;
    Ok(axum::Json(OrderList {
        items: page.items,
        next_cursor: page.next_cursor.as_deref().map(encode_cursor),
    }))
}

/// Whether the caller may see an order: its buyer, the room's owner, an organizer or
/// an admin. Returns the order and whether the caller may refund it.
async fn visible_order(state: &AppState, user: &User, id: &str) -> Result<(Order, bool), ApiError> {
    let order = match state.store.order(id).await {
        Ok(o) => o,
        Err(StoreError::NotFound) => return Err(ApiError::not_found("order")),
        Err(e) => return Err(e.into()),
    };
    let room = state.store.room(&order.room_id).await?;
    let owner = room.streamer_id == user.id || user.is_admin();
    if owner || order.buyer_id == user.id || user.has(Role::Organizer) {
        Ok((order, owner))
    } else {
        Err(ApiError::not_found("order"))
    }
}

/// One order (buyer, room owner, organizer, admin).
#[utoipa::path(get, path = "/api/v1/orders/{id}", tag = "orders",
    params(("id" = String, Path, description = "order id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the order", body = Order),
        (status = 401, description = "no valid token", body = ErrorBody),
        (status = 404, description = "no such order, or not one the caller may see", body = ErrorBody),
    ))]
pub async fn get_order(
    State(state): State<AppState>,
    user: User,
    Path(id): Path<String>,
) -> Result<axum::Json<Order>, ApiError> {
    Ok(axum::Json(visible_order(&state, &user, &id).await?.0))
}

/// Refund an order (room owner, admin). Units do not return to the sale.
#[utoipa::path(post, path = "/api/v1/orders/{id}/refund", tag = "orders",
    params(("id" = String, Path, description = "order id")),
    request_body = Refund,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the order, now `refunded`", body = Order),
        (status = 400, description = "invalid field", body = ErrorBody),
        (status = 401, description = "no valid token", body = ErrorBody),
        (status = 403, description = "the buyer or an organizer: may see, not refund", body = ErrorBody),
        (status = 404, description = "no such order, or not one the caller may see", body = ErrorBody),
        (status = 409, description = "`already_refunded`", body = ErrorBody),
        (status = 415, description = "not JSON", body = ErrorBody),
    ))]
pub async fn refund(
    State(state): State<AppState>,
    user: User,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<Refund>,
) -> Result<axum::Json<Order>, ApiError> {
    let reason = crate::routes::multiline("reason", &body.reason, 500)?;
    let (order, may_refund) = visible_order(&state, &user, &id).await?;
    if !may_refund {
        return Err(ApiError::forbidden(
            "only the room's owner or an admin may refund",
        ));
    }
    if order.status == OrderStatus::Refunded {
        return Err(ApiError::new(
            ErrorCode::AlreadyRefunded,
            "the order was already refunded",
        ));
    }
    let refunded = state
        .store
        .refund_order(&id, &reason, harvest_hub::now_ms())
        .await?;
    state.contests.order_refunded(&refunded);
    Ok(axum::Json(refunded))
}

/// The CSV header of the order export: the Order fields in their API order.
pub const CSV_HEADER: &str = "id,hold_id,sale_id,room_id,product_id,buyer_id,quantity,\
unit_price,amount,currency,status,paid_at,refunded_at";

fn csv_field(value: &str) -> String {
    // Quote when needed; neutralise spreadsheet formulas in user-controlled text.
    let value = if value.starts_with(['=', '+', '-', '@']) {
        format!("'{value}")
    } else {
        value.to_owned()
    };
    if value.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value
    }
}

/// One order as a CSV row (without the line break).
pub fn csv_row(o: &Order) -> String {
    let ts =
        |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    [
        csv_field(&o.id),
        csv_field(&o.hold_id),
        csv_field(&o.sale_id),
        csv_field(&o.room_id),
        csv_field(&o.product_id),
        csv_field(&o.buyer_id),
        o.quantity.to_string(),
        o.unit_price.to_string(),
        o.amount.to_string(),
        csv_field(&o.currency),
        o.status.as_str().to_owned(),
        ts(o.paid_at),
        o.refunded_at.map(ts).unwrap_or_default(),
    ]
    .join(",")
}

/// The room's orders as JSON or CSV (owner, organizer, admin).
#[utoipa::path(get, path = "/api/v1/rooms/{id}/orders", tag = "orders",
    params(("id" = String, Path, description = "room id"), ExportQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "every order of the room, oldest first: JSON, or CSV with `format=csv`",
            content(
                (OrderList = "application/json"),
                (String = "text/csv"),
            )),
        (status = 400, description = "invalid parameter", body = ErrorBody),
        (status = 401, description = "no valid token", body = ErrorBody),
        (status = 403, description = "neither the owner, an organizer nor an admin", body = ErrorBody),
        (status = 404, description = "no such room", body = ErrorBody),
    ))]
pub async fn room_orders(
    State(state): State<AppState>,
    user: User,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<ExportQuery>,
) -> Result<Response, ApiError> {
    let csv = match query.format.as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(_) => return Err(ApiError::field("format", "format must be json or csv")),
    };
    let room = match state.store.room(&id).await {
        Ok(r) => r,
        Err(StoreError::NotFound) => return Err(ApiError::not_found("room")),
        Err(e) => return Err(e.into()),
    };
    if room.streamer_id != user.id && !user.has(Role::Organizer) {
        return Err(ApiError::forbidden(
            "only the owner, an organizer or an admin may export orders",
        ));
    }
    let orders = state.store.room_orders(&id).await?;
    if csv {
        let mut out = String::with_capacity(64 + orders.len() * 200);
        out.push_str(CSV_HEADER);
        out.push_str("\r\n");
        for o in &orders {
            out.push_str(&csv_row(o));
            out.push_str("\r\n");
        }
        let disposition = format!("attachment; filename=\"orders-{id}.csv\"");
        return Ok((
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
                (header::CONTENT_DISPOSITION, disposition),
            ],
            out,
        )
            .into_response());
    }
    Ok(axum::Json(OrderList {
        items: orders,
        next_cursor: None,
    })
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(secret: &[u8], t: i64, body: &[u8]) -> String {
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
        mac.update(format!("{t}.").as_bytes());
        mac.update(body);
        format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn signatures_are_checked_with_a_300_second_tolerance() {
        let body = br#"{"event_id":"e1"}"#;
        let now = 1_764_420_000;
        let good = sign(b"s3cret", now - 10, body);
        assert!(verify_signature(b"s3cret", Some(&good), body, now));
        assert!(!verify_signature(b"other", Some(&good), body, now));
        assert!(!verify_signature(b"s3cret", Some(&good), b"{}", now));
        assert!(!verify_signature(b"s3cret", None, body, now));
        assert!(!verify_signature(b"s3cret", Some("t=1,v1=zz"), body, now));
        assert!(!verify_signature(b"s3cret", Some("garbage"), body, now));
        let stale = sign(b"s3cret", now - 301, body);
        assert!(!verify_signature(b"s3cret", Some(&stale), body, now));
        let future = sign(b"s3cret", now + 301, body);
        assert!(!verify_signature(b"s3cret", Some(&future), body, now));
        let edge = sign(b"s3cret", now - 300, body);
        assert!(verify_signature(b"s3cret", Some(&edge), body, now));
    }

    #[test]
    fn csv_rows_quote_and_defuse_text() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("=1+1"), "'=1+1");
        assert_eq!(CSV_HEADER.split(',').count(), 13);
    }
}
