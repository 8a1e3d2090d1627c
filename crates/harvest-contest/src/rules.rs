//! Contest rules: the JSON document (API.md §5), its parsing and validation, and the
//! compiled form the engine scores with.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use foldhash::{HashMap, HashSet};
use harvest_proto::{MAX_SAFE_INT, Metric};
use num_bigint::BigInt;
use num_rational::BigRational;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{ContestError, RuleViolation};

/// The largest product multiplier accepted. With amounts up to 2^53 − 1 minor units a
/// counted amount then stays below 2^63.
pub const MAX_MULTIPLIER: f64 = 1000.0;

/// A contest's rules: its window, its settlement grace period and its scoring.
///
/// The keys and their nesting are those of the contest body of `POST /api/v1/contests`
/// (API.md §5), so the field paths of errors (`scoring.metrics[1].weight`) name the
/// same place in that body. Unknown keys are refused; omitted keys of `scoring` take the
/// defaults of the API (see [`Scoring::default`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rules {
    /// Start of the window, inclusive.
    pub starts_at: DateTime<Utc>,
    /// End of the window, exclusive.
    pub ends_at: DateTime<Utc>,
    /// Seconds after `ends_at` before the contest may settle; refunds made before
    /// settlement still count.
    #[serde(default, deserialize_with = "safe_uint")]
    pub settle_grace_s: i64,
    pub scoring: Scoring,
}

/// The `scoring` object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Scoring {
    pub mode: Mode,
    pub metrics: Vec<MetricWeight>,
    /// Points lost per rank place in `rank_points` mode.
    pub rank_points_step: f64,
    /// When set, only orders of these products count.
    pub eligible_product_ids: Option<Vec<String>>,
    /// Product id → multiplier (at most 4 decimals), applied exactly to the amount and
    /// then floored to minor units. Products not listed count at 1.
    pub product_multipliers: BTreeMap<String, f64>,
    /// Exclude orders whose buyer is the participant's owner or one of its members.
    pub exclude_self_purchase: bool,
    /// Cap of the counted amount per (participant, buyer), minor units; `None`: no cap.
    #[serde(deserialize_with = "opt_safe_int")]
    pub per_buyer_gmv_cap: Option<i64>,
    /// Participants with fewer distinct buyers are listed after the qualified ones.
    #[serde(deserialize_with = "safe_int")]
    pub min_distinct_buyers: i64,
}

impl Default for Scoring {
    /// The values API.md §5 shows: weighted, `paid_gmv` 60 and `judges` 40, step 0.5,
    /// no product filter, no multipliers, self-purchases excluded, no cap, no minimum.
    fn default() -> Self {
        Self {
            mode: Mode::Weighted,
            metrics: vec![
                MetricWeight::new(Metric::PaidGmv, 60.0),
                MetricWeight::new(Metric::Judges, 40.0),
            ],
            rank_points_step: 0.5,
            eligible_product_ids: None,
            product_multipliers: BTreeMap::new(),
            exclude_self_purchase: true,
            per_buyer_gmv_cap: None,
            min_distinct_buyers: 0,
        }
    }
}

/// A scoring mode. Any string parses, so that an unknown mode is reported by
/// [`Rules::validate`] as `invalid_rules` rather than as a malformed body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub enum Mode {
    /// `points = weight × value / max value` (judges: `/ 100`).
    #[default]
    Weighted,
    /// `points = max(0, weight − step × (rank − 1))`, 0 for a value of 0.
    RankPoints,
    /// A name this engine does not know.
    Unknown(String),
}

impl Mode {
    pub fn as_str(&self) -> &str {
        match self {
            Self::Weighted => "weighted",
            Self::RankPoints => "rank_points",
            Self::Unknown(name) => name,
        }
    }
}

impl From<&str> for Mode {
    fn from(s: &str) -> Self {
        match s {
            "weighted" => Self::Weighted,
            "rank_points" => Self::RankPoints,
            other => Self::Unknown(other.to_owned()),
        }
    }
}

impl Serialize for Mode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Mode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        Ok(Self::from(name.as_str()))
    }
}

/// A metric name in the rules. Any string parses; unknown ones are refused by
/// [`Rules::validate`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum MetricName {
    Known(Metric),
    Unknown(String),
}

impl MetricName {
    pub fn as_str(&self) -> &str {
        match self {
            Self::Known(metric) => metric.as_str(),
            Self::Unknown(name) => name,
        }
    }

