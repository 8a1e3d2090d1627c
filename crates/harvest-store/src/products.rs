use harvest_proto::Product;
use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row};

use crate::error::is_unique_violation;
use crate::store::{from_ms, ms, now};
use crate::{Page, PageRequest, Store, StoreError, new_id};

/// A product to create; the store assigns its id and creation time.
#[derive(Debug, Clone)]
pub struct NewProduct {
    pub owner_id: String,
    pub sku: String,
    pub title: String,
    pub origin: Option<String>,
    pub unit: Option<String>,
    pub list_price: i64,
    pub currency: String,
    pub image_url: Option<String>,
}

/// Which products to list.
#[derive(Debug, Clone, Default)]
pub struct ProductFilter {
    pub owner_id: Option<String>,
    /// Case-insensitive substring of the title or the sku.
    pub query: Option<String>,
}

pub(crate) const PRODUCT_COLUMNS: &str =
    "id, owner_id, sku, title, origin, unit, list_price, currency, image_url, created_at";

pub(crate) fn product_from_row(row: &AnyRow) -> Result<Product, sqlx::Error> {
    Ok(Product {
        id: row.try_get("id")?,
        owner_id: row.try_get("owner_id")?,
        sku: row.try_get("sku")?,
        title: row.try_get("title")?,
        origin: row.try_get("origin")?,
        unit: row.try_get("unit")?,
        list_price: row.try_get("list_price")?,
        currency: row.try_get("currency")?,
        image_url: row.try_get("image_url")?,
        created_at: from_ms(row.try_get("created_at")?),
    })
}

/// Escapes `%`, `_` and the escape character itself for a `LIKE ... ESCAPE '\'` pattern.
fn like_pattern(query: &str) -> String {
    let mut out = String::with_capacity(query.len() + 2);
    out.push('%');
    for c in query.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('%');
    out
}

impl Store {
    /// Creates a product; [`StoreError::DuplicateSku`] when the owner already has the sku.
    pub async fn create_product(&self, new: NewProduct) -> Result<Product, StoreError> {
        let product = Product {
            id: new_id(),
            owner_id: new.owner_id,
            sku: new.sku,
            title: new.title,
            origin: new.origin,
            unit: new.unit,
            list_price: new.list_price,
            currency: new.currency,
            image_url: new.image_url,
            created_at: now(),
        };
        let result = self
            .timed(
                sqlx::query(
                    "INSERT INTO products (id, owner_id, sku, title, title_lower, origin, unit, \
                     list_price, currency, image_url, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                )
                .bind(&product.id)
                .bind(&product.owner_id)
                .bind(&product.sku)
                .bind(&product.title)
                .bind(product.title.to_lowercase())
                .bind(&product.origin)
                .bind(&product.unit)
                .bind(product.list_price)
                .bind(&product.currency)
                .bind(&product.image_url)
                .bind(ms(product.created_at))
                .execute(&self.pool),
            )
            .await;
        match result {
            Ok(_) => Ok(product),
            Err(StoreError::Database(ref e)) if is_unique_violation(e) => {
                Err(StoreError::DuplicateSku)
            }
            Err(e) => Err(e),
        }
    }

    /// The product with this id.
    pub async fn product(&self, id: &str) -> Result<Product, StoreError> {
        let row = self
            .timed(
                sqlx::query(AssertSqlSafe(format!(
                    "SELECT {PRODUCT_COLUMNS} FROM products WHERE id = $1"
                )))
                .bind(id)
                .fetch_optional(&self.pool),
            )
            .await?
            .ok_or(StoreError::NotFound)?;
        Ok(product_from_row(&row)?)
    }

    /// Products in id (creation) order, filtered, one page at a time.
    pub async fn list_products(
        &self,
        filter: &ProductFilter,
        page: &PageRequest,
    ) -> Result<Page<Product>, StoreError> {
        let mut sql = format!("SELECT {PRODUCT_COLUMNS} FROM products WHERE id > $1");
        let mut n = 1;
        if filter.owner_id.is_some() {
            n += 1;
            sql.push_str(&format!(" AND owner_id = ${n}"));
        }
        if filter.query.is_some() {
            n += 1;
            sql.push_str(&format!(
                " AND (title_lower LIKE ${n} ESCAPE '\\' OR LOWER(sku) LIKE ${n} ESCAPE '\\')"
            ));
        }
        n += 1;
        sql.push_str(&format!(" ORDER BY id LIMIT ${n}"));
        let mut query =
            sqlx::query(AssertSqlSafe(sql)).bind(page.after.clone().unwrap_or_default());
        if let Some(owner) = &filter.owner_id {
            query = query.bind(owner.clone());
        }
        if let Some(q) = &filter.query {
            query = query.bind(like_pattern(q));
        }
        let rows = self
            .timed(query.bind(i64::from(page.limit) + 1).fetch_all(&self.pool))
            .await?;
        let items = rows
            .iter()
            .map(product_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(paginate(items, page.limit, |p| p.id.clone()))
    }
}

/// Cuts a list fetched with `limit + 1` rows into a page and its next cursor.
pub(crate) fn paginate<T>(mut items: Vec<T>, limit: u32, id: impl Fn(&T) -> String) -> Page<T> {
    let limit = limit as usize;
    let next_cursor = if items.len() > limit {
        items.truncate(limit);
        items.last().map(id)
    } else {
        None
    };
    Page { items, next_cursor }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_patterns_escape_wildcards() {
        assert_eq!(like_pattern("Kiwi"), "%kiwi%");
        assert_eq!(like_pattern("50%_off\\"), "%50\\%\\_off\\\\%");
    }

    #[test]
    fn pages_carry_a_cursor_only_when_more_remain() {
        let page = paginate(vec![1, 2, 3], 2, |n| n.to_string());
        assert_eq!(page.items, vec![1, 2]);
        assert_eq!(page.next_cursor.as_deref(), Some("2"));
        let page = paginate(vec![1, 2], 2, |n| n.to_string());
        assert_eq!(page.next_cursor, None);
    }
}
