//! PK matches: one metric over a short window between 2 to 9 participants.

use harvest_proto::{Metric, Score};

use crate::engine::{Engine, clamp};
use crate::error::ContestError;

/// What a PK match scores: its participants, its window `[starts_at_ms, ends_at_ms)`
/// and its metric (`paid_gmv`, `paid_orders`, `distinct_buyers` or `likes`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatchSpec {
    pub participant_ids: Vec<String>,
    pub starts_at_ms: i64,
    pub ends_at_ms: i64,
    pub metric: Metric,
}

impl From<&harvest_proto::Match> for MatchSpec {
    fn from(m: &harvest_proto::Match) -> Self {
        Self {
            participant_ids: m.participant_ids.clone(),
            starts_at_ms: m.starts_at.timestamp_millis(),
            ends_at_ms: m.ends_at.timestamp_millis(),
            metric: m.metric,
        }
    }
}

/// How a match stands or ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MatchOutcome {
    /// Still running.
    Running,
    /// Ended with one participant ahead.
    Won { winner_id: String },
    /// Ended with several participants sharing the highest score.
    Draw { winner_ids: Vec<String> },
    /// Ended with every score 0: nobody wins.
    NoScore,
}

impl MatchOutcome {
    /// Decides a match from its scores: the participants with the highest non-zero
    /// score lead; once `ended`, one leader wins, several draw, none means no score.
    pub fn decide(scores: &[Score], ended: bool) -> (Vec<String>, Self) {
        let max = scores.iter().map(|s| s.value).max().unwrap_or(0);
        let leaders: Vec<String> = if max > 0 {
            scores
                .iter()
                .filter(|s| s.value == max)
                .map(|s| s.participant_id.clone())
                .collect()
        } else {
            Vec::new()
        };
        let outcome = match (ended, leaders.as_slice()) {
            (false, _) => Self::Running,
            (true, []) => Self::NoScore,
            (true, [one]) => Self::Won {
                winner_id: one.clone(),
            },
            (true, _) => Self::Draw {
                winner_ids: leaders.clone(),
            },
        };
        (leaders, outcome)
    }

    /// The match's `winner_ids` on the wire: empty while running and when nobody
    /// scored, every leader on a draw.
    pub fn winner_ids(&self) -> Vec<String> {
        match self {
            Self::Running | Self::NoScore => Vec::new(),
            Self::Won { winner_id } => vec![winner_id.clone()],
            Self::Draw { winner_ids } => winner_ids.clone(),
        }
    }
}

/// A match's scores now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatchScores {
    /// One score per participant, in the match's participant order.
    pub scores: Vec<Score>,
    /// The participants with the highest score (empty while every score is 0).
    pub leader_ids: Vec<String>,
    pub outcome: MatchOutcome,
}

impl Engine {
    /// Scores a PK match at time `now_ms` from the contest's record: the orders counted
    /// in the contest (so its exclusions, multipliers and per-buyer caps apply) that
    /// were paid inside the match window, or the likes of the participants' rooms in
    /// the seconds that start inside it. The match has ended once `now_ms ≥ ends_at_ms`.
    pub fn match_scores(&self, spec: &MatchSpec, now_ms: i64) -> Result<MatchScores, ContestError> {
        let n = spec.participant_ids.len();
        if !(2..=9).contains(&n) {
            return Err(ContestError::bad(
                "participant_ids",
                "a match needs 2 to 9 participants",
            ));
        }
        if spec.ends_at_ms <= spec.starts_at_ms {
            return Err(ContestError::bad(
                "ends_at",
                "a match must end after it starts",
            ));
        }
        if matches!(spec.metric, Metric::Judges | Metric::MatchWins) {
            return Err(ContestError::bad(
                "metric",
                "a match scores paid_gmv, paid_orders, distinct_buyers or likes",
            ));
        }
        let mut positions = Vec::with_capacity(n);
        for (i, id) in spec.participant_ids.iter().enumerate() {
            let Some(p) = self.participant_position(id) else {
                return Err(ContestError::bad(
                    format!("participant_ids[{i}]"),
                    format!("unknown participant {id:?}"),
                ));
            };
            if positions.contains(&p) {
                return Err(ContestError::bad(
                    format!("participant_ids[{i}]"),
                    format!("duplicate participant {id:?}"),
                ));
            }
            positions.push(p);
        }
        let inside = |t: i64| spec.starts_at_ms <= t && t < spec.ends_at_ms;
        let scores: Vec<Score> = positions
            .iter()
            .zip(&spec.participant_ids)
            .map(|(&p, id)| {
                let value = match spec.metric {
                    Metric::PaidGmv => clamp(
                        self.counted_orders(p)
                            .filter(|o| inside(o.0))
                            .map(|o| o.2)
                            .sum(),
                    ),
                    Metric::PaidOrders => {
                        self.counted_orders(p).filter(|o| inside(o.0)).count() as i64
                    }
                    Metric::DistinctBuyers => {
                        let mut buyers: Vec<u32> = self
                            .counted_orders(p)
                            .filter(|o| inside(o.0))
                            .map(|o| o.1)
                            .collect();
                        buyers.sort_unstable();
                        buyers.dedup();
                        buyers.len() as i64
                    }
                    Metric::Likes => clamp(
                        self.likes_of(p)
                            .filter(|&(second, _)| inside(second.saturating_mul(1000)))
                            .map(|(_, count)| i128::from(count))
                            .sum(),
                    ),
                    Metric::Judges | Metric::MatchWins => unreachable!("refused above"),
                };
                Score {
                    participant_id: id.clone(),
                    value,
                }
            })
            .collect();
        let (leader_ids, outcome) = MatchOutcome::decide(&scores, now_ms >= spec.ends_at_ms);
        Ok(MatchScores {
            scores,
            leader_ids,
            outcome,
        })
    }
}
