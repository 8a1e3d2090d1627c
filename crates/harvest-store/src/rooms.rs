use chrono::{DateTime, Utc};
use harvest_proto::{Room, RoomStatus};
use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row};

use crate::products::paginate;
use crate::store::{from_ms, from_ms_opt, ms, now};
use crate::{Page, PageRequest, Store, StoreError, new_id};

/// A room to create; it starts `scheduled`.
#[derive(Debug, Clone)]
pub struct NewRoom {
    pub streamer_id: String,
    pub title: String,
    pub description: Option<String>,
    pub scheduled_start: Option<DateTime<Utc>>,
    pub playback_url: Option<String>,
}

/// Which rooms to list.
#[derive(Debug, Clone, Default)]
pub struct RoomFilter {
    pub status: Option<RoomStatus>,
    pub streamer_id: Option<String>,
}

const ROOM_COLUMNS: &str = "id, title, description, streamer_id, status, playback_url, \
                            scheduled_start, started_at, ended_at, created_at";

fn room_from_row(row: &AnyRow) -> Result<Room, sqlx::Error> {
    let status: String = row.try_get("status")?;
    Ok(Room {
        id: row.try_get("id")?,
        title: row.try_get("title")?,
        description: row.try_get("description")?,
        streamer_id: row.try_get("streamer_id")?,
        status: RoomStatus::parse(&status)
            .ok_or_else(|| sqlx::Error::Decode(format!("unknown room status {status:?}").into()))?,
        playback_url: row.try_get("playback_url")?,
        scheduled_start: from_ms_opt(row.try_get("scheduled_start")?),
        started_at: from_ms_opt(row.try_get("started_at")?),
        ended_at: from_ms_opt(row.try_get("ended_at")?),
        created_at: from_ms(row.try_get("created_at")?),
    })
}