    pub fn metric(&self) -> Option<Metric> {
        match self {
            Self::Known(metric) => Some(*metric),
            Self::Unknown(_) => None,
        }
    }
}

impl From<Metric> for MetricName {
    fn from(metric: Metric) -> Self {
        Self::Known(metric)
    }
}

impl From<&str> for MetricName {
    fn from(s: &str) -> Self {
        match Metric::parse(s) {
            Some(metric) => Self::Known(metric),
            None => Self::Unknown(s.to_owned()),
        }
    }
}

impl fmt::Display for MetricName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for MetricName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for MetricName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        Ok(Self::from(name.as_str()))
    }
}

/// One scored metric and its weight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricWeight {
    pub metric: MetricName,
    pub weight: f64,
}

impl MetricWeight {
    pub fn new(metric: Metric, weight: f64) -> Self {
        Self {
            metric: MetricName::Known(metric),
            weight,
        }
    }
}

impl Rules {
    /// Rules with the given window and scoring, no grace period.
    pub fn new(starts_at: DateTime<Utc>, ends_at: DateTime<Utc>, scoring: Scoring) -> Self {
        Self {
            starts_at,
            ends_at,
            settle_grace_s: 0,
            scoring,
        }
    }

    /// Parses a JSON document. A malformed document, an unknown key, a missing or
    /// mistyped value, or an integer out of range is a [`ContestError::BadRequest`]
    /// naming the field (`scoring.metrics[1].weight`). The rules still need
    /// [`Rules::validate`].
    pub fn from_json(bytes: &[u8]) -> Result<Self, ContestError> {
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let rules: Self = serde_path_to_error::deserialize(&mut de).map_err(|err| {
            let path = err.path().to_string();
            let inner = err.into_inner();
            match inner.classify() {
                serde_json::error::Category::Data => data_error(&path, &inner.to_string()),
                _ => ContestError::BadRequest {
                    field: None,
                    message: format!("malformed JSON: {}", strip_position(&inner.to_string())),
                },
            }
        })?;
        de.end().map_err(|e| ContestError::BadRequest {
            field: None,
            message: format!("malformed JSON: {}", strip_position(&e.to_string())),
        })?;
        Ok(rules)
    }

