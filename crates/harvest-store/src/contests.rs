//! Contests, PK matches, judges' entries and like tallies.
//!
//! The store keeps a contest's rules and participants as JSON text (their meaning
//! belongs to the contest engine) and the inputs of its record: judges' entries, match
//! results and per-second like tallies; orders are read from the orders table. The
//! frozen results are written once, at settlement.

use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row};

use harvest_proto::Order;

use crate::store::{ms, now};
use crate::{Store, StoreError, new_id};

/// A contest to create; the store assigns its id and creation time.
#[derive(Debug, Clone)]
pub struct NewContest {
    pub organizer_id: String,
    pub title: String,
    /// ms since the Unix epoch.
    pub starts_at: i64,
    pub ends_at: i64,
    pub settle_grace_s: i64,
    /// The rules as JSON.
    pub rules: String,
    /// The participants as a JSON array.
    pub participants: String,
    /// `(room_id, participant_id)` of every participating room.
    pub rooms: Vec<(String, String)>,
}

/// A stored contest. Times are ms since the Unix epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContestRow {
    pub id: String,
    pub organizer_id: String,
    pub title: String,
    pub starts_at: i64,
    pub ends_at: i64,
    pub settle_grace_s: i64,
    pub rules: String,
    pub participants: String,
    pub created_at: i64,
    pub settled_at: Option<i64>,
    /// The frozen results, once settled.
    pub results: Option<String>,
}

impl ContestRow {
    /// When the contest may settle: `ends_at + settle_grace_s`.
    pub fn settles_at(&self) -> i64 {
        self.ends_at
            .saturating_add(self.settle_grace_s.saturating_mul(1000))
    }
}

/// Which match events a match's rooms have been sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MatchPhase {
    /// Created, not started.
    Scheduled,
    /// `pk.started` was published.
    Live,
    /// `pk.ended` was published; scores and winners are frozen.
    Ended,
}

impl MatchPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Scheduled => "scheduled",
            Self::Live => "live",
            Self::Ended => "ended",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "scheduled" => Some(Self::Scheduled),
            "live" => Some(Self::Live),
            "ended" => Some(Self::Ended),
            _ => None,
        }
    }
}

/// A PK match to create.
#[derive(Debug, Clone)]
pub struct NewMatch {
    pub contest_id: String,
    pub participant_ids: Vec<String>,
    pub starts_at: i64,
    pub ends_at: i64,
    pub metric: String,
}

/// A stored PK match. Times are ms since the Unix epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatchRow {
    pub id: String,
    pub contest_id: String,
    pub participant_ids: Vec<String>,
    pub starts_at: i64,
    pub ends_at: i64,
    pub metric: String,
    pub phase: MatchPhase,
    /// The final scores as JSON, once ended.
    pub scores: Option<String>,
    /// The winners, once ended.
    pub winner_ids: Option<Vec<String>>,
    pub created_at: i64,
}

/// One judge's entry as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JudgeEntryRow {
    pub judge: String,
    /// Participant id → score, as a JSON object.
    pub scores: String,
    pub at: i64,
}

/// The likes of one room in one second (Unix seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LikeTally {
    pub room_id: String,
    pub second: i64,
    pub count: i64,
}

const CONTEST_COLUMNS: &str = "id, organizer_id, title, starts_at, ends_at, settle_grace_s, \
     rules, participants, created_at, settled_at, results";

const MATCH_COLUMNS: &str = "id, contest_id, participant_ids, starts_at, ends_at, metric, \
     phase, scores, winner_ids, created_at";

fn contest_from_row(row: &AnyRow) -> Result<ContestRow, sqlx::Error> {
    Ok(ContestRow {
        id: row.try_get("id")?,
        organizer_id: row.try_get("organizer_id")?,
        title: row.try_get("title")?,
        starts_at: row.try_get("starts_at")?,
        ends_at: row.try_get("ends_at")?,
        settle_grace_s: row.try_get("settle_grace_s")?,
        rules: row.try_get("rules")?,
        participants: row.try_get("participants")?,
        created_at: row.try_get("created_at")?,
        settled_at: row.try_get("settled_at")?,
        results: row.try_get("results")?,
    })
}

