//! Contests and PK matches, live: the scoring engine of every open contest fed by the
//! orders, refunds, likes, judges' entries and match results as they happen; the match
//! clock; the throttled score bar and standings pushed to the participants' rooms; and
//! settlement.
//!
//! - **The record** of a contest lives in SQL and is never copied: the orders paid in its
//!   participants' rooms from its creation on (with their refunds), the rooms'
//!   per-second like tallies, the judges' entries and the results of its ended matches
//!   ([`record`]). An open contest's [`Engine`] is built from it at start and then fed
//!   incrementally.
//! - **The match clock** (a 25 ms tick): a match starts (`pk.started`) and ends
//!   (`pk.ended`, scores and winners frozen in SQL, the result entered into the contest)
//!   by a compare-and-set on its stored phase, so each happens once, also after a
//!   restart. A live match whose scores changed gets `pk.score` at most twice a second;
//!   a contest whose metric values changed gets `contest.standings` at most once a
//!   second, in every participating room.
//! - **Settlement** (by the organizer after `ends_at + settle_grace_s`, or by itself at
//!   that time) scores the stored record with a fresh engine, settled at that time,
//!   and stores the standings and the audit once; later refunds change nothing.
//!   `harvest contest replay` recomputes them with the batch scorer.
//! - **Several nodes** (Redis configured): each node picks up the open contests others
//!   created and rebuilds each engine from the shared SQL record every 2 s, so orders,
//!   likes and judges recorded through any node count everywhere; one node at a time
//!   (the holder of a lease in the contest's row, renewed every second, taken over
//!   within 3 s when its node dies) pushes `pk.score` and `contest.standings`, so the
//!   rooms never get them faster than their limits. Match start and end and
//!   settlement stay compare-and-sets, done by whichever node comes first.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use dashmap::DashMap;
use harvest_contest::{
    Applied, Engine, Event, JudgeScores, LikesTally, MatchResult, MatchSpec, OrderPaid,
    OrderRefunded, Participant, Rules,
};
use harvest_proto::ws as wire;
use harvest_proto::{
    Audit, Contest, ContestParticipant, ContestStatus, ErrorCode, Match, MatchStatus, Metric,
    Order, OrderStatus, Score, Standings,
};
use harvest_store::{ContestRow, LikeTally, MatchPhase, MatchRow, NewContest, NewMatch, Store};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::live::Live;

/// How often the match clock and the score throttles are looked at.
const TICK: Duration = Duration::from_millis(25);
/// Least time between two `pk.score` of one match.
const PK_SCORE_EVERY_MS: i64 = 500;
/// Least time between two `contest.standings` of one contest.
const STANDINGS_EVERY_MS: i64 = 1000;
/// A match is closed this long after its end, so payments recorded at its last
/// instant are in its final scores.
const MATCH_CLOSE_DELAY_MS: i64 = 200;
/// With several nodes: how often each open contest's engine is rebuilt from the shared
/// SQL record (orders paid through other nodes, their likes and judges), and new
/// contests are picked up.
const SHARED_SYNC_MS: i64 = 2000;
/// With several nodes: the pusher lease's length and how often it is renewed.
const PUSHER_LEASE_MS: i64 = 3000;
const PUSHER_RENEW_MS: i64 = 1000;
/// Events applied here are kept this long, to apply again to a rebuilt engine.
const RECENT_MS: i64 = 10_000;

/// A contest's frozen results, as stored at settlement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Results {
    pub standings: Standings,
    pub audit: Audit,
}

/// The live contests of this node. Cheap to clone.
#[derive(Clone)]
pub struct Contests {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    live: Live,
    /// Contests not settled yet.
    open: DashMap<String, Arc<Open>>,
    /// Room → the open contests it takes part in.
    by_room: DashMap<String, Vec<Arc<Open>>>,
    /// Likes not yet written, by (room, Unix second).
    likes: parking_lot::Mutex<HashMap<(String, i64), u64>>,
    /// Serialises match creation, so two requests cannot both find a participant free.
    match_lock: tokio::sync::Mutex<()>,
    /// Other nodes share the store (Redis configured): engines are rebuilt from SQL
    /// periodically and one node at a time pushes each contest's scores.
    shared: bool,
    node_id: String,
}

/// An open contest: its engine and its matches that have not ended.
struct Open {
    row: ContestRow,
    participants: Vec<Participant>,
    engine: parking_lot::Mutex<Engine>,
    matches: parking_lot::Mutex<Vec<LiveMatch>>,
    /// Metric values changed since the last `contest.standings`.
    dirty: AtomicBool,
    last_standings_ms: AtomicI64,
    /// The time of the latest judge entry: entries get strictly increasing times, so
    /// two entries of one judge in one millisecond still have a clear later one.
    last_judge_ms: AtomicI64,
    /// Serialises the contest's clock steps and its settlement.
    ops: tokio::sync::Mutex<()>,
    /// Events applied on this node lately (payments, refunds, judges, match results),
    /// applied again to an engine rebuilt from SQL in case the rebuild read the record
    /// before they were written.
    /// Kept only when other nodes share the store.
    recent: Option<parking_lot::Mutex<std::collections::VecDeque<(i64, Event)>>>,
    /// With several nodes: whether this node pushes the contest's scores and standings,
    /// and when the lease was last renewed.
    pusher: AtomicBool,
    lease_renewed_ms: AtomicI64,
    synced_ms: AtomicI64,
}

struct LiveMatch {
    row: MatchRow,
    /// Scores may have changed since the last `pk.score`.
    dirty: bool,
    last_score_ms: i64,
    last_scores: Vec<Score>,
}

/// The input of a new contest, checked by [`Contests::create`].
pub struct NewContestInput {
    pub title: String,
    pub rules: Rules,
    pub participants: Vec<NewParticipant>,
}