    /// The rules as JSON (every key present, defaults included).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("rules always serialize")
    }

    /// Checks the rules, with every product id taken as known. See
    /// [`Rules::validate_with`].
    pub fn validate(&self) -> Result<(), ContestError> {
        self.validate_with(|_| true)
    }

    /// Checks the rules against API.md §5.
    ///
    /// A window whose `ends_at` is not after `starts_at` is a [`ContestError::BadRequest`]
    /// on `ends_at`. Everything wrong with `scoring` is one
    /// [`ContestError::InvalidRules`] listing each problem in document order with its
    /// field path: an unknown mode or metric, no metrics, a duplicate metric, a weight
    /// ≤ 0, a negative `rank_points_step` or `min_distinct_buyers`, a
    /// `per_buyer_gmv_cap` ≤ 0, a multiplier < 0, above [`MAX_MULTIPLIER`] or with more
    /// than 4 decimals, and a product id for which `is_known_product` answers false.
    pub fn validate_with(
        &self,
        is_known_product: impl Fn(&str) -> bool,
    ) -> Result<(), ContestError> {
        if self.ends_at <= self.starts_at {
            return Err(ContestError::BadRequest {
                field: Some("ends_at".into()),
                message: "ends_at must be after starts_at".into(),
            });
        }
        let mut errors = Vec::new();
        let mut bad =
            |field: String, message: String| errors.push(RuleViolation { field, message });
        let s = &self.scoring;
        if let Mode::Unknown(name) = &s.mode {
            bad(
                "scoring.mode".into(),
                format!("unknown mode {name:?}: expected weighted or rank_points"),
            );
        }
        if s.metrics.is_empty() {
            bad(
                "scoring.metrics".into(),
                "at least one metric is required".into(),
            );
        }
        let mut seen = Vec::new();
        for (i, mw) in s.metrics.iter().enumerate() {
            match &mw.metric {
                MetricName::Unknown(name) => bad(
                    format!("scoring.metrics[{i}].metric"),
                    format!(
                        "unknown metric {name:?}: expected one of paid_gmv, paid_orders, \
                         distinct_buyers, likes, match_wins, judges"
                    ),
                ),
                MetricName::Known(metric) if seen.contains(metric) => bad(
                    format!("scoring.metrics[{i}].metric"),
                    format!("duplicate metric {}", metric.as_str()),
                ),
                MetricName::Known(metric) => seen.push(*metric),
            }
            if !(mw.weight.is_finite() && mw.weight > 0.0) {
                bad(
                    format!("scoring.metrics[{i}].weight"),
                    "weight must be greater than 0".into(),
                );
            }
        }
        if !(s.rank_points_step.is_finite() && s.rank_points_step >= 0.0) {
            bad(
                "scoring.rank_points_step".into(),
                "rank_points_step must be at least 0".into(),
            );
        }
        if let Some(ids) = &s.eligible_product_ids {
            for (i, id) in ids.iter().enumerate() {
                if !is_known_product(id) {
                    bad(
                        format!("scoring.eligible_product_ids[{i}]"),
                        format!("unknown product {id:?}"),
                    );
                }
            }
        }
        for (id, &multiplier) in &s.product_multipliers {
            let field = format!("scoring.product_multipliers.{id}");
            if !is_known_product(id) {
                bad(field.clone(), format!("unknown product {id:?}"));
            }
            if let Err(message) = multiplier_e4(multiplier) {
                bad(field, message);
            }
        }
        if let Some(cap) = s.per_buyer_gmv_cap
            && cap <= 0
        {
            bad(
                "scoring.per_buyer_gmv_cap".into(),
                "per_buyer_gmv_cap must be greater than 0 (null for no cap)".into(),
            );
        }
        if s.min_distinct_buyers < 0 {
            bad(
                "scoring.min_distinct_buyers".into(),
                "min_distinct_buyers must be at least 0".into(),
            );
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ContestError::InvalidRules(errors))
        }
    }

    /// `starts_at` in milliseconds since the Unix epoch.
    pub fn starts_at_ms(&self) -> i64 {
        self.starts_at.timestamp_millis()
    }

    /// `ends_at` in milliseconds since the Unix epoch.
    pub fn ends_at_ms(&self) -> i64 {
        self.ends_at.timestamp_millis()
    }

    /// The earliest settlement time, `ends_at + settle_grace_s`, in milliseconds.
    pub fn settles_at_ms(&self) -> i64 {
        self.ends_at_ms()
            .saturating_add(self.settle_grace_s.saturating_mul(1000))
    }

    /// Validates and compiles the rules into the form the engine scores with.
    pub(crate) fn compile(&self) -> Result<Compiled, ContestError> {
        self.validate()?;
        let s = &self.scoring;
        let metrics = s
            .metrics
            .iter()
            .map(|mw| {
                let metric = mw.metric.metric().expect("validated");
                (metric, decimal(mw.weight))
            })
            .collect();
        let multipliers = s
            .product_multipliers
            .iter()
            .map(|(id, &m)| (id.clone(), multiplier_e4(m).expect("validated")))
            .collect();
        let eligible = s
            .eligible_product_ids
            .as_ref()
            .map(|ids| ids.iter().cloned().collect::<HashSet<String>>());
        Ok(Compiled {
            starts_at: self.starts_at_ms(),
            ends_at: self.ends_at_ms(),
            settles_at: self.settles_at_ms(),
            rank_points: s.mode == Mode::RankPoints,
            metrics,
            step: decimal(s.rank_points_step),
            eligible,
            multipliers,
            exclude_self_purchase: s.exclude_self_purchase,
            cap: s.per_buyer_gmv_cap.map(i128::from),
            min_distinct_buyers: s.min_distinct_buyers,
        })
    }
}

/// Rules in the form scoring uses: times in milliseconds, weights as exact rationals,
/// multipliers as integer ten-thousandths.
#[derive(Debug, Clone)]
pub(crate) struct Compiled {
    pub starts_at: i64,
    pub ends_at: i64,
    pub settles_at: i64,
    pub rank_points: bool,
    pub metrics: Vec<(Metric, BigRational)>,
    pub step: BigRational,
    pub eligible: Option<HashSet<String>>,
    pub multipliers: HashMap<String, u32>,
    pub exclude_self_purchase: bool,
    pub cap: Option<i128>,
    pub min_distinct_buyers: i64,
}

impl Compiled {
    pub fn in_window(&self, t: i64) -> bool {
        self.starts_at <= t && t < self.ends_at
    }

