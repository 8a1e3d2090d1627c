//! Contests, PK matches, judges' scores, standings, settlement and the audit (API.md §5).

use std::collections::{BTreeMap, HashSet};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use harvest_contest::Rules;
use harvest_proto::{Audit, Contest, ErrorBody, Match, Metric, Standings};
use harvest_store::StoreError;
use serde::Deserialize;
use utoipa::ToSchema;

use crate::auth::{Role, User};
use crate::contests::{NewContestInput, NewMatchInput, NewParticipant};
use crate::error::ApiError;
use crate::extract::{ApiJson, safe_uint};
use crate::state::AppState;

/// A participant in the body of `POST /api/v1/contests`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ParticipantBody {
    /// Unique within the contest.
    pub name: String,
    /// The streamer who owns the participant's rooms.
    pub owner_id: String,
    /// Team members; their purchases are self-purchases.
    #[serde(default)]
    pub member_ids: Vec<String>,
    /// One or more rooms of the owner.
    pub room_ids: Vec<String>,
}

/// Body of `POST /api/v1/contests`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateContest {
    pub title: String,
    /// Start of the window, inclusive.
    pub starts_at: DateTime<Utc>,
    /// End of the window, exclusive; after `starts_at`.
    pub ends_at: DateTime<Utc>,
    /// Seconds after `ends_at` before settlement (default 0).
    #[serde(default, deserialize_with = "opt_safe_uint")]
    #[schema(value_type = Option<i64>, minimum = 0, maximum = 31536000)]
    pub settle_grace_s: Option<i64>,
    /// At least two.
    pub participants: Vec<ParticipantBody>,
    /// The scoring rules (API.md §5): `mode`, `metrics`, `rank_points_step`,
    /// `eligible_product_ids`, `product_multipliers`, `exclude_self_purchase`,
    /// `per_buyer_gmv_cap`, `min_distinct_buyers`.
    #[schema(value_type = Object)]
    pub scoring: serde_json::Value,
}

/// Body of `POST /api/v1/contests/{id}/matches`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateMatch {
    /// 2 to 9 participants of the contest.
    pub participant_ids: Vec<String>,
    /// Default: now.
    pub starts_at: Option<DateTime<Utc>>,
    /// 10..=3600 seconds (default 300).
    #[serde(default, deserialize_with = "opt_safe_uint")]
    #[schema(value_type = Option<i64>, minimum = 10, maximum = 3600)]
    pub duration_s: Option<i64>,
    /// `paid_gmv` (default), `paid_orders`, `distinct_buyers` or `likes`.
    pub metric: Option<Metric>,
}

/// Body of `PUT /api/v1/contests/{id}/judge-scores`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JudgeScoresBody {
    /// The judge's name; a later entry of the same judge replaces the earlier one.
    pub judge: String,
    /// Participant id → score 0..=100.
    #[schema(value_type = BTreeMap<String, i64>)]
    pub scores: BTreeMap<String, serde_json::Value>,
}

fn opt_safe_uint<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    safe_uint(d).map(Some)
}

/// Only the organizer who created the contest, or an admin.
async fn require_organizer_of(state: &AppState, user: &User, id: &str) -> Result<(), ApiError> {
    let organizer = state.contests.organizer(id).await?;
    if user.id == organizer || user.is_admin() {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            "only the contest's organizer (or an admin) may do this",
        ))
    }
}

/// Product ids the scoring names, checked against the store.
async fn known_products(
    state: &AppState,
    scoring: &serde_json::Value,
) -> Result<HashSet<String>, ApiError> {
    let mut named: Vec<&str> = Vec::new();
    if let Some(ids) = scoring
        .get("eligible_product_ids")
        .and_then(|v| v.as_array())
    {
        named.extend(ids.iter().filter_map(|v| v.as_str()));
    }
    if let Some(map) = scoring
        .get("product_multipliers")
        .and_then(|v| v.as_object())
    {
        named.extend(map.keys().map(String::as_str));
    }
    let mut known = HashSet::new();
    for id in named {
        if known.contains(id) {
            continue;
        }
        match state.store.product(id).await {
            Ok(_) => {
                known.insert(id.to_owned());
            }
            Err(StoreError::NotFound) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(known)
}

/// Create a contest (organizer).
#[utoipa::path(post, path = "/api/v1/contests", tag = "contests",
    request_body = CreateContest,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "created; `status` follows the clock", body = Contest),
        (status = 400, description = "`invalid_rules` (every problem in `details.errors`), or `bad_request`: `ends_at` ≤ `starts_at`, fewer than 2 participants, duplicate names, a room that is not the participant owner's", body = ErrorBody),
        (status = 401, description = "no valid token", body = ErrorBody),
        (status = 403, description = "not an organizer", body = ErrorBody),
        (status = 413, description = "body too large", body = ErrorBody),
        (status = 415, description = "not JSON", body = ErrorBody),
        (status = 503, description = "a dependency is down; retry", body = ErrorBody),
    ))]