/// A participant of a new contest (the server chooses its id).
pub struct NewParticipant {
    pub name: String,
    pub owner_id: String,
    pub member_ids: Vec<String>,
    pub room_ids: Vec<String>,
}

/// The input of a new match.
pub struct NewMatchInput {
    pub participant_ids: Vec<String>,
    pub starts_at_ms: i64,
    pub duration_s: i64,
    pub metric: Metric,
}

fn now_ms() -> i64 {
    harvest_hub::now_ms()
}

fn time(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

fn internal(what: &str, e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "{what}");
    ApiError::internal()
}

/// The rules and participants of a stored contest.
pub fn parse_contest(row: &ContestRow) -> anyhow::Result<(Rules, Vec<Participant>)> {
    let rules = Rules::from_json(row.rules.as_bytes())
        .map_err(|e| anyhow::anyhow!("stored rules of contest {}: {e}", row.id))?;
    let participants: Vec<Participant> = serde_json::from_str(&row.participants)
        .map_err(|e| anyhow::anyhow!("stored participants of contest {}: {e}", row.id))?;
    Ok((rules, participants))
}

/// A contest's record as stored: the orders paid in its participants' rooms from its
/// creation on and their refunds, the rooms' like tallies in its window, the judges'
/// entries and the results of its ended matches.
pub async fn record(
    store: &Store,
    row: &ContestRow,
    participants: &[Participant],
) -> anyhow::Result<Vec<Event>> {
    let rooms: Vec<String> = participants
        .iter()
        .flat_map(|p| p.room_ids.iter().cloned())
        .collect();
    let mut events = Vec::new();
    for order in store.orders_in_rooms(&rooms, row.created_at).await? {
        events.push(Event::OrderPaid(OrderPaid::from(&order)));
        if let Some(at) = order.refunded_at {
            events.push(Event::OrderRefunded(OrderRefunded {
                order_id: order.id.clone(),
                at_ms: at.timestamp_millis(),
            }));
        }
    }
    let from_s = row.starts_at.div_euclid(1000);
    let to_s = row.ends_at.div_euclid(1000) + 1;
    for t in store.like_tallies(&rooms, from_s, to_s).await? {
        events.push(Event::Likes(LikesTally {
            room_id: t.room_id,
            second: t.second,
            count: u64::try_from(t.count).unwrap_or(0),
        }));
    }
    for entry in store.judge_entries(&row.id).await? {
        events.push(Event::JudgeScores(JudgeScores {
            judge: entry.judge,
            scores: serde_json::from_str(&entry.scores)?,
            at_ms: entry.at,
        }));
    }
    for m in store.contest_matches(&row.id).await? {
        if m.phase == MatchPhase::Ended {
            events.push(Event::MatchResult(MatchResult {
                match_id: m.id,
                winner_ids: m.winner_ids.unwrap_or_default(),
                at_ms: m.ends_at,
            }));
        }
    }
    Ok(events)
}

fn status_of(row: &ContestRow, now: i64) -> ContestStatus {
    if row.settled_at.is_some() {
        ContestStatus::Settled
    } else if now < row.starts_at {
        ContestStatus::Scheduled
    } else if now < row.ends_at {
        ContestStatus::Live
    } else {
        ContestStatus::Ended
    }
}

/// The wire form of a stored contest.
pub fn contest_wire(row: &ContestRow, now: i64) -> anyhow::Result<Contest> {
    let (rules, participants) = parse_contest(row)?;
    Ok(Contest {
        id: row.id.clone(),
        organizer_id: row.organizer_id.clone(),
        title: row.title.clone(),
        starts_at: time(row.starts_at),
        ends_at: time(row.ends_at),
        settle_grace_s: row.settle_grace_s,
        participants: participants
            .into_iter()
            .map(|p| ContestParticipant {
                id: p.id,
                name: p.name,
                owner_id: p.owner_id,
                member_ids: p.member_ids,
                room_ids: p.room_ids,
            })
            .collect(),
        scoring: serde_json::to_value(&rules.scoring)?,
        status: status_of(row, now),
        created_at: time(row.created_at),
        settled_at: row.settled_at.map(time),
    })
}

fn match_status(row: &MatchRow, now: i64) -> MatchStatus {
    if row.phase == MatchPhase::Ended || now >= row.ends_at {
        MatchStatus::Ended
    } else if now >= row.starts_at {
        MatchStatus::Live
    } else {
        MatchStatus::Scheduled
    }
}

fn match_wire(row: &MatchRow, scores: Vec<Score>, winner_ids: Vec<String>, now: i64) -> Match {
    Match {
        id: row.id.clone(),
        contest_id: row.contest_id.clone(),
        participant_ids: row.participant_ids.clone(),
        starts_at: time(row.starts_at),
        ends_at: time(row.ends_at),
        metric: Metric::parse(&row.metric).unwrap_or_default(),
        status: match_status(row, now),
        scores,
        winner_ids,
    }
}

/// A stored ended match on the wire.
fn ended_match_wire(row: &MatchRow, now: i64) -> Match {
    let scores: Vec<Score> = row
        .scores
        .as_deref()
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or_default();
    match_wire(row, scores, row.winner_ids.clone().unwrap_or_default(), now)
}

fn spec_of(row: &MatchRow) -> MatchSpec {
    MatchSpec {
        participant_ids: row.participant_ids.clone(),
        starts_at_ms: row.starts_at,
        ends_at_ms: row.ends_at,
        metric: Metric::parse(&row.metric).unwrap_or_default(),
    }
}

impl Open {
    fn status(&self, now: i64) -> ContestStatus {
        status_of(&self.row, now)
    }

