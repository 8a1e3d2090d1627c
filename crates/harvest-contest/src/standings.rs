//! From metric values to points, totals, ranks and the standings table.
//!
//! Points and totals are computed as exact rationals (weights and the rank step are the
//! decimals written in the rules; every value is an integer or, for judges, an integer
//! ratio), so equal totals are equal whatever the summation order, and the `f64` shown
//! is the exact total rounded once to the nearest double.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use harvest_proto::{Metric, Metrics};
use num_bigint::BigInt;
use num_rational::BigRational;
use num_traits::{ToPrimitive, Zero};

use crate::event::Participant;
use crate::rules::Compiled;

/// A participant's metric values and the time of the last event that changed them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Tally {
    pub paid_gmv: i128,
    pub paid_orders: i64,
    pub distinct_buyers: i64,
    pub likes: i128,
    pub match_wins: i64,
    pub judges_sum: u64,
    pub judges_count: u64,
    pub last_change_ms: Option<i64>,
}

impl Tally {
    /// A metric's value, exact.
    fn value(&self, metric: Metric) -> BigRational {
        let int = |v: i128| BigRational::from_integer(BigInt::from(v));
        match metric {
            Metric::PaidGmv => int(self.paid_gmv),
            Metric::PaidOrders => int(self.paid_orders.into()),
            Metric::DistinctBuyers => int(self.distinct_buyers.into()),
            Metric::Likes => int(self.likes),
            Metric::MatchWins => int(self.match_wins.into()),
            Metric::Judges => judges_mean(self.judges_sum, self.judges_count),
        }
    }

    pub fn metrics(&self) -> Metrics {
        let clamp = |v: i128| i64::try_from(v).unwrap_or(i64::MAX);
        Metrics {
            paid_gmv: clamp(self.paid_gmv),
            paid_orders: self.paid_orders,
            distinct_buyers: self.distinct_buyers,
            likes: clamp(self.likes),
            match_wins: self.match_wins,
            judges: to_f64(&judges_mean(self.judges_sum, self.judges_count)),
        }
    }
}

/// The mean of the judges' scores, 0 when no judge scored.
pub(crate) fn judges_mean(sum: u64, count: u64) -> BigRational {
    if count == 0 {
        BigRational::zero()
    } else {
        BigRational::new(BigInt::from(sum), BigInt::from(count))
    }
}

fn to_f64(x: &BigRational) -> f64 {
    x.to_f64().unwrap_or(f64::MAX)
}

/// A contest's standings, rows in rank order.
#[derive(Debug, Clone, PartialEq)]
pub struct Standings {
    /// True until the contest settled.
    pub provisional: bool,
    /// SHA-256 (hex) of the canonical JSON of the rules.
    pub rules_hash: String,
    pub rows: Vec<StandingsRow>,
}

/// One participant's line: the wire row plus the tie-break time.
#[derive(Debug, Clone, PartialEq)]
pub struct StandingsRow {
    /// Competition rank from 1; participants tied on total, distinct buyers, paid orders
    /// and last-change time share the better rank.
    pub rank: u32,
    pub participant_id: String,
    pub name: String,
    pub qualified: bool,
    /// The exact total rounded once to the nearest `f64`.
    pub total: f64,
    /// All six metrics.
    pub metrics: Metrics,
    /// Points of each scored metric (each the exact points rounded to the nearest `f64`).
    pub points: BTreeMap<Metric, f64>,
    /// When the last event that changed this participant's metric values happened
    /// (milliseconds); `None` when nothing ever changed them.
    pub last_change_ms: Option<i64>,
}

impl Standings {
    /// The wire form (`GET /api/v1/contests/{id}/standings`).
    pub fn to_wire(
        &self,
        contest_id: &str,
        computed_at: DateTime<Utc>,
    ) -> harvest_proto::Standings {
        harvest_proto::Standings {
            contest_id: contest_id.to_owned(),
            provisional: self.provisional,
            computed_at,
            rules_hash: self.rules_hash.clone(),
            rows: self.rows.iter().map(StandingsRow::to_wire).collect(),
        }
    }
}