pub async fn create_contest(
    State(state): State<AppState>,
    user: User,
    ApiJson(body): ApiJson<CreateContest>,
) -> Result<(StatusCode, axum::Json<Contest>), ApiError> {
    user.require(Role::Organizer)?;
    let title = super::text("title", &body.title, 200)?;
    let grace = body.settle_grace_s.unwrap_or(0);
    if grace > 365 * 24 * 3600 {
        return Err(ApiError::field(
            "settle_grace_s",
            "settle_grace_s is at most a year",
        ));
    }
    let rules_doc = serde_json::json!({
        "starts_at": body.starts_at,
        "ends_at": body.ends_at,
        "settle_grace_s": grace,
        "scoring": body.scoring,
    });
    let rules = Rules::from_json(rules_doc.to_string().as_bytes())?;
    let known = known_products(&state, &body.scoring).await?;
    rules.validate_with(|id| known.contains(id))?;
    let mut participants = Vec::with_capacity(body.participants.len());
    for (i, p) in body.participants.into_iter().enumerate() {
        participants.push(NewParticipant {
            name: super::text(&format!("participants[{i}].name"), &p.name, 100)?,
            owner_id: p.owner_id,
            member_ids: p.member_ids,
            room_ids: p.room_ids,
        });
    }
    let contest = state
        .contests
        .create(
            &user.id,
            NewContestInput {
                title,
                rules,
                participants,
            },
        )
        .await?;
    Ok((StatusCode::CREATED, axum::Json(contest)))
}

/// A contest.
#[utoipa::path(get, path = "/api/v1/contests/{id}", tag = "contests",
    params(("id" = String, Path, description = "contest id")),
    responses(
        (status = 200, description = "the contest; `status` ∈ scheduled, live, ended, settled", body = Contest),
        (status = 404, description = "no such contest", body = ErrorBody),
        (status = 503, description = "a dependency is down; retry", body = ErrorBody),
    ))]
pub async fn get_contest(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<axum::Json<Contest>, ApiError> {
    Ok(axum::Json(state.contests.contest(&id).await?))
}

/// Schedule a PK match between participants of the contest (its organizer).
#[utoipa::path(post, path = "/api/v1/contests/{id}/matches", tag = "contests",
    params(("id" = String, Path, description = "contest id")),
    request_body = CreateMatch,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "created; `pk.started`, `pk.score` (at most 2/s) and `pk.ended` reach every participating room", body = Match),
        (status = 400, description = "invalid field: participants (2–9, of this contest, distinct), `duration_s` (10–3600; the match must end by the contest's end), `metric`", body = ErrorBody),
        (status = 401, description = "no valid token", body = ErrorBody),
        (status = 403, description = "not the contest's organizer", body = ErrorBody),
        (status = 404, description = "no such contest", body = ErrorBody),
        (status = 409, description = "`participant_busy`: a participant has a match that has not ended; `conflict`: the contest is settled", body = ErrorBody),
        (status = 415, description = "not JSON", body = ErrorBody),
        (status = 503, description = "a dependency is down; retry", body = ErrorBody),
    ))]
pub async fn create_match(
    State(state): State<AppState>,
    user: User,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<CreateMatch>,
) -> Result<(StatusCode, axum::Json<Match>), ApiError> {
    require_organizer_of(&state, &user, &id).await?;
    let m = state
        .contests
        .create_match(
            &id,
            NewMatchInput {
                participant_ids: body.participant_ids,
                starts_at_ms: body
                    .starts_at
                    .map_or_else(harvest_hub::now_ms, |t| t.timestamp_millis()),
                duration_s: body.duration_s.unwrap_or(300),
                metric: body.metric.unwrap_or(Metric::PaidGmv),
            },
        )
        .await?;
    Ok((StatusCode::CREATED, axum::Json(m)))
}

