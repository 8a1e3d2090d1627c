use sqlx::Row;

use crate::{Store, StoreError};

/// One room event as the log keeps it: the encoded JSON event, with its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomEventRecord {
    pub room_id: String,
    pub epoch: String,
    pub seq: i64,
    pub event_type: String,
    /// Server time in ms when the event was created.
    pub ts: i64,
    /// The event as JSON (`{"type","seq","ts","data"}`).
    pub body: String,
}

impl Store {
    /// The epoch and latest persisted seq of a room's log, if it has one.
    pub async fn room_log(&self, room_id: &str) -> Result<Option<(String, i64)>, StoreError> {
        let row = self
            .timed(
                sqlx::query("SELECT epoch, last_seq FROM room_logs WHERE room_id = $1")
                    .bind(room_id)
                    .fetch_optional(&self.pool),
            )
            .await?;
        Ok(match row {
            Some(row) => Some((row.try_get("epoch")?, row.try_get("last_seq")?)),
            None => None,
        })
    }

    /// Appends events (in order) in one transaction and moves each room's log position.
    /// Appending an event that is already there changes nothing, so a retried batch is
    /// safe.
    pub async fn append_room_events(&self, events: &[RoomEventRecord]) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        self.timed(async {
            let mut tx = self.pool.begin().await?;
            for e in events {
                sqlx::query(
                    "INSERT INTO room_events (room_id, epoch, seq, event_type, ts, body) \
                     VALUES ($1, $2, $3, $4, $5, $6) \
                     ON CONFLICT (room_id, epoch, seq) DO NOTHING",
                )
                .bind(&e.room_id)
                .bind(&e.epoch)
                .bind(e.seq)
                .bind(&e.event_type)
                .bind(e.ts)
                .bind(&e.body)
                .execute(&mut *tx)
                .await?;
            }
            // The highest seq of each room in the batch moves the room's position
            // (batches may arrive out of order; the position never moves back within
            // an epoch).
            let mut last: Vec<&RoomEventRecord> = Vec::new();
            for e in events {
                match last.iter_mut().find(|l| l.room_id == e.room_id) {
                    Some(l) if l.epoch != e.epoch || l.seq < e.seq => *l = e,
                    Some(_) => {}
                    None => last.push(e),
                }
            }
            for e in last {
                sqlx::query(
                    "INSERT INTO room_logs (room_id, epoch, last_seq) VALUES ($1, $2, $3) \
                     ON CONFLICT (room_id) DO UPDATE SET \
                     last_seq = CASE WHEN room_logs.epoch = excluded.epoch \
                         AND room_logs.last_seq > excluded.last_seq \
                         THEN room_logs.last_seq ELSE excluded.last_seq END, \
                     epoch = excluded.epoch",
                )
                .bind(&e.room_id)
                .bind(&e.epoch)
                .bind(e.seq)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await
        })
        .await
    }

    /// Events of a room's epoch with `seq > after_seq`, in order, at most `limit`.
    pub async fn room_events(
        &self,
        room_id: &str,
        epoch: &str,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<RoomEventRecord>, StoreError> {
        let rows = self
            .timed(
                sqlx::query(
                    "SELECT room_id, epoch, seq, event_type, ts, body FROM room_events \
                     WHERE room_id = $1 AND epoch = $2 AND seq > $3 ORDER BY seq LIMIT $4",
                )
                .bind(room_id)
                .bind(epoch)
                .bind(after_seq)
                .bind(i64::from(limit))
                .fetch_all(&self.pool),
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(RoomEventRecord {
                    room_id: r.try_get("room_id")?,
                    epoch: r.try_get("epoch")?,
                    seq: r.try_get("seq")?,
                    event_type: r.try_get("event_type")?,
                    ts: r.try_get("ts")?,
                    body: r.try_get("body")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// The last `limit` events of a room's epoch, in order (to refill a history).
    pub async fn recent_room_events(
        &self,
        room_id: &str,
        epoch: &str,
        limit: u32,
    ) -> Result<Vec<RoomEventRecord>, StoreError> {
        let last = match self.room_log(room_id).await? {
            Some((e, last)) if e == epoch => last,
            _ => return Ok(Vec::new()),
        };
        self.room_events(room_id, epoch, (last - i64::from(limit)).max(0), limit)
            .await
    }

    /// Deletes room events older than `before_ms`; returns how many.
    pub async fn prune_room_events(&self, before_ms: i64) -> Result<u64, StoreError> {
        Ok(self
            .timed(
                sqlx::query("DELETE FROM room_events WHERE ts < $1")
                    .bind(before_ms)
                    .execute(&self.pool),
            )
            .await?
            .rows_affected())
    }
}