    /// Applies an event; marks the standings and every live match dirty when a
    /// participant's metric values changed.
    fn apply(&self, event: &Event) {
        if let Some(recent) = &self.recent
            && !matches!(event, Event::Likes(_))
        {
            let now = now_ms();
            let mut recent = recent.lock();
            while recent.front().is_some_and(|(at, _)| now - at >= RECENT_MS) {
                recent.pop_front();
            }
            recent.push_back((now, event.clone()));
        }
        let applied = self.engine.lock().apply(event);
        if matches!(applied, Applied::Recorded { changed: true }) {
            self.dirty.store(true, Ordering::Release);
            for m in self.matches.lock().iter_mut() {
                m.dirty = true;
            }
        }
    }

    /// The rooms of the given participants (all of them when `None`).
    fn rooms_of(&self, participant_ids: Option<&[String]>) -> Vec<String> {
        self.participants
            .iter()
            .filter(|p| participant_ids.is_none_or(|ids| ids.contains(&p.id)))
            .flat_map(|p| p.room_ids.iter().cloned())
            .collect()
    }

    fn standings(&self, now: i64) -> Standings {
        self.engine
            .lock()
            .standings()
            .to_wire(&self.row.id, time(now))
    }

    /// A match's wire form from the engine now.
    fn live_match(&self, row: &MatchRow, now: i64) -> Match {
        let spec = spec_of(row);
        match self.engine.lock().match_scores(&spec, now) {
            Ok(s) => match_wire(row, s.scores, s.outcome.winner_ids(), now),
            Err(e) => {
                tracing::warn!(match_id = %row.id, error = %e, "cannot score a match");
                match_wire(row, Vec::new(), Vec::new(), now)
            }
        }
    }
}

impl Contests {
    /// Loads every open contest from the store, then starts the match clock and the
    /// like-tally writer.
    pub async fn start(
        store: Store,
        live: Live,
        shared: bool,
        node_id: &str,
    ) -> anyhow::Result<Self> {
        let contests = Self {
            inner: Arc::new(Inner {
                store: store.clone(),
                live,
                open: DashMap::new(),
                by_room: DashMap::new(),
                likes: parking_lot::Mutex::new(HashMap::new()),
                match_lock: tokio::sync::Mutex::new(()),
                shared,
                node_id: node_id.to_owned(),
            }),
        };
        for row in store.open_contests().await? {
            contests.load(row).await?;
        }
        contests.spawn_clock();
        contests.spawn_like_writer();
        Ok(contests)
    }

    /// Builds an open contest's engine from its stored record and registers it.
    async fn load(&self, row: ContestRow) -> anyhow::Result<Arc<Open>> {
        let (rules, participants) = parse_contest(&row)?;
        let events = record(&self.inner.store, &row, &participants).await?;
        let mut engine = Engine::new(rules, participants.clone())?;
        let mut last_judge_ms = 0;
        for event in &events {
            engine.apply(event);
            if let Event::JudgeScores(j) = event {
                last_judge_ms = last_judge_ms.max(j.at_ms);
            }
        }
        let matches = self
            .inner
            .store
            .contest_matches(&row.id)
            .await?
            .into_iter()
            .filter(|m| m.phase != MatchPhase::Ended)
            .map(|m| LiveMatch {
                row: m,
                dirty: true,
                last_score_ms: 0,
                last_scores: Vec::new(),
            })
            .collect();
        let open = Arc::new(Open {
            row,
            participants,
            engine: parking_lot::Mutex::new(engine),
            matches: parking_lot::Mutex::new(matches),
            dirty: AtomicBool::new(false),
            last_standings_ms: AtomicI64::new(0),
            last_judge_ms: AtomicI64::new(last_judge_ms),
            ops: tokio::sync::Mutex::new(()),
            recent: self
                .inner
                .shared
                .then(|| parking_lot::Mutex::new(std::collections::VecDeque::new())),
            pusher: AtomicBool::new(false),
            lease_renewed_ms: AtomicI64::new(0),
            synced_ms: AtomicI64::new(now_ms()),
        });
        self.inner.open.insert(open.row.id.clone(), open.clone());
        for room in open.rooms_of(None) {
            self.inner
                .by_room
                .entry(room)
                .or_default()
                .push(open.clone());
        }
        Ok(open)
    }

    fn unload(&self, id: &str) {
        if let Some((_, open)) = self.inner.open.remove(id) {
            for room in open.rooms_of(None) {
                if let Some(mut list) = self.inner.by_room.get_mut(&room) {
                    list.retain(|o| o.row.id != id);
                }
                self.inner.by_room.remove_if(&room, |_, l| l.is_empty());
            }
        }
    }

    fn open(&self, id: &str) -> Option<Arc<Open>> {
        self.inner.open.get(id).map(|o| o.clone())
    }

    fn in_room(&self, room_id: &str) -> Vec<Arc<Open>> {
        self.inner
            .by_room
            .get(room_id)
            .map(|l| l.clone())
            .unwrap_or_default()
    }

    async fn row(&self, id: &str) -> Result<ContestRow, ApiError> {
        match self.inner.store.contest(id).await {
            Ok(row) => Ok(row),
            Err(harvest_store::StoreError::NotFound) => Err(ApiError::not_found("contest")),
            Err(e) => Err(e.into()),
        }
    }

