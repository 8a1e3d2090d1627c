//! Products: the catalogue streamers sell from.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use harvest_proto::{ErrorBody, Product, ProductList};
use harvest_store::{NewProduct, ProductFilter};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use crate::auth::{Role, User};
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiQuery, Paging, encode_cursor, safe_uint};
use crate::routes::{currency, opt_text, opt_url, text};
use crate::state::AppState;

/// Body of `POST /api/v1/products`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProduct {
    /// Stock-keeping unit, unique per owner (1–64 characters).
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]*[^\s\u0000-\u001f\u007f-\u009f][^\u0000-\u001f\u007f-\u009f]*$"
    )]
    pub sku: String,
    /// 1–200 characters.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]*[^\s\u0000-\u001f\u007f-\u009f][^\u0000-\u001f\u007f-\u009f]*$"
    )]
    pub title: String,
    /// Where it comes from, e.g. a county (up to 100 characters).
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]*[^\s\u0000-\u001f\u007f-\u009f][^\u0000-\u001f\u007f-\u009f]*$"
    )]
    pub origin: Option<String>,
    /// Selling unit, e.g. "box of 12" (up to 32 characters).
    #[schema(
        min_length = 1,
        max_length = 32,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]*[^\s\u0000-\u001f\u007f-\u009f][^\u0000-\u001f\u007f-\u009f]*$"
    )]
    pub unit: Option<String>,
    /// List price in minor units (fen).
    #[serde(deserialize_with = "safe_uint")]
    #[schema(minimum = 0, maximum = 9007199254740991_i64)]
    pub list_price: i64,
    /// Three upper-case letters; default `CNY`.
    #[schema(pattern = "^[A-Z]{3}$")]
    pub currency: Option<String>,
    /// An http(s) URL.
    #[schema(max_length = 2048, pattern = r"^https?://[^\s/?#]+[^\s]*$")]
    pub image_url: Option<String>,
}

/// Query of `GET /api/v1/products`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ProductQuery {
    /// Only products of this owner.
    pub owner: Option<String>,
    /// Case-insensitive substring of the title or the sku.
    pub q: Option<String>,
    /// Page size, 1..=500 (default 50).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 500)]
    pub limit: Option<String>,
    /// `next_cursor` of the previous page.
    #[param(pattern = r"^[A-Za-z0-9_-]*$")]
    pub cursor: Option<String>,
}

/// Create a product (streamer).
#[utoipa::path(post, path = "/api/v1/products", tag = "products",
    request_body = CreateProduct,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "created", body = Product),
        (status = 400, description = "invalid field", body = ErrorBody),
        (status = 401, description = "no valid token", body = ErrorBody),
        (status = 403, description = "not a streamer", body = ErrorBody),
        (status = 409, description = "`duplicate_sku`: the owner already has this sku", body = ErrorBody),
        (status = 413, description = "body too large", body = ErrorBody),
        (status = 415, description = "not JSON", body = ErrorBody),
    ))]
pub async fn create_product(
    State(state): State<AppState>,
    user: User,
    ApiJson(body): ApiJson<CreateProduct>,
) -> Result<(StatusCode, axum::Json<Product>), ApiError> {
    user.require(Role::Streamer)?;
    let new = NewProduct {
        owner_id: user.id.clone(),
        sku: text("sku", &body.sku, 64)?,
        title: text("title", &body.title, 200)?,
        origin: opt_text("origin", body.origin.as_deref(), 100)?,
        unit: opt_text("unit", body.unit.as_deref(), 32)?,
        list_price: body.list_price,
        currency: currency("currency", body.currency.as_deref())?,
        image_url: opt_url("image_url", body.image_url.as_deref())?,
    };
    let product = state.store.create_product(new).await?;
    Ok((StatusCode::CREATED, axum::Json(product)))
}

/// Get a product.
#[utoipa::path(get, path = "/api/v1/products/{id}", tag = "products",
    params(("id" = String, Path, description = "product id")),
    responses(
        (status = 200, description = "the product", body = Product),
        (status = 404, description = "no such product", body = ErrorBody),
    ))]
pub async fn get_product(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<axum::Json<Product>, ApiError> {
    match state.store.product(&id).await {
        Ok(p) => Ok(axum::Json(p)),
        Err(harvest_store::StoreError::NotFound) => Err(ApiError::not_found("product")),
        Err(e) => Err(e.into()),
    }
}

/// List products, oldest first.
#[utoipa::path(get, path = "/api/v1/products", tag = "products",
    params(ProductQuery),
    responses(
        (status = 200, description = "a page of products", body = ProductList),
        (status = 400, description = "invalid parameter", body = ErrorBody),
    ))]
pub async fn list_products(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ProductQuery>,
) -> Result<axum::Json<ProductList>, ApiError> {
    let paging = Paging::new(query.limit, query.cursor)?;
    let filter = ProductFilter {
        owner_id: query.owner.filter(|o| !o.is_empty()),
        query: query
            .q
            .map(|q| q.trim().to_owned())
            .filter(|q| !q.is_empty()),
    };
    let page = state
        .store
        .list_products(&filter, &paging.request())
        .await?;
    Ok(axum::Json(ProductList {
        items: page.items,
        next_cursor: page.next_cursor.as_deref().map(encode_cursor),
    }))
}