/// A PK match: live scores while it runs, the frozen result once it ended.
#[utoipa::path(get, path = "/api/v1/matches/{id}", tag = "contests",
    params(("id" = String, Path, description = "match id")),
    responses(
        (status = 200, description = "the match", body = Match),
        (status = 404, description = "no such match", body = ErrorBody),
        (status = 503, description = "a dependency is down; retry", body = ErrorBody),
    ))]
pub async fn get_match(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<axum::Json<Match>, ApiError> {
    Ok(axum::Json(state.contests.get_match(&id).await?))
}

/// Enter a judge's scores (the contest's organizer); replaces that judge's earlier entry.
#[utoipa::path(put, path = "/api/v1/contests/{id}/judge-scores", tag = "contests",
    params(("id" = String, Path, description = "contest id")),
    request_body = JudgeScoresBody,
    security(("bearer" = [])),
    responses(
        (status = 204, description = "recorded"),
        (status = 400, description = "a score outside 0..100, an unknown participant, an empty judge name", body = ErrorBody),
        (status = 401, description = "no valid token", body = ErrorBody),
        (status = 403, description = "not the contest's organizer", body = ErrorBody),
        (status = 404, description = "no such contest", body = ErrorBody),
        (status = 409, description = "`conflict`: the contest is settled", body = ErrorBody),
        (status = 415, description = "not JSON", body = ErrorBody),
        (status = 503, description = "a dependency is down; retry", body = ErrorBody),
    ))]
pub async fn put_judge_scores(
    State(state): State<AppState>,
    user: User,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<JudgeScoresBody>,
) -> Result<StatusCode, ApiError> {
    require_organizer_of(&state, &user, &id).await?;
    let judge = super::text("judge", &body.judge, 100)?;
    let mut scores = BTreeMap::new();
    for (participant, value) in body.scores {
        let field = format!("scores.{participant}");
        let score = value
            .as_u64()
            .filter(|s| *s <= 100)
            .ok_or_else(|| ApiError::field(&field, "a score is an integer from 0 to 100"))?;
        scores.insert(participant, score as u8);
    }
    state.contests.judge(&id, &judge, scores).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Standings: provisional while the contest is open, final once settled.
#[utoipa::path(get, path = "/api/v1/contests/{id}/standings", tag = "contests",
    params(("id" = String, Path, description = "contest id")),
    responses(
        (status = 200, description = "rows in rank order; `metrics` has all six metrics, `points` the scored ones", body = Standings),
        (status = 404, description = "no such contest", body = ErrorBody),
        (status = 503, description = "a dependency is down; retry", body = ErrorBody),
    ))]
pub async fn get_standings(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<axum::Json<Standings>, ApiError> {
    Ok(axum::Json(state.contests.standings(&id).await?))
}

/// Settle the contest (its organizer): freezes the results.
#[utoipa::path(post, path = "/api/v1/contests/{id}/settle", tag = "contests",
    params(("id" = String, Path, description = "contest id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the final standings (`provisional: false`); settling again returns the same", body = Standings),
        (status = 401, description = "no valid token", body = ErrorBody),
        (status = 403, description = "not the contest's organizer", body = ErrorBody),
        (status = 404, description = "no such contest", body = ErrorBody),
        (status = 409, description = "`too_early`: before `ends_at + settle_grace_s` (`details.settles_at_ms`)", body = ErrorBody),
        (status = 503, description = "a dependency is down; retry", body = ErrorBody),
    ))]
pub async fn settle(
    State(state): State<AppState>,
    user: User,
    Path(id): Path<String>,
) -> Result<axum::Json<Standings>, ApiError> {
    require_organizer_of(&state, &user, &id).await?;
    Ok(axum::Json(state.contests.settle(&id).await?))
}

/// The audit: every order paid in the participants' rooms, counted or excluded with
/// its reason, and the hashes of the rules and the counted event log.
#[utoipa::path(get, path = "/api/v1/contests/{id}/audit", tag = "contests",
    params(("id" = String, Path, description = "contest id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the audit; frozen at settlement", body = Audit),
        (status = 401, description = "no valid token", body = ErrorBody),
        (status = 403, description = "not the contest's organizer or an admin", body = ErrorBody),
        (status = 404, description = "no such contest", body = ErrorBody),
        (status = 503, description = "a dependency is down; retry", body = ErrorBody),
    ))]
pub async fn get_audit(
    State(state): State<AppState>,
    user: User,
    Path(id): Path<String>,
) -> Result<axum::Json<Audit>, ApiError> {
    require_organizer_of(&state, &user, &id).await?;
    Ok(axum::Json(state.contests.audit(&id).await?))
}