fn json_list(column: &str, text: &str) -> Result<Vec<String>, sqlx::Error> {
    serde_json::from_str(text).map_err(|e| sqlx::Error::ColumnDecode {
        index: column.into(),
        source: Box::new(e),
    })
}

fn match_from_row(row: &AnyRow) -> Result<MatchRow, sqlx::Error> {
    let phase: String = row.try_get("phase")?;
    let participants: String = row.try_get("participant_ids")?;
    let winners: Option<String> = row.try_get("winner_ids")?;
    Ok(MatchRow {
        id: row.try_get("id")?,
        contest_id: row.try_get("contest_id")?,
        participant_ids: json_list("participant_ids", &participants)?,
        starts_at: row.try_get("starts_at")?,
        ends_at: row.try_get("ends_at")?,
        metric: row.try_get("metric")?,
        phase: MatchPhase::parse(&phase).ok_or_else(|| sqlx::Error::ColumnDecode {
            index: "phase".into(),
            source: format!("unknown match phase {phase:?}").into(),
        })?,
        scores: row.try_get("scores")?,
        winner_ids: winners.map(|w| json_list("winner_ids", &w)).transpose()?,
        created_at: row.try_get("created_at")?,
    })
}

/// `$first, $first+1, ...` for `n` values.
fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Store {
    /// Creates a contest and its room index in one transaction.
    pub async fn create_contest(&self, new: NewContest) -> Result<ContestRow, StoreError> {
        let contest = ContestRow {
            id: new_id(),
            organizer_id: new.organizer_id,
            title: new.title,
            starts_at: new.starts_at,
            ends_at: new.ends_at,
            settle_grace_s: new.settle_grace_s,
            rules: new.rules,
            participants: new.participants,
            created_at: ms(now()),
            settled_at: None,
            results: None,
        };
        self.timed(async {
            let mut tx = self.pool.begin().await?;
            sqlx::query(
                "INSERT INTO contests (id, organizer_id, title, starts_at, ends_at, \
                 settle_grace_s, rules, participants, created_at, settled_at, results) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, NULL, NULL)",
            )
            .bind(&contest.id)
            .bind(&contest.organizer_id)
            .bind(&contest.title)
            .bind(contest.starts_at)
            .bind(contest.ends_at)
            .bind(contest.settle_grace_s)
            .bind(&contest.rules)
            .bind(&contest.participants)
            .bind(contest.created_at)
            .execute(&mut *tx)
            .await?;
            for (room_id, participant_id) in &new.rooms {
                sqlx::query(
                    "INSERT INTO contest_rooms (contest_id, room_id, participant_id) \
                     VALUES ($1, $2, $3)",
                )
                .bind(&contest.id)
                .bind(room_id)
                .bind(participant_id)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await
        })
        .await?;
        Ok(contest)
    }

    /// One contest, or [`StoreError::NotFound`].
    pub async fn contest(&self, id: &str) -> Result<ContestRow, StoreError> {
        let sql = format!("SELECT {CONTEST_COLUMNS} FROM contests WHERE id = $1");
        let row = self
            .timed(
                sqlx::query(AssertSqlSafe(sql))
                    .bind(id)
                    .fetch_optional(&self.pool),
            )
            .await?
            .ok_or(StoreError::NotFound)?;
        Ok(contest_from_row(&row)?)
    }

    /// Every contest not settled yet, in creation order.
    pub async fn open_contests(&self) -> Result<Vec<ContestRow>, StoreError> {
        let sql =
            format!("SELECT {CONTEST_COLUMNS} FROM contests WHERE settled_at IS NULL ORDER BY id");
        let rows = self
            .timed(sqlx::query(AssertSqlSafe(sql)).fetch_all(&self.pool))
            .await?;
        Ok(rows
            .iter()
            .map(contest_from_row)
            .collect::<Result<_, _>>()?)
    }

    /// The ids of the contests a room takes part in, in creation order.
    pub async fn room_contests(&self, room_id: &str) -> Result<Vec<String>, StoreError> {
        let rows = self
            .timed(
                sqlx::query(
                    "SELECT contest_id FROM contest_rooms WHERE room_id = $1 ORDER BY contest_id",
                )
                .bind(room_id)
                .fetch_all(&self.pool),
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| r.try_get("contest_id"))
            .collect::<Result<_, _>>()?)
    }

    /// Stores a contest's frozen results; true for the one caller that settled it (the
    /// first settlement stands).
    pub async fn settle_contest(
        &self,
        id: &str,
        settled_at: i64,
        results: &str,
    ) -> Result<bool, StoreError> {
        let done = self
            .timed(
                sqlx::query(
                    "UPDATE contests SET settled_at = $1, results = $2 \
                     WHERE id = $3 AND settled_at IS NULL",
                )
                .bind(settled_at)
                .bind(results)
                .bind(id)
                .execute(&self.pool),
            )
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Takes or renews the lease that lets `node` push a contest's live scores until
    /// `until_ms`; true when `node` holds it (it was free, lapsed, or already its own).
    pub async fn claim_contest_pusher(
        &self,
        id: &str,
        node: &str,
        now_ms: i64,
        until_ms: i64,
    ) -> Result<bool, StoreError> {
        let done = self
            .timed(
                sqlx::query(
                    "UPDATE contests SET pusher = $1, pusher_until = $2 WHERE id = $3 \
                     AND (pusher IS NULL OR pusher = $1 OR pusher_until < $4)",
                )
                .bind(node)
                .bind(until_ms)
                .bind(id)
                .bind(now_ms)
                .execute(&self.pool),
            )
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Creates a PK match in phase `scheduled`.
    pub async fn create_match(&self, new: NewMatch) -> Result<MatchRow, StoreError> {
        let row = MatchRow {
            id: new_id(),
            contest_id: new.contest_id,
            participant_ids: new.participant_ids,
            starts_at: new.starts_at,
            ends_at: new.ends_at,
            metric: new.metric,
            phase: MatchPhase::Scheduled,
            scores: None,
            winner_ids: None,
            created_at: ms(now()),
        };
        let participants = serde_json::to_string(&row.participant_ids).unwrap_or_default();
        self.timed(
            sqlx::query(
                "INSERT INTO contest_matches (id, contest_id, participant_ids, starts_at, \
                 ends_at, metric, phase, scores, winner_ids, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, NULL, NULL, $8)",
            )
            .bind(&row.id)
            .bind(&row.contest_id)
            .bind(participants)
            .bind(row.starts_at)
            .bind(row.ends_at)
            .bind(&row.metric)
            .bind(row.phase.as_str())
            .bind(row.created_at)
            .execute(&self.pool),
        )
        .await?;
        Ok(row)
    }

    /// One match, or [`StoreError::NotFound`].
    pub async fn contest_match(&self, id: &str) -> Result<MatchRow, StoreError> {
        let sql = format!("SELECT {MATCH_COLUMNS} FROM contest_matches WHERE id = $1");
        let row = self
            .timed(
                sqlx::query(AssertSqlSafe(sql))
                    .bind(id)
                    .fetch_optional(&self.pool),
            )
            .await?
            .ok_or(StoreError::NotFound)?;
        Ok(match_from_row(&row)?)
    }

    /// A contest's matches in creation order.
    pub async fn contest_matches(&self, contest_id: &str) -> Result<Vec<MatchRow>, StoreError> {
        let sql = format!(
            "SELECT {MATCH_COLUMNS} FROM contest_matches WHERE contest_id = $1 ORDER BY id"
        );
        let rows = self
            .timed(
                sqlx::query(AssertSqlSafe(sql))
                    .bind(contest_id)
                    .fetch_all(&self.pool),
            )
            .await?;
        Ok(rows.iter().map(match_from_row).collect::<Result<_, _>>()?)
    }

    /// Moves a match from phase `from` to `to`, storing its final scores and winners
    /// when given; true for the one caller that made the move.
    pub async fn advance_match_phase(
        &self,
        id: &str,
        from: MatchPhase,
        to: MatchPhase,
        result: Option<(&str, &[String])>,
    ) -> Result<bool, StoreError> {
        let (scores, winners) = match result {
            Some((scores, winners)) => (
                Some(scores.to_owned()),
                Some(serde_json::to_string(winners).unwrap_or_default()),
            ),
            None => (None, None),
        };
        let done = self
            .timed(
                sqlx::query(
                    "UPDATE contest_matches SET phase = $1, \
                     scores = COALESCE($2, scores), winner_ids = COALESCE($3, winner_ids) \
                     WHERE id = $4 AND phase = $5",
                )
                .bind(to.as_str())
                .bind(scores)
                .bind(winners)
                .bind(id)
                .bind(from.as_str())
                .execute(&self.pool),
            )
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Appends a judge's entry.
    pub async fn add_judge_entry(
        &self,
        contest_id: &str,
        judge: &str,
        scores: &str,
        at_ms: i64,
    ) -> Result<(), StoreError> {
        self.timed(
            sqlx::query(
                "INSERT INTO contest_judge_entries (id, contest_id, judge, scores, at) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(new_id())
            .bind(contest_id)
            .bind(judge)
            .bind(scores)
            .bind(at_ms)
            .execute(&self.pool),
        )
        .await?;
        Ok(())
    }

    /// Every judge's entry of a contest, in the order received.
    pub async fn judge_entries(&self, contest_id: &str) -> Result<Vec<JudgeEntryRow>, StoreError> {
        let rows = self
            .timed(
                sqlx::query(
                    "SELECT judge, scores, at FROM contest_judge_entries \
                     WHERE contest_id = $1 ORDER BY id",
                )
                .bind(contest_id)
                .fetch_all(&self.pool),
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(JudgeEntryRow {
                    judge: r.try_get("judge")?,
                    scores: r.try_get("scores")?,
                    at: r.try_get("at")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// Adds like tallies (summed into any tally already stored for the room and
    /// second), in one transaction.
    pub async fn add_like_tallies(&self, tallies: &[LikeTally]) -> Result<(), StoreError> {
        if tallies.is_empty() {
            return Ok(());
        }
        let mut ordered: Vec<&LikeTally> = tallies.iter().collect();
        ordered.sort_by(|a, b| (&a.room_id, a.second).cmp(&(&b.room_id, b.second)));
        self.timed(async {
            let mut tx = self.pool.begin().await?;
            for t in ordered {
                sqlx::query(
                    "INSERT INTO room_like_tallies (room_id, second, count) VALUES ($1, $2, $3) \
                     ON CONFLICT (room_id, second) \
                     DO UPDATE SET count = room_like_tallies.count + excluded.count",
                )
                .bind(&t.room_id)
                .bind(t.second)
                .bind(t.count)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await
        })
        .await
    }

    /// The like tallies of some rooms for the seconds in `[from_second, to_second)`,
    /// by room then second.
    pub async fn like_tallies(
        &self,
        room_ids: &[String],
        from_second: i64,
        to_second: i64,
    ) -> Result<Vec<LikeTally>, StoreError> {
        if room_ids.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT room_id, second, count FROM room_like_tallies \
             WHERE second >= $1 AND second < $2 AND room_id IN ({}) ORDER BY room_id, second",
            placeholders(3, room_ids.len())
        );
        let mut query = sqlx::query(AssertSqlSafe(sql))
            .bind(from_second)
            .bind(to_second);
        for room in room_ids {
            query = query.bind(room);
        }
        let rows = self.timed(query.fetch_all(&self.pool)).await?;
        rows.iter()
            .map(|r| {
                Ok(LikeTally {
                    room_id: r.try_get("room_id")?,
                    second: r.try_get("second")?,
                    count: r.try_get("count")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// The orders paid in some rooms at or after `paid_from_ms`, oldest first.
    pub async fn orders_in_rooms(
        &self,
        room_ids: &[String],
        paid_from_ms: i64,
    ) -> Result<Vec<Order>, StoreError> {
        if room_ids.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT {} FROM orders WHERE paid_at >= $1 AND room_id IN ({}) ORDER BY paid_at, id",
            crate::orders::ORDER_COLUMNS,
            placeholders(2, room_ids.len())
        );
        let mut query = sqlx::query(AssertSqlSafe(sql)).bind(paid_from_ms);
        for room in room_ids {
            query = query.bind(room);
        }
        let rows = self.timed(query.fetch_all(&self.pool)).await?;
        Ok(rows
            .iter()
            .map(crate::orders::order_from_row)
            .collect::<Result<_, _>>()?)
    }
}