    /// Creates a contest. The rules must be valid; participants are checked here: at
    /// least two, distinct names, each room an existing room of the participant's owner
    /// and in one participant only.
    pub async fn create(
        &self,
        organizer_id: &str,
        input: NewContestInput,
    ) -> Result<Contest, ApiError> {
        if input.participants.len() < 2 {
            return Err(ApiError::field(
                "participants",
                "a contest needs at least 2 participants",
            ));
        }
        let mut seen_rooms: HashMap<&str, usize> = HashMap::new();
        for (i, p) in input.participants.iter().enumerate() {
            if input.participants[..i].iter().any(|q| q.name == p.name) {
                return Err(ApiError::field(
                    &format!("participants[{i}].name"),
                    format!("duplicate participant name {:?}", p.name),
                ));
            }
            if p.room_ids.is_empty() {
                return Err(ApiError::field(
                    &format!("participants[{i}].room_ids"),
                    "a participant needs at least one room",
                ));
            }
            for (j, room_id) in p.room_ids.iter().enumerate() {
                let field = format!("participants[{i}].room_ids[{j}]");
                if let Some(other) = seen_rooms.insert(room_id, i) {
                    return Err(ApiError::field(
                        &field,
                        format!("room {room_id:?} is already a room of participants[{other}]"),
                    ));
                }
                let room = match self.inner.store.room(room_id).await {
                    Ok(room) => room,
                    Err(harvest_store::StoreError::NotFound) => {
                        return Err(ApiError::field(&field, format!("no room {room_id:?}")));
                    }
                    Err(e) => return Err(e.into()),
                };
                if room.streamer_id != p.owner_id {
                    return Err(ApiError::field(
                        &field,
                        format!(
                            "room {room_id:?} is not a room of the participant's owner {:?}",
                            p.owner_id
                        ),
                    ));
                }
            }
        }
        let participants: Vec<Participant> = input
            .participants
            .into_iter()
            .map(|p| Participant {
                id: harvest_store::new_id(),
                name: p.name,
                owner_id: p.owner_id,
                member_ids: p.member_ids,
                room_ids: p.room_ids,
            })
            .collect();
        // The engine's own checks (participants, compiled rules) before anything is stored.
        Engine::new(input.rules.clone(), participants.clone())?;
        let rooms = participants
            .iter()
            .flat_map(|p| p.room_ids.iter().map(|r| (r.clone(), p.id.clone())))
            .collect();
        let row = self
            .inner
            .store
            .create_contest(NewContest {
                organizer_id: organizer_id.to_owned(),
                title: input.title,
                starts_at: input.rules.starts_at_ms(),
                ends_at: input.rules.ends_at_ms(),
                settle_grace_s: input.rules.settle_grace_s,
                rules: input.rules.to_json(),
                participants: serde_json::to_string(&participants)
                    .map_err(|e| internal("serialising participants", e))?,
                rooms,
            })
            .await?;
        let open = self
            .load(row)
            .await
            .map_err(|e| internal("loading a new contest", e))?;
        contest_wire(&open.row, now_ms()).map_err(|e| internal("contest on the wire", e))
    }

    /// A contest, with its status now.
    pub async fn contest(&self, id: &str) -> Result<Contest, ApiError> {
        let row = match self.open(id) {
            Some(open) => open.row.clone(),
            None => self.row(id).await?,
        };
        contest_wire(&row, now_ms()).map_err(|e| internal("contest on the wire", e))
    }

    /// The contest's organizer, for authorisation.
    pub async fn organizer(&self, id: &str) -> Result<String, ApiError> {
        match self.open(id) {
            Some(open) => Ok(open.row.organizer_id.clone()),
            None => Ok(self.row(id).await?.organizer_id),
        }
    }

    /// Stored results of a settled contest.
    fn stored_results(row: &ContestRow) -> Result<Results, ApiError> {
        let text = row
            .results
            .as_deref()
            .ok_or_else(|| internal("settled contest without results", &row.id))?;
        serde_json::from_str(text).map_err(|e| internal("stored contest results", e))
    }

    /// Provisional standings of an open contest, the frozen ones of a settled one.
    pub async fn standings(&self, id: &str) -> Result<Standings, ApiError> {
        if let Some(open) = self.open(id) {
            return Ok(open.standings(now_ms()));
        }
        let row = self.row(id).await?;
        if row.settled_at.is_some() {
            return Ok(Self::stored_results(&row)?.standings);
        }
        // Created or settled by another node since this one looked.
        let open = self
            .load(row)
            .await
            .map_err(|e| internal("loading a contest", e))?;
        Ok(open.standings(now_ms()))
    }

    /// The audit: live for an open contest, frozen for a settled one.
    pub async fn audit(&self, id: &str) -> Result<Audit, ApiError> {
        if let Some(open) = self.open(id) {
            return Ok(open.engine.lock().audit());
        }
        let row = self.row(id).await?;
        if row.settled_at.is_some() {
            return Ok(Self::stored_results(&row)?.audit);
        }
        let open = self
            .load(row)
            .await
            .map_err(|e| internal("loading a contest", e))?;
        Ok(open.engine.lock().audit())
    }

    async fn open_or_load(&self, id: &str) -> Result<Option<Arc<Open>>, ApiError> {
        if let Some(open) = self.open(id) {
            return Ok(Some(open));
        }
        let row = self.row(id).await?;
        if row.settled_at.is_some() {
            return Ok(None);
        }
        Ok(Some(
            self.load(row)
                .await
                .map_err(|e| internal("loading a contest", e))?,
        ))
    }