    pub fn eligible(&self, product_id: &str) -> bool {
        self.eligible
            .as_ref()
            .is_none_or(|set| set.contains(product_id))
    }

    /// The multiplier of a product in ten-thousandths.
    pub fn multiplier_e4(&self, product_id: &str) -> u32 {
        self.multipliers.get(product_id).copied().unwrap_or(10_000)
    }
}

/// `floor(amount × multiplier)` with the multiplier in ten-thousandths, exact.
pub(crate) fn apply_multiplier(amount: i64, multiplier_e4: u32) -> i128 {
    (i128::from(amount) * i128::from(multiplier_e4)).div_euclid(10_000)
}

/// The decimal a finite float was written as: the shortest decimal that reads back as
/// the same double (what JSON and RFC 8785 print), as an exact rational. So the weights
/// 0.1 and 0.2 add up to exactly the weight 0.3.
pub(crate) fn decimal(x: f64) -> BigRational {
    let text = format!("{x:e}");
    let (mantissa, exponent) = text.split_once('e').expect("`{:e}` writes an exponent");
    let exponent: i32 = exponent.parse().expect("integer exponent");
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits: BigInt = format!("{int}{frac}").parse().expect("decimal digits");
    let shift = exponent - frac.len() as i32;
    let ten = BigInt::from(10u8);
    if shift >= 0 {
        BigRational::from_integer(digits * num_traits::pow(ten, shift as usize))
    } else {
        BigRational::new(digits, num_traits::pow(ten, shift.unsigned_abs() as usize))
    }
}

/// A multiplier in integer ten-thousandths, or why it is refused.
///
/// JSON numbers arrive as the nearest double, so "at most 4 decimals" means the double
/// lies within a rounding error of a multiple of 0.0001; the multiple is then the exact
/// multiplier (`1.2345` is 12345/10000, not the double nearest to it).
pub(crate) fn multiplier_e4(m: f64) -> Result<u32, String> {
    if !m.is_finite() || m < 0.0 {
        return Err("multiplier must be at least 0".into());
    }
    if m > MAX_MULTIPLIER {
        return Err(format!("multiplier must be at most {MAX_MULTIPLIER}"));
    }
    let scaled = m * 10_000.0;
    let rounded = scaled.round();
    if (scaled - rounded).abs() > 1e-6 * rounded.max(1.0) {
        return Err("multiplier must have at most 4 decimals".into());
    }
    Ok(rounded as u32)
}

fn safe_uint<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    let n = serde_json::Number::deserialize(d)?;
    match n.as_i64() {
        Some(v) if (0..=MAX_SAFE_INT).contains(&v) => Ok(v),
        _ => Err(serde::de::Error::custom(format!(
            "expected an integer in 0..={MAX_SAFE_INT}, got {n}"
        ))),
    }
}

fn safe_int<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    let n = serde_json::Number::deserialize(d)?;
    match n.as_i64() {
        Some(v) if (-MAX_SAFE_INT..=MAX_SAFE_INT).contains(&v) => Ok(v),
        _ => Err(serde::de::Error::custom(format!(
            "expected an integer in -{MAX_SAFE_INT}..={MAX_SAFE_INT}, got {n}"
        ))),
    }
}

fn opt_safe_int<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    #[derive(Deserialize)]
    struct Wrap(#[serde(deserialize_with = "safe_int")] i64);
    Ok(Option::<Wrap>::deserialize(d)?.map(|Wrap(v)| v))
}

/// The 400 of a well-formed document with a wrong value. serde reports unknown and
/// missing fields at their parent's path, so the field's own name is appended.
fn data_error(path: &str, message: &str) -> ContestError {
    let message = strip_position(message);
    let named = ["unknown field `", "missing field `"]
        .iter()
        .find_map(|prefix| message.strip_prefix(prefix))
        .and_then(|rest| rest.split('`').next());
    let field = match (path, named) {
        ("." | "", Some(name)) => name.to_owned(),
        (path, Some(name)) if path == name || path.ends_with(&format!(".{name}")) => {
            path.to_owned()
        }
        (parent, Some(name)) => format!("{parent}.{name}"),
        ("." | "", None) => String::new(),
        (path, None) => path.to_owned(),
    };
    ContestError::BadRequest {
        field: (!field.is_empty()).then_some(field),
        message: message.to_owned(),
    }
}

fn strip_position(message: &str) -> &str {
    match message.rfind(" at line ") {
        Some(i) => &message[..i],
        None => message,
    }
}
