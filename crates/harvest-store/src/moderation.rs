use sqlx::Row;

use crate::store::{ms, now};
use crate::{Store, StoreError};

impl Store {
    /// Bans a user from a room (idempotent).
    pub async fn ban_user(&self, room_id: &str, user_id: &str) -> Result<(), StoreError> {
        self.timed(
            sqlx::query(
                "INSERT INTO room_bans (room_id, user_id, created_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (room_id, user_id) DO NOTHING",
            )
            .bind(room_id)
            .bind(user_id)
            .bind(ms(now()))
            .execute(&self.pool),
        )
        .await
        .map(|_| ())
    }

    /// Whether a user is banned from a room.
    pub async fn is_banned(&self, room_id: &str, user_id: &str) -> Result<bool, StoreError> {
        Ok(self
            .timed(
                sqlx::query("SELECT 1 FROM room_bans WHERE room_id = $1 AND user_id = $2")
                    .bind(room_id)
                    .bind(user_id)
                    .fetch_optional(&self.pool),
            )
            .await?
            .is_some())
    }

    /// Mutes a user in a room until `until_ms` (a later mute replaces an earlier one).
    pub async fn mute_user(
        &self,
        room_id: &str,
        user_id: &str,
        until_ms: i64,
    ) -> Result<(), StoreError> {
        self.timed(
            sqlx::query(
                "INSERT INTO room_mutes (room_id, user_id, until_ms) VALUES ($1, $2, $3) \
                 ON CONFLICT (room_id, user_id) DO UPDATE SET until_ms = excluded.until_ms",
            )
            .bind(room_id)
            .bind(user_id)
            .bind(until_ms)
            .execute(&self.pool),
        )
        .await
        .map(|_| ())
    }

    /// The mutes of a room still in force at `now_ms`: (user, until).
    pub async fn room_mutes(
        &self,
        room_id: &str,
        now_ms: i64,
    ) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = self
            .timed(
                sqlx::query(
                    "SELECT user_id, until_ms FROM room_mutes WHERE room_id = $1 AND until_ms > $2",
                )
                .bind(room_id)
                .bind(now_ms)
                .fetch_all(&self.pool),
            )
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("user_id")?, r.try_get("until_ms")?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }
}