    /// Records a judge's whole entry (replacing that judge's earlier one).
    pub async fn judge(
        &self,
        id: &str,
        judge: &str,
        scores: std::collections::BTreeMap<String, u8>,
    ) -> Result<(), ApiError> {
        let Some(open) = self.open_or_load(id).await? else {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                "the contest is settled; its results are frozen",
            ));
        };
        for (participant, score) in &scores {
            let field = format!("scores.{participant}");
            if !open.participants.iter().any(|p| &p.id == participant) {
                return Err(ApiError::field(
                    &field,
                    format!("no participant {participant:?} in this contest"),
                ));
            }
            if *score > 100 {
                return Err(ApiError::field(&field, "a score is 0 to 100"));
            }
        }
        let now = now_ms();
        let at =
            match open
                .last_judge_ms
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |last| {
                    Some(now.max(last + 1))
                }) {
                Ok(last) | Err(last) => now.max(last + 1),
            };
        let text = serde_json::to_string(&scores).map_err(|e| internal("judge scores", e))?;
        self.inner
            .store
            .add_judge_entry(id, judge, &text, at)
            .await?;
        open.apply(&Event::JudgeScores(JudgeScores {
            judge: judge.to_owned(),
            scores,
            at_ms: at,
        }));
        Ok(())
    }

    /// Creates a PK match between participants of an open contest.
    pub async fn create_match(&self, id: &str, input: NewMatchInput) -> Result<Match, ApiError> {
        let Some(open) = self.open_or_load(id).await? else {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                "the contest is settled; no more matches",
            ));
        };
        let n = input.participant_ids.len();
        if !(2..=9).contains(&n) {
            return Err(ApiError::field(
                "participant_ids",
                "a match needs 2 to 9 participants",
            ));
        }
        for (i, pid) in input.participant_ids.iter().enumerate() {
            let field = format!("participant_ids[{i}]");
            if !open.participants.iter().any(|p| &p.id == pid) {
                return Err(ApiError::field(
                    &field,
                    format!("no participant {pid:?} in this contest"),
                ));
            }
            if input.participant_ids[..i].contains(pid) {
                return Err(ApiError::field(
                    &field,
                    format!("duplicate participant {pid:?}"),
                ));
            }
        }
        if matches!(input.metric, Metric::Judges | Metric::MatchWins) {
            return Err(ApiError::field(
                "metric",
                "a match scores paid_gmv, paid_orders, distinct_buyers or likes",
            ));
        }
        if !(10..=3600).contains(&input.duration_s) {
            return Err(ApiError::field(
                "duration_s",
                "duration_s is 10 to 3600 seconds",
            ));
        }
        let ends_at = input.starts_at_ms + input.duration_s * 1000;
        let now = now_ms();
        if ends_at <= now {
            return Err(ApiError::field(
                "starts_at",
                "the match would already be over",
            ));
        }
        if ends_at > open.row.ends_at {
            return Err(ApiError::field(
                "duration_s",
                "a match must end by the contest's ends_at",
            ));
        }
        let _one = self.inner.match_lock.lock().await;
        let stored = self.inner.store.contest_matches(id).await?;
        for m in &stored {
            if m.phase != MatchPhase::Ended
                && let Some(busy) = m
                    .participant_ids
                    .iter()
                    .find(|p| input.participant_ids.contains(p))
            {
                return Err(ApiError::new(
                    ErrorCode::ParticipantBusy,
                    format!(
                        "participant {busy:?} is already in match {} that has not ended",
                        m.id
                    ),
                )
                .detail("participant_id", busy.as_str())
                .detail("match_id", m.id.as_str()));
            }
        }
        let row = self
            .inner
            .store
            .create_match(NewMatch {
                contest_id: id.to_owned(),
                participant_ids: input.participant_ids,
                starts_at: input.starts_at_ms,
                ends_at,
                metric: input.metric.as_str().to_owned(),
            })
            .await?;
        let wire = open.live_match(&row, now);
        open.matches.lock().push(LiveMatch {
            row,
            dirty: false,
            last_score_ms: 0,
            last_scores: wire.scores.clone(),
        });
        // Start it now rather than on the next tick when it is due.
        self.step(&open).await;
        Ok(wire)
    }

    /// A match: live scores while it runs, frozen ones once it ended.
    pub async fn get_match(&self, match_id: &str) -> Result<Match, ApiError> {
        let row = match self.inner.store.contest_match(match_id).await {
            Ok(row) => row,
            Err(harvest_store::StoreError::NotFound) => return Err(ApiError::not_found("match")),
            Err(e) => return Err(e.into()),
        };
        let now = now_ms();
        if row.phase == MatchPhase::Ended {
            return Ok(ended_match_wire(&row, now));
        }
        match self.open(&row.contest_id) {
            Some(open) => Ok(open.live_match(&row, now)),
            None => Ok(match_wire(&row, Vec::new(), Vec::new(), now)),
        }
    }

    /// The running match of a room (its participant is in it), for the snapshot.
    pub fn room_match(&self, room_id: &str) -> Option<Match> {
        let now = now_ms();
        for open in self.in_room(room_id) {
            let Some(owner) = open
                .participants
                .iter()
                .find(|p| p.room_ids.iter().any(|r| r == room_id))
                .map(|p| p.id.clone())
            else {
                continue;
            };
            let row = open
                .matches
                .lock()
                .iter()
                .find(|m| {
                    m.row.phase == MatchPhase::Live
                        && m.row.participant_ids.contains(&owner)
                        && now < m.row.ends_at
                })
                .map(|m| m.row.clone());
            if let Some(row) = row {
                return Some(open.live_match(&row, now));
            }
        }
        None
    }

    /// The standings of every live contest the room is in, for the snapshot.
    pub fn room_standings(&self, room_id: &str) -> Vec<Standings> {
        let now = now_ms();
        self.in_room(room_id)
            .iter()
            .filter(|o| o.status(now) == ContestStatus::Live)
            .map(|o| o.standings(now))
            .collect()
    }

    /// A paid order enters every open contest its room is in (from the contest's
    /// creation on).
    pub fn order_paid(&self, order: &Order) {
        let event = Event::OrderPaid(OrderPaid::from(order));
        for open in self.in_room(&order.room_id) {
            if order.paid_at.timestamp_millis() >= open.row.created_at {
                open.apply(&event);
            }
        }
    }

    /// A refund enters every open contest the order's room is in.
    pub fn order_refunded(&self, order: &Order) {
        let Some(at) = order.refunded_at else {
            return;
        };
        if order.status != OrderStatus::Refunded {
            return;
        }
        let event = Event::OrderRefunded(OrderRefunded {
            order_id: order.id.clone(),
            at_ms: at.timestamp_millis(),
        });
        for open in self.in_room(&order.room_id) {
            open.apply(&event);
        }
    }

    /// Counts likes a room received now; they are written as the second's tally.
    pub fn like(&self, room_id: &str, count: u64) {
        let second = now_ms().div_euclid(1000);
        *self
            .inner
            .likes
            .lock()
            .entry((room_id.to_owned(), second))
            .or_default() += count;
    }

    /// Writes the like tallies of the seconds before `before_second` and enters them in
    /// the open contests of their rooms. Tallies that cannot be written stay for the
    /// next attempt.
    async fn write_likes(&self, before_second: i64) {
        let due: Vec<((String, i64), u64)> = {
            let mut likes = self.inner.likes.lock();
            let keys: Vec<(String, i64)> = likes
                .keys()
                .filter(|(_, s)| *s < before_second)
                .cloned()
                .collect();
            keys.into_iter()
                .filter_map(|k| likes.remove(&k).map(|v| (k, v)))
                .collect()
        };
        if due.is_empty() {
            return;
        }
        let tallies: Vec<LikeTally> = due
            .iter()
            .map(|((room_id, second), count)| LikeTally {
                room_id: room_id.clone(),
                second: *second,
                count: i64::try_from(*count).unwrap_or(i64::MAX),
            })
            .collect();
        match self.inner.store.add_like_tallies(&tallies).await {
            Ok(()) => {
                for ((room_id, second), count) in due {
                    let event = Event::Likes(LikesTally {
                        room_id: room_id.clone(),
                        second,
                        count,
                    });
                    for open in self.in_room(&room_id) {
                        open.apply(&event);
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "writing like tallies failed; will retry");
                let mut likes = self.inner.likes.lock();
                for (key, count) in due {
                    *likes.entry(key).or_default() += count;
                }
            }
        }
    }

    fn spawn_like_writer(&self) {
        let contests = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tick.tick().await;
                contests.write_likes(now_ms().div_euclid(1000)).await;
            }
        });
    }

    fn spawn_clock(&self) {
        let contests = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut discovered = 0;
            loop {
                tick.tick().await;
                if contests.inner.shared && now_ms() - discovered >= SHARED_SYNC_MS {
                    discovered = now_ms();
                    contests.discover().await;
                }
                let open: Vec<Arc<Open>> = contests
                    .inner
                    .open
                    .iter()
                    .map(|o| o.value().clone())
                    .collect();
                for o in open {
                    contests.step(&o).await;
                }
            }
        });
    }

    async fn publish_to(&self, rooms: &[String], data: impl Into<wire::EventData> + Clone) {
        for room in rooms {
            if let Err(e) = self.inner.live.publish(room, data.clone()).await {
                tracing::warn!(room_id = %room, error = %e, "could not publish a contest event");
            }
        }
    }

    /// One clock step of a contest: start and end due matches, push throttled scores
    /// and standings, settle when due.
    async fn step(&self, open: &Arc<Open>) {
        let Ok(_ops) = open.ops.try_lock() else {
            return;
        };
        let now = now_ms();
        if self.inner.shared {
            self.renew_lease(open, now).await;
            if now - open.synced_ms.load(Ordering::Relaxed) >= SHARED_SYNC_MS {
                open.synced_ms.store(now, Ordering::Relaxed);
                self.resync(open).await;
            }
        }
        self.step_matches(open, now).await;
        if self.pushes(open)
            && open.dirty.load(Ordering::Acquire)
            && now - open.last_standings_ms.load(Ordering::Relaxed) >= STANDINGS_EVERY_MS
        {
            open.dirty.store(false, Ordering::Release);
            let standings = open.standings(now);
            self.publish_to(&open.rooms_of(None), wire::ContestStandings { standings })
                .await;
            open.last_standings_ms.store(now_ms(), Ordering::Relaxed);
        }
        if now >= open.row.settles_at() {
            let id = open.row.id.clone();
            let at = open.row.settles_at();
            drop(_ops);
            if let Err(e) = self.settle_at(&id, at).await {
                tracing::warn!(contest_id = %id, error = ?e.message, "settling failed; will retry");
            }
        }
    }

    async fn step_matches(&self, open: &Arc<Open>, now: i64) {
        enum Due {
            Start(MatchRow),
            End(MatchRow),
            Score(MatchRow),
        }
        let pushes = self.pushes(open);
        let due: Vec<Due> = {
            let mut matches = open.matches.lock();
            matches
                .iter_mut()
                .filter_map(|m| {
                    if m.row.phase == MatchPhase::Scheduled && now >= m.row.starts_at {
                        Some(Due::Start(m.row.clone()))
                    } else if m.row.phase != MatchPhase::Ended
                        && now >= m.row.ends_at + MATCH_CLOSE_DELAY_MS
                    {
                        Some(Due::End(m.row.clone()))
                    } else if m.row.phase == MatchPhase::Live
                        && pushes
                        && m.dirty
                        && now - m.last_score_ms >= PK_SCORE_EVERY_MS
                    {
                        m.dirty = false;
                        Some(Due::Score(m.row.clone()))
                    } else {
                        None
                    }
                })
                .collect()
        };
        for d in due {
            match d {
                Due::Start(row) => self.start_match(open, row, now).await,
                Due::End(row) => self.end_match(open, row, now).await,
                Due::Score(row) => self.push_score(open, row, now).await,
            }
        }
    }

    /// Whether this node pushes the contest's live scores and standings: always on a
    /// single node; with several, the holder of the contest's lease.
    fn pushes(&self, open: &Open) -> bool {
        !self.inner.shared || open.pusher.load(Ordering::Acquire)
    }

    async fn renew_lease(&self, open: &Open, now: i64) {
        if now - open.lease_renewed_ms.load(Ordering::Relaxed) < PUSHER_RENEW_MS {
            return;
        }
        open.lease_renewed_ms.store(now, Ordering::Relaxed);
        match self
            .inner
            .store
            .claim_contest_pusher(
                &open.row.id,
                &self.inner.node_id,
                now,
                now + PUSHER_LEASE_MS,
            )
            .await
        {
            Ok(held) => open.pusher.store(held, Ordering::Release),
            Err(e) => {
                // Unsure: stop pushing rather than risk two pushers.
                open.pusher.store(false, Ordering::Release);
                tracing::warn!(contest_id = %open.row.id, error = %e, "cannot renew the pusher lease");
            }
        }
    }

    /// Rebuilds the contest's engine from the shared SQL record (payments, refunds,
    /// likes and judges recorded by every node), then applies this node's recent events
    /// again in case the record was read before they were written.
    async fn resync(&self, open: &Arc<Open>) {
        let Ok((rules, participants)) = parse_contest(&open.row) else {
            return;
        };
        let events = match record(&self.inner.store, &open.row, &participants).await {
            Ok(events) => events,
            Err(e) => {
                tracing::warn!(contest_id = %open.row.id, error = %e, "cannot read the contest's record");
                return;
            }
        };
        let Ok(mut engine) = Engine::new(rules, participants) else {
            return;
        };
        for event in &events {
            engine.apply(event);
        }
        let recent: Vec<Event> = open
            .recent
            .as_ref()
            .map(|r| r.lock().iter().map(|(_, e)| e.clone()).collect())
            .unwrap_or_default();
        for event in &recent {
            engine.apply(event);
        }
        let changed = {
            let mut current = open.engine.lock();
            let changed = current.standings() != engine.standings();
            *current = engine;
            changed
        };
        if changed {
            open.dirty.store(true, Ordering::Release);
            for m in open.matches.lock().iter_mut() {
                m.dirty = true;
            }
        }
    }

    /// Picks up contests other nodes created.
    async fn discover(&self) {
        match self.inner.store.open_contests().await {
            Ok(rows) => {
                for row in rows {
                    if self.open(&row.id).is_none()
                        && let Err(e) = self.load(row).await
                    {
                        tracing::warn!(error = %e, "cannot load a contest");
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "cannot look for new contests"),
        }
    }

    fn set_phase(open: &Open, id: &str, phase: MatchPhase) {
        let mut matches = open.matches.lock();
        if phase == MatchPhase::Ended {
            matches.retain(|m| m.row.id != id);
        } else if let Some(m) = matches.iter_mut().find(|m| m.row.id == id) {
            m.row.phase = phase;
            m.last_score_ms = now_ms();
        }
    }

    async fn start_match(&self, open: &Arc<Open>, row: MatchRow, now: i64) {
        match self
            .inner
            .store
            .advance_match_phase(&row.id, MatchPhase::Scheduled, MatchPhase::Live, None)
            .await
        {
            Ok(true) => {
                Self::set_phase(open, &row.id, MatchPhase::Live);
                let mut live_row = row.clone();
                live_row.phase = MatchPhase::Live;
                let m = open.live_match(&live_row, now);
                if let Some(lm) = open.matches.lock().iter_mut().find(|m| m.row.id == row.id) {
                    lm.last_scores = m.scores.clone();
                }
                tracing::info!(match_id = %row.id, "PK match started");
                self.publish_to(
                    &open.rooms_of(Some(&row.participant_ids)),
                    wire::PkStarted { r#match: m },
                )
                .await;
            }
            // Another node started it.
            Ok(false) => self.refresh_match(open, &row.id).await,
            Err(e) => {
                tracing::warn!(match_id = %row.id, error = %e, "cannot start a match; will retry")
            }
        }
    }

    async fn refresh_match(&self, open: &Arc<Open>, id: &str) {
        if let Ok(stored) = self.inner.store.contest_match(id).await {
            if stored.phase == MatchPhase::Ended {
                open.apply(&Event::MatchResult(MatchResult {
                    match_id: stored.id.clone(),
                    winner_ids: stored.winner_ids.clone().unwrap_or_default(),
                    at_ms: stored.ends_at,
                }));
            }
            Self::set_phase(open, id, stored.phase);
        }
    }

    async fn end_match(&self, open: &Arc<Open>, row: MatchRow, now: i64) {
        let mut final_row = row.clone();
        final_row.phase = MatchPhase::Ended;
        let m = open.live_match(&final_row, now.max(row.ends_at));
        let scores = match serde_json::to_string(&m.scores) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot serialise match scores");
                return;
            }
        };
        // A match that never started (the node was down) goes straight to ended.
        let from = row.phase;
        match self
            .inner
            .store
            .advance_match_phase(
                &row.id,
                from,
                MatchPhase::Ended,
                Some((&scores, &m.winner_ids)),
            )
            .await
        {
            Ok(true) => {
                Self::set_phase(open, &row.id, MatchPhase::Ended);
                open.apply(&Event::MatchResult(MatchResult {
                    match_id: row.id.clone(),
                    winner_ids: m.winner_ids.clone(),
                    at_ms: row.ends_at,
                }));
                tracing::info!(match_id = %row.id, winners = ?m.winner_ids, "PK match ended");
                self.publish_to(
                    &open.rooms_of(Some(&row.participant_ids)),
                    wire::PkEnded { r#match: m },
                )
                .await;
            }
            Ok(false) => self.refresh_match(open, &row.id).await,
            Err(e) => {
                tracing::warn!(match_id = %row.id, error = %e, "cannot end a match; will retry")
            }
        }
    }

    async fn push_score(&self, open: &Arc<Open>, row: MatchRow, now: i64) {
        let m = open.live_match(&row, now);
        {
            let mut matches = open.matches.lock();
            let Some(lm) = matches.iter_mut().find(|x| x.row.id == row.id) else {
                return;
            };
            if lm.last_scores == m.scores {
                return;
            }
            lm.last_scores = m.scores.clone();
            lm.last_score_ms = now;
        }
        let leader_ids = harvest_contest::MatchOutcome::decide(&m.scores, false).0;
        self.publish_to(
            &open.rooms_of(Some(&row.participant_ids)),
            wire::PkScore {
                match_id: row.id.clone(),
                scores: m.scores,
                leader_ids,
                ends_at: time(row.ends_at),
            },
        )
        .await;
        // The throttle counts from when the last room got it: every room's next
        // `pk.score` is then at least 500 ms after this one by its `ts`.
        if let Some(lm) = open.matches.lock().iter_mut().find(|x| x.row.id == row.id) {
            lm.last_score_ms = now_ms();
        }
    }

    /// Settles a contest now (the organizer): 409 `too_early` before
    /// `ends_at + settle_grace_s`; the same results when already settled.
    pub async fn settle(&self, id: &str) -> Result<Standings, ApiError> {
        Ok(self.settle_at(id, now_ms()).await?.standings)
    }

    /// Settles a contest at `at_ms`: ends its due matches, writes pending like
    /// tallies, scores the stored record with a fresh engine settled at `at_ms` and
    /// stores the results once.
    async fn settle_at(&self, id: &str, at_ms: i64) -> Result<Results, ApiError> {
        let row = self.row(id).await?;
        if row.settled_at.is_some() {
            self.unload(id);
            return Self::stored_results(&row);
        }
        if at_ms < row.settles_at() {
            return Err(harvest_contest::ContestError::TooEarly {
                settles_at_ms: row.settles_at(),
            }
            .into());
        }
        let open = match self.open(id) {
            Some(open) => open,
            None => self
                .load(row.clone())
                .await
                .map_err(|e| internal("loading a contest", e))?,
        };
        let _ops = open.ops.lock().await;
        let now = now_ms();
        let due: Vec<MatchRow> = open
            .matches
            .lock()
            .iter()
            .filter(|m| m.row.ends_at <= at_ms)
            .map(|m| m.row.clone())
            .collect();
        for m in due {
            self.end_match(&open, m, now).await;
        }
        self.write_likes(at_ms.div_euclid(1000) + 1).await;
        let (rules, participants) =
            parse_contest(&row).map_err(|e| internal("stored contest", e))?;
        let events = record(&self.inner.store, &row, &participants)
            .await
            .map_err(|e| match e.downcast::<harvest_store::StoreError>() {
                Ok(store) => ApiError::from(store),
                Err(e) => internal("reading a contest's record", e),
            })?;
        let mut engine = Engine::new(rules, participants)?;
        engine.settle(at_ms)?;
        for event in &events {
            engine.apply(event);
        }
        let results = Results {
            standings: engine.standings().to_wire(id, time(at_ms)),
            audit: engine.audit(),
        };
        let text = serde_json::to_string(&results).map_err(|e| internal("contest results", e))?;
        let won = self.inner.store.settle_contest(id, at_ms, &text).await?;
        let results = if won {
            tracing::info!(contest_id = %id, "contest settled");
            self.publish_to(
                &open.rooms_of(None),
                wire::ContestStandings {
                    standings: results.standings.clone(),
                },
            )
            .await;
            results
        } else {
            Self::stored_results(&self.row(id).await?)?
        };
        drop(_ops);
        self.unload(id);
        Ok(results)
    }
}

/// What `harvest contest replay` found.
#[derive(Debug)]
pub struct Replay {
    pub contest_id: String,
    pub settled_at: DateTime<Utc>,
    /// The events of the record that were scored.
    pub events: usize,
    /// `path: stored → replayed` for every difference; empty when identical.
    pub differences: Vec<String>,
}

/// Recomputes a settled contest's results from its stored record with the batch scorer
/// and compares them with the results frozen at settlement.
pub async fn replay(store: &Store, id: &str) -> anyhow::Result<Replay> {
    let row = match store.contest(id).await {
        Ok(row) => row,
        Err(harvest_store::StoreError::NotFound) => anyhow::bail!("no contest {id:?}"),
        Err(e) => return Err(e.into()),
    };
    let (Some(settled_at), Some(stored)) = (row.settled_at, row.results.as_deref()) else {
        anyhow::bail!(
            "contest {id:?} is not settled: its results stay provisional until it settles \
             (at {} at the earliest), so there is nothing frozen to compare",
            time(row.settles_at()).to_rfc3339()
        );
    };
    let (rules, participants) = parse_contest(&row)?;
    let events = record(store, &row, &participants).await?;
    let scored = harvest_contest::score(&rules, &participants, &events, Some(settled_at))?;
    let replayed = Results {
        standings: scored.standings.to_wire(id, time(settled_at)),
        audit: scored.audit,
    };
    let stored: serde_json::Value = serde_json::from_str(stored)?;
    let replayed = serde_json::to_value(&replayed)?;
    let mut differences = Vec::new();
    json_diff("", &stored, &replayed, &mut differences);
    Ok(Replay {
        contest_id: id.to_owned(),
        settled_at: time(settled_at),
        events: events.len(),
        differences,
    })
}

/// Lists the differences between two JSON values as `path: a → b`.
fn json_diff(path: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                json_diff(
                    &p,
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                    out,
                );
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            for i in 0..x.len().max(y.len()) {
                json_diff(
                    &format!("{path}[{i}]"),
                    x.get(i).unwrap_or(&Value::Null),
                    y.get(i).unwrap_or(&Value::Null),
                    out,
                );
            }
        }
        _ if a != b => out.push(format!("{path}: stored {a} → replayed {b}")),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_diff_names_each_differing_path() {
        let a = serde_json::json!({"rows": [{"total": 1.5, "rank": 1}], "hash": "x"});
        let b = serde_json::json!({"rows": [{"total": 2.0, "rank": 1}, {"rank": 2}], "hash": "x"});
        let mut out = Vec::new();
        json_diff("", &a, &b, &mut out);
        assert_eq!(
            out,
            vec![
                "rows[0].total: stored 1.5 → replayed 2.0".to_owned(),
                "rows[1]: stored null → replayed {\"rank\":2}".to_owned(),
            ]
        );
        let mut none = Vec::new();
        json_diff("", &a, &a, &mut none);
        assert!(none.is_empty());
    }
}