impl StandingsRow {
    pub fn to_wire(&self) -> harvest_proto::StandingsRow {
        harvest_proto::StandingsRow {
            rank: self.rank,
            participant_id: self.participant_id.clone(),
            name: self.name.clone(),
            qualified: self.qualified,
            total: self.total,
            metrics: self.metrics.clone(),
            points: self.points.clone(),
        }
    }
}

/// Scores and ranks. `tallies[i]` belongs to `participants[i]`.
pub(crate) fn build(
    rules: &Compiled,
    participants: &[Participant],
    tallies: &[Tally],
    provisional: bool,
    rules_hash: &str,
) -> Standings {
    let n = participants.len();
    let mut points: Vec<Vec<(Metric, BigRational)>> = vec![Vec::new(); n];
    for (metric, weight) in &rules.metrics {
        let values: Vec<BigRational> = tallies.iter().map(|t| t.value(*metric)).collect();
        if rules.rank_points {
            for (i, v) in values.iter().enumerate() {
                let p = if v.is_zero() {
                    BigRational::zero()
                } else {
                    let better = values.iter().filter(|w| *w > v).count();
                    let p = weight - &rules.step * BigRational::from_integer(better.into());
                    if p < BigRational::zero() {
                        BigRational::zero()
                    } else {
                        p
                    }
                };
                points[i].push((*metric, p));
            }
        } else if *metric == Metric::Judges {
            let hundred = BigRational::from_integer(100.into());
            for (i, v) in values.iter().enumerate() {
                points[i].push((*metric, weight * v / &hundred));
            }
        } else {
            let max = values
                .iter()
                .max()
                .cloned()
                .unwrap_or_else(BigRational::zero);
            for (i, v) in values.iter().enumerate() {
                let p = if max.is_zero() {
                    BigRational::zero()
                } else {
                    weight * v / &max
                };
                points[i].push((*metric, p));
            }
        }
    }
    let totals: Vec<BigRational> = points
        .iter()
        .map(|ps| ps.iter().fold(BigRational::zero(), |acc, (_, p)| acc + p))
        .collect();
    let qualified: Vec<bool> = tallies
        .iter()
        .map(|t| t.distinct_buyers >= rules.min_distinct_buyers)
        .collect();

    // Better first: qualified, higher total, more distinct buyers, more paid orders,
    // earlier last change (never changed counts as earliest).
    let order = |a: usize, b: usize| -> Ordering {
        let (ta, tb) = (&tallies[a], &tallies[b]);
        qualified[b]
            .cmp(&qualified[a])
            .then_with(|| totals[b].cmp(&totals[a]))
            .then_with(|| tb.distinct_buyers.cmp(&ta.distinct_buyers))
            .then_with(|| tb.paid_orders.cmp(&ta.paid_orders))
            .then_with(|| ta.last_change_ms.cmp(&tb.last_change_ms))
    };
    let mut idx: Vec<usize> = (0..n).collect();
    // Stable: fully tied participants keep the contest's participant order.
    idx.sort_by(|&a, &b| order(a, b));

    let mut rows = Vec::with_capacity(n);
    let mut rank = 0u32;
    for (pos, &i) in idx.iter().enumerate() {
        if pos == 0 || order(idx[pos - 1], i) != Ordering::Equal {
            rank = pos as u32 + 1;
        }
        let p = &participants[i];
        rows.push(StandingsRow {
            rank,
            participant_id: p.id.clone(),
            name: p.name.clone(),
            qualified: qualified[i],
            total: to_f64(&totals[i]),
            metrics: tallies[i].metrics(),
            points: points[i].iter().map(|(m, v)| (*m, to_f64(v))).collect(),
            last_change_ms: tallies[i].last_change_ms,
        });
    }
    Standings {
        provisional,
        rules_hash: rules_hash.to_owned(),
        rows,
    }
}