impl Store {
    /// Creates a room in status `scheduled`.
    pub async fn create_room(&self, new: NewRoom) -> Result<Room, StoreError> {
        let room = Room {
            id: new_id(),
            title: new.title,
            description: new.description,
            streamer_id: new.streamer_id,
            status: RoomStatus::Scheduled,
            playback_url: new.playback_url,
            scheduled_start: new.scheduled_start,
            started_at: None,
            ended_at: None,
            created_at: now(),
        };
        self.timed(
            sqlx::query(
                "INSERT INTO rooms (id, title, description, streamer_id, status, playback_url, \
                 scheduled_start, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(&room.id)
            .bind(&room.title)
            .bind(&room.description)
            .bind(&room.streamer_id)
            .bind(room.status.as_str())
            .bind(&room.playback_url)
            .bind(room.scheduled_start.map(ms))
            .bind(ms(room.created_at))
            .execute(&self.pool),
        )
        .await?;
        Ok(room)
    }

    /// The room with this id.
    pub async fn room(&self, id: &str) -> Result<Room, StoreError> {
        let row = self
            .timed(
                sqlx::query(AssertSqlSafe(format!(
                    "SELECT {ROOM_COLUMNS} FROM rooms WHERE id = $1"
                )))
                .bind(id)
                .fetch_optional(&self.pool),
            )
            .await?
            .ok_or(StoreError::NotFound)?;
        Ok(room_from_row(&row)?)
    }

    /// Rooms in id (creation) order, filtered, one page at a time.
    pub async fn list_rooms(
        &self,
        filter: &RoomFilter,
        page: &PageRequest,
    ) -> Result<Page<Room>, StoreError> {
        let mut sql = format!("SELECT {ROOM_COLUMNS} FROM rooms WHERE id > $1");
        let mut n = 1;
        if filter.status.is_some() {
            n += 1;
            sql.push_str(&format!(" AND status = ${n}"));
        }
        if filter.streamer_id.is_some() {
            n += 1;
            sql.push_str(&format!(" AND streamer_id = ${n}"));
        }
        n += 1;
        sql.push_str(&format!(" ORDER BY id LIMIT ${n}"));
        let mut query =
            sqlx::query(AssertSqlSafe(sql)).bind(page.after.clone().unwrap_or_default());
        if let Some(status) = filter.status {
            query = query.bind(status.as_str());
        }
        if let Some(streamer) = &filter.streamer_id {
            query = query.bind(streamer.clone());
        }
        let rows = self
            .timed(query.bind(i64::from(page.limit) + 1).fetch_all(&self.pool))
            .await?;
        let items = rows
            .iter()
            .map(room_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(paginate(items, page.limit, |r| r.id.clone()))
    }

    /// `scheduled → live`; [`StoreError::InvalidState`] from any other status.
    pub async fn start_room(&self, id: &str) -> Result<Room, StoreError> {
        self.transition_room(
            id,
            "status = 'live', started_at = $2",
            "status = 'scheduled'",
        )
        .await
    }

    /// `scheduled | live → ended`; [`StoreError::InvalidState`] when already ended.
    pub async fn end_room(&self, id: &str) -> Result<Room, StoreError> {
        self.transition_room(
            id,
            "status = 'ended', ended_at = $2",
            "status IN ('scheduled', 'live')",
        )
        .await
    }

    /// One atomic conditional update; when it matches nothing, tells a missing room
    /// from one in the wrong state.
    async fn transition_room(&self, id: &str, set: &str, when: &str) -> Result<Room, StoreError> {
        let sql =
            format!("UPDATE rooms SET {set} WHERE id = $1 AND {when} RETURNING {ROOM_COLUMNS}");
        let row = self
            .timed(
                sqlx::query(AssertSqlSafe(sql))
                    .bind(id)
                    .bind(ms(now()))
                    .fetch_optional(&self.pool),
            )
            .await?;
        match row {
            Some(row) => Ok(room_from_row(&row)?),
            None => Err(StoreError::InvalidState(self.room(id).await?.status)),
        }
    }

    /// The room's product bag in the order products were added.
    pub async fn room_products(&self, room_id: &str) -> Result<Vec<String>, StoreError> {
        let rows = self
            .timed(
                sqlx::query(
                    "SELECT product_id FROM room_products WHERE room_id = $1 \
                     ORDER BY position, product_id",
                )
                .bind(room_id)
                .fetch_all(&self.pool),
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| r.try_get("product_id"))
            .collect::<Result<_, _>>()?)
    }

    /// The products of the room's bag, in bag order, read in one query.
    pub async fn room_bag(&self, room_id: &str) -> Result<Vec<harvest_proto::Product>, StoreError> {
        let columns = crate::products::PRODUCT_COLUMNS
            .split(", ")
            .map(|c| format!("p.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        let rows = self
            .timed(
                sqlx::query(AssertSqlSafe(format!(
                    "SELECT {columns} FROM room_products rp \
                     JOIN products p ON p.id = rp.product_id \
                     WHERE rp.room_id = $1 ORDER BY rp.position, rp.product_id"
                )))
                .bind(room_id)
                .fetch_all(&self.pool),
            )
            .await?;
        Ok(rows
            .iter()
            .map(crate::products::product_from_row)
            .collect::<Result<_, _>>()?)
    }

    /// Adds a product to the end of the bag; adding one already there changes nothing.
    /// Returns the bag.
    pub async fn add_room_product(
        &self,
        room_id: &str,
        product_id: &str,
    ) -> Result<Vec<String>, StoreError> {
        self.timed(
            sqlx::query(
                "INSERT INTO room_products (room_id, product_id, position) \
                 SELECT $1, $2, COALESCE(MAX(position), 0) + 1 FROM room_products \
                 WHERE room_id = $1 \
                 ON CONFLICT (room_id, product_id) DO NOTHING",
            )
            .bind(room_id)
            .bind(product_id)
            .execute(&self.pool),
        )
        .await?;
        self.room_products(room_id).await
    }

    /// Removes a product from the bag, unpinning it if it was pinned. Returns the bag;
    /// [`StoreError::NotInRoom`] when it was not in the bag.
    pub async fn remove_room_product(
        &self,
        room_id: &str,
        product_id: &str,
    ) -> Result<Vec<String>, StoreError> {
        let removed = self
            .timed(async {
                let mut tx = self.pool.begin().await?;
                let removed =
                    sqlx::query("DELETE FROM room_products WHERE room_id = $1 AND product_id = $2")
                        .bind(room_id)
                        .bind(product_id)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                sqlx::query(
                    "UPDATE rooms SET pinned_product_id = NULL \
                     WHERE id = $1 AND pinned_product_id = $2",
                )
                .bind(room_id)
                .bind(product_id)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(removed)
            })
            .await?;
        if removed == 0 {
            return Err(StoreError::NotInRoom);
        }
        self.room_products(room_id).await
    }

    /// Pins a product of the bag (or unpins with `None`). [`StoreError::NotInRoom`]
    /// when the product is not in the bag.
    pub async fn set_pinned_product(
        &self,
        room_id: &str,
        product_id: Option<&str>,
    ) -> Result<Option<String>, StoreError> {
        let updated = match product_id {
            Some(product_id) => self.timed(
                sqlx::query(
                    "UPDATE rooms SET pinned_product_id = $2 WHERE id = $1 AND EXISTS \
                     (SELECT 1 FROM room_products WHERE room_id = $1 AND product_id = $2)",
                )
                .bind(room_id)
                .bind(product_id)
                .execute(&self.pool),
            ),
            None => self.timed(
                sqlx::query("UPDATE rooms SET pinned_product_id = NULL WHERE id = $1")
                    .bind(room_id)
                    .execute(&self.pool),
            ),
        }
        .await?
        .rows_affected();
        if updated == 0 {
            // Either the room does not exist or the product is not in its bag.
            self.room(room_id).await?;
            return Err(StoreError::NotInRoom);
        }
        Ok(product_id.map(str::to_owned))
    }

    /// The pinned product of a room, if any.
    pub async fn pinned_product(&self, room_id: &str) -> Result<Option<String>, StoreError> {
        let row = self
            .timed(
                sqlx::query("SELECT pinned_product_id FROM rooms WHERE id = $1")
                    .bind(room_id)
                    .fetch_optional(&self.pool),
            )
            .await?
            .ok_or(StoreError::NotFound)?;
        Ok(row.try_get("pinned_product_id")?)
    }
}
