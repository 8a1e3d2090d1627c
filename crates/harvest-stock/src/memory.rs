//! The embedded engine: every sale's state in process memory.
//!
//! Each sale sits behind its own mutex (never held across an `.await`; every method
//! body is synchronous), so different sales never contend, and a reservation on a hot
//! sale is one short critical section. A hold-id index (a sharded map) finds the sale
//! of a hold; each sale keeps its own expiry index ordered by `(expires_at, hold_id)`,
//! which `expire_due` walks.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use dashmap::DashMap;
use parking_lot::Mutex;

use crate::engine::StockEngine;
use crate::error::StockError;
use crate::types::{
    Hold, HoldStatus, IDEMPOTENCY_TTL, Reject, ReserveOutcome, ReserveRequest, SaleCounts,
    SaleInfo, SaleRecord, SaleSpec,
};

type SaleCell = Arc<Mutex<SaleState>>;

/// A fast hasher with a random seed per map (keys come from clients, so the seed
/// keeps collisions unpredictable).
type Hasher = foldhash::fast::RandomState;
type Map<K, V> = HashMap<K, V, Hasher>;

/// The in-process [`StockEngine`]. State lives as long as the value: after a restart,
/// rebuild live sales with [`StockEngine::restore_sale`].
pub struct MemoryEngine {
    sales: DashMap<String, SaleCell, Hasher>,
    hold_index: DashMap<Arc<str>, SaleCell, Hasher>,
    idempotency_ttl_ms: i64,
    sweep_cursor: AtomicUsize,
}

impl Default for MemoryEngine {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryEngine {
    pub fn new() -> Self {
        Self {
            sales: DashMap::with_hasher(Hasher::default()),
            hold_index: DashMap::with_hasher(Hasher::default()),
            idempotency_ttl_ms: i64::try_from(IDEMPOTENCY_TTL.as_millis()).unwrap_or(i64::MAX),
            sweep_cursor: AtomicUsize::new(0),
        }
    }

    /// Drops a sale's state as a crash would (tests and tools use it to exercise
    /// [`StockEngine::restore_sale`]). Returns whether the sale existed.
    pub fn forget_sale(&self, sale_id: &str) -> bool {
        let Some((_, cell)) = self.sales.remove(sale_id) else {
            return false;
        };
        let ids: Vec<Arc<str>> = cell.lock().holds.keys().cloned().collect();
        for id in ids {
            self.hold_index.remove_if(&id, |_, c| Arc::ptr_eq(c, &cell));
        }
        true
    }

    fn sale_cell(&self, sale_id: &str) -> Option<SaleCell> {
        self.sales.get(sale_id).map(|e| Arc::clone(e.value()))
    }

    fn hold_cell(&self, hold_id: &str) -> Result<SaleCell, StockError> {
        self.hold_index
            .get(hold_id)
            .map(|e| Arc::clone(e.value()))
            .ok_or_else(|| StockError::HoldNotFound(hold_id.to_owned()))
    }

    /// Reserves a run of requests for one sale in one critical section. Everything that
    /// can be prepared without the lock (validation, idempotency keys) is.
    fn reserve_group(&self, reqs: Vec<ReserveRequest>) -> Vec<Result<ReserveOutcome, StockError>> {
        let Some(first) = reqs.first() else {
            return Vec::new();
        };
        let Some(cell) = self.sale_cell(&first.sale_id) else {
            return reqs
                .iter()
                .map(|r| {
                    r.validate()
                        .map(|()| ReserveOutcome::Rejected(Reject::NotFound))
                })
                .collect();
        };
        let prepared: Vec<Result<(String, ReserveRequest), StockError>> = reqs
            .into_iter()
            .map(|r| {
                r.validate()?;
                Ok((idem_key(&r.user_id, &r.idempotency_key), r))
            })
            .collect();
        let mut new_holds = Vec::new();
        let out: Vec<_> = {
            let mut st = cell.lock();
            let taken = |id: &str| self.hold_index.contains_key(id);
            prepared
                .into_iter()
                .map(|p| {
                    let (key, r) = p?;
                    st.reserve(r, key, self.idempotency_ttl_ms, &taken, &mut new_holds)
                })
                .collect()
        };
        for id in new_holds {
            self.hold_index.insert(id, Arc::clone(&cell));
        }
        out
    }
}

#[derive(Debug)]
enum Recorded {
    Held(Arc<str>),
    Rejected(Reject),
}

#[derive(Debug)]
struct IdemRecord {
    fingerprint: String,
    outcome: Recorded,
    at_ms: i64,
}

/// A hold as the sale keeps it; ids are shared with the indexes.
#[derive(Debug, Clone)]
struct Stored {
    user: Arc<str>,
    quantity: u32,
    position: u64,
    created_at_ms: i64,
    expires_at_ms: i64,
    status: HoldStatus,
}

#[derive(Debug)]
struct SaleState {
    spec: SaleSpec,
    ttl_ms: i64,
    ended: bool,
    remaining: u64,
    held: u64,
    sold: u64,
    last_position: u64,
    /// Units each buyer holds plus has bought.
    used: Map<Arc<str>, u64>,
    holds: Map<Arc<str>, Stored>,
    by_position: BTreeMap<u64, Arc<str>>,
    /// Held holds by `(expires_at_ms, hold_id)`.
    expiry: BTreeSet<(i64, Arc<str>)>,
    idem: Map<String, IdemRecord>,
    idem_order: VecDeque<(i64, String)>,
}

fn idem_key(user: &str, key: &str) -> String {
    format!("{}:{user}:{key}", user.len())
}

impl SaleState {
    fn new(spec: &SaleSpec) -> Self {
        Self {
            ttl_ms: spec.hold_ttl_ms(),
            spec: spec.clone(),
            ended: false,
            remaining: spec.stock,
            held: 0,
            sold: 0,
            last_position: 0,
            used: Map::default(),
            holds: Map::default(),
            by_position: BTreeMap::new(),
            expiry: BTreeSet::new(),
            idem: Map::default(),
            idem_order: VecDeque::new(),
        }
    }

    fn counts(&self) -> SaleCounts {
        SaleCounts {
            stock: self.spec.stock,
            remaining: self.remaining,
            held: self.held,
            sold: self.sold,
        }
    }

    fn to_hold(&self, id: &str, s: &Stored) -> Hold {
        Hold {
            hold_id: id.to_owned(),
            sale_id: self.spec.sale_id.clone(),
            user_id: s.user.to_string(),
            quantity: s.quantity,
            position: s.position,
            created_at_ms: s.created_at_ms,
            expires_at_ms: s.expires_at_ms,
            status: s.status,
        }
    }

    fn hold(&self, id: &str) -> Option<Hold> {
        self.holds.get(id).map(|s| self.to_hold(id, s))
    }

    /// The buyer's shared id, allocated once per buyer.
    fn user(&mut self, user: &str) -> Arc<str> {
        match self.used.get_key_value(user) {
            Some((k, _)) => Arc::clone(k),
            None => Arc::from(user),
        }
    }

    fn prune_idempotency(&mut self, now_ms: i64, ttl_ms: i64) {
        while let Some((at, _)) = self.idem_order.front() {
            if at.saturating_add(ttl_ms) > now_ms {
                break;
            }
            if let Some((at, key)) = self.idem_order.pop_front()
                && self.idem.get(&key).is_some_and(|r| r.at_ms == at)
            {
                self.idem.remove(&key);
            }
        }
    }

    fn record(&mut self, key: String, fingerprint: String, outcome: Recorded, now_ms: i64) {
        self.idem_order.push_back((now_ms, key.clone()));
        self.idem.insert(
            key,
            IdemRecord {
                fingerprint,
                outcome,
                at_ms: now_ms,
            },
        );
    }

    fn reserve(
        &mut self,
        r: ReserveRequest,
        key: String,
        idem_ttl_ms: i64,
        taken: &dyn Fn(&str) -> bool,
        new_holds: &mut Vec<Arc<str>>,
    ) -> Result<ReserveOutcome, StockError> {
        self.prune_idempotency(r.now_ms, idem_ttl_ms);
        if let Some(rec) = self.idem.get(&key) {
            if rec.fingerprint != r.request_fingerprint {
                return Ok(ReserveOutcome::Rejected(Reject::IdempotencyKeyReused));
            }
            match &rec.outcome {
                Recorded::Rejected(code) => return Ok(ReserveOutcome::Rejected(*code)),
                Recorded::Held(id) => {
                    if let Some(mut first) = self.hold(id) {
                        first.status = HoldStatus::Held;
                        return Ok(ReserveOutcome::Held(first));
                    }
                    // The hold is gone (state rebuilt without it): a fresh attempt.
                }
            }
        }
        let q = u64::from(r.quantity);
        let reject = if r.now_ms < self.spec.starts_at_ms {
            Reject::NotStarted
        } else if self.ended || r.now_ms >= self.spec.ends_at_ms {
            Reject::SaleEnded
        } else if self.remaining == 0 {
            return Ok(ReserveOutcome::Rejected(Reject::SoldOut));
        } else if self.used.get(r.user_id.as_str()).copied().unwrap_or(0) + q
            > u64::from(self.spec.per_user_limit)
        {
            Reject::LimitExceeded
        } else if self.remaining < q {
            Reject::InsufficientStock
        } else {
            return self.make_hold(r, key, taken, new_holds);
        };
        self.record(
            key,
            r.request_fingerprint,
            Recorded::Rejected(reject),
            r.now_ms,
        );
        Ok(ReserveOutcome::Rejected(reject))
    }

    fn make_hold(
        &mut self,
        r: ReserveRequest,
        key: String,
        taken: &dyn Fn(&str) -> bool,
        new_holds: &mut Vec<Arc<str>>,
    ) -> Result<ReserveOutcome, StockError> {
        if self.holds.contains_key(r.hold_id.as_str()) || taken(&r.hold_id) {
            // Never overwrite another hold; the caller must propose a fresh id.
            return Err(StockError::HoldIdTaken(r.hold_id));
        }
        let q = u64::from(r.quantity);
        self.remaining -= q;
        self.held += q;
        self.last_position += 1;
        let user = self.user(&r.user_id);
        *self.used.entry(Arc::clone(&user)).or_insert(0) += q;
        let id: Arc<str> = Arc::from(r.hold_id.as_str());
        let stored = Stored {
            user,
            quantity: r.quantity,
            position: self.last_position,
            created_at_ms: r.now_ms,
            expires_at_ms: r.now_ms.saturating_add(self.ttl_ms),
            status: HoldStatus::Held,
        };
        self.expiry.insert((stored.expires_at_ms, Arc::clone(&id)));
        self.by_position.insert(stored.position, Arc::clone(&id));
        let hold = Hold {
            hold_id: r.hold_id,
            sale_id: r.sale_id,
            user_id: r.user_id,
            quantity: stored.quantity,
            position: stored.position,
            created_at_ms: stored.created_at_ms,
            expires_at_ms: stored.expires_at_ms,
            status: HoldStatus::Held,
        };
        self.holds.insert(Arc::clone(&id), stored);
        self.record(
            key,
            r.request_fingerprint,
            Recorded::Held(Arc::clone(&id)),
            r.now_ms,
        );
        new_holds.push(id);
        Ok(ReserveOutcome::Held(hold))
    }

    /// Ends a held hold with `status`, returning its units to `remaining`.
    fn give_back(&mut self, hold_id: &str, status: HoldStatus) -> Option<Hold> {
        let (id, s) = self.holds.get_key_value(hold_id)?;
        if s.status != HoldStatus::Held {
            return None;
        }
        let (id, user, q, expires) = (
            Arc::clone(id),
            Arc::clone(&s.user),
            s.quantity,
            s.expires_at_ms,
        );
        if let Some(s) = self.holds.get_mut(hold_id) {
            s.status = status;
        }
        let q = u64::from(q);
        self.remaining += q;
        self.held -= q;
        if let Some(u) = self.used.get_mut(&user) {
            *u = u.saturating_sub(q);
            if *u == 0 {
                self.used.remove(&user);
            }
        }
        self.expiry.remove(&(expires, id));
        self.hold(hold_id)
    }
}

#[async_trait]
impl StockEngine for MemoryEngine {
    async fn create_sale(&self, spec: &SaleSpec) -> Result<SaleCounts, StockError> {
        spec.validate()?;
        let cell = self
            .sales
            .entry(spec.sale_id.clone())
            .or_insert_with(|| Arc::new(Mutex::new(SaleState::new(spec))))
            .value()
            .clone();
        let st = cell.lock();
        if st.spec != *spec {
            return Err(StockError::SaleConflict(spec.sale_id.clone()));
        }
        Ok(st.counts())
    }

    async fn end_sale(&self, sale_id: &str, _now_ms: i64) -> Result<SaleCounts, StockError> {
        let cell = self
            .sale_cell(sale_id)
            .ok_or_else(|| StockError::SaleNotFound(sale_id.to_owned()))?;
        let mut st = cell.lock();
        st.ended = true;
        Ok(st.counts())
    }

    async fn sale(&self, sale_id: &str) -> Result<SaleInfo, StockError> {
        let cell = self
            .sale_cell(sale_id)
            .ok_or_else(|| StockError::SaleNotFound(sale_id.to_owned()))?;
        let st = cell.lock();
        Ok(SaleInfo {
            spec: st.spec.clone(),
            ended: st.ended,
            counts: st.counts(),
        })
    }

    async fn reserve(&self, req: ReserveRequest) -> Result<ReserveOutcome, StockError> {
        let mut out = self.reserve_group(vec![req]);
        out.pop()
            .unwrap_or_else(|| Err(StockError::Backend("empty reservation result".into())))
    }

    async fn reserve_batch(
        &self,
        reqs: Vec<ReserveRequest>,
    ) -> Vec<Result<ReserveOutcome, StockError>> {
        let mut out = Vec::with_capacity(reqs.len());
        // Runs of the same sale share one critical section.
        let mut run: Vec<ReserveRequest> = Vec::new();
        for r in reqs {
            if run.first().is_some_and(|f| f.sale_id != r.sale_id) {
                out.extend(self.reserve_group(std::mem::take(&mut run)));
            }
            run.push(r);
        }
        out.extend(self.reserve_group(run));
        out
    }

    async fn release(&self, hold_id: &str, user_id: &str, now_ms: i64) -> Result<Hold, StockError> {
        let cell = self.hold_cell(hold_id)?;
        let mut st = cell.lock();
        let h = match st.holds.get(hold_id) {
            Some(h) if &*h.user == user_id => h,
            _ => return Err(StockError::HoldNotFound(hold_id.to_owned())),
        };
        match h.status {
            HoldStatus::Paid => return Err(StockError::HoldPaid(hold_id.to_owned())),
            HoldStatus::Released => return Err(StockError::HoldReleased(hold_id.to_owned())),
            HoldStatus::Expired => return Err(StockError::HoldExpired(hold_id.to_owned())),
            HoldStatus::Held if now_ms >= h.expires_at_ms => {
                return Err(StockError::HoldExpired(hold_id.to_owned()));
            }
            HoldStatus::Held => {}
        }
        st.give_back(hold_id, HoldStatus::Released)
            .ok_or_else(|| StockError::Backend(format!("hold {hold_id} vanished")))
    }

    async fn confirm_paid(&self, hold_id: &str, now_ms: i64) -> Result<Hold, StockError> {
        let cell = self.hold_cell(hold_id)?;
        let mut st = cell.lock();
        let mut hold = st
            .hold(hold_id)
            .ok_or_else(|| StockError::HoldNotFound(hold_id.to_owned()))?;
        match hold.status {
            HoldStatus::Paid => return Ok(hold),
            HoldStatus::Released | HoldStatus::Expired => {
                return Err(StockError::LateHold {
                    status: hold.status,
                    hold: Box::new(hold),
                });
            }
            HoldStatus::Held if now_ms >= hold.expires_at_ms => {
                hold.status = HoldStatus::Expired;
                return Err(StockError::LateHold {
                    status: HoldStatus::Expired,
                    hold: Box::new(hold),
                });
            }
            HoldStatus::Held => {}
        }
        let st = &mut *st;
        let Some((id, stored)) = st.holds.get_key_value(hold_id) else {
            return Err(StockError::HoldNotFound(hold_id.to_owned()));
        };
        let id = Arc::clone(id);
        let expires = stored.expires_at_ms;
        if let Some(s) = st.holds.get_mut(hold_id) {
            s.status = HoldStatus::Paid;
        }
        let q = u64::from(hold.quantity);
        st.held -= q;
        st.sold += q;
        st.expiry.remove(&(expires, id));
        hold.status = HoldStatus::Paid;
        Ok(hold)
    }

    async fn expire_due(&self, now_ms: i64, max: usize) -> Result<Vec<Hold>, StockError> {
        let mut cells: Vec<SaleCell> = self.sales.iter().map(|e| Arc::clone(e.value())).collect();
        if cells.is_empty() {
            return Ok(Vec::new());
        }
        // Start at a different sale each sweep so a busy sale cannot starve the others.
        let start = self.sweep_cursor.fetch_add(1, Ordering::Relaxed) % cells.len();
        cells.rotate_left(start);
        let mut out = Vec::new();
        for cell in cells {
            if out.len() >= max {
                break;
            }
            let mut st = cell.lock();
            while out.len() < max {
                let Some((at, id)) = st.expiry.first().cloned() else {
                    break;
                };
                if at > now_ms {
                    break;
                }
                match st.give_back(&id, HoldStatus::Expired) {
                    Some(h) => out.push(h),
                    None => {
                        st.expiry.remove(&(at, id));
                    }
                }
            }
        }
        Ok(out)
    }

    async fn counts(&self, sale_id: &str) -> Result<SaleCounts, StockError> {
        let cell = self
            .sale_cell(sale_id)
            .ok_or_else(|| StockError::SaleNotFound(sale_id.to_owned()))?;
        let counts = cell.lock().counts();
        Ok(counts)
    }

    async fn hold(&self, hold_id: &str) -> Result<Hold, StockError> {
        let cell = self.hold_cell(hold_id)?;
        let st = cell.lock();
        st.hold(hold_id)
            .ok_or_else(|| StockError::HoldNotFound(hold_id.to_owned()))
    }

    async fn allocations(
        &self,
        sale_id: &str,
        after_position: u64,
        limit: usize,
    ) -> Result<Vec<Hold>, StockError> {
        let cell = self
            .sale_cell(sale_id)
            .ok_or_else(|| StockError::SaleNotFound(sale_id.to_owned()))?;
        let st = cell.lock();
        Ok(st
            .by_position
            .range(after_position.saturating_add(1)..)
            .take(limit)
            .filter_map(|(_, id)| st.hold(id))
            .collect())
    }

    async fn restore_sale(&self, record: SaleRecord) -> Result<SaleCounts, StockError> {
        let counts = record.validate()?;
        let mut fresh = SaleState::new(&record.spec);
        fresh.ended = record.ended;
        fresh.remaining = counts.remaining;
        fresh.held = counts.held;
        fresh.sold = counts.sold;
        for (user, units) in &record.sold_by_user {
            if *units > 0 {
                let user = fresh.user(user);
                *fresh.used.entry(user).or_insert(0) += units;
            }
        }
        for h in &record.holds {
            let id: Arc<str> = Arc::from(h.hold_id.as_str());
            let user = fresh.user(&h.user_id);
            fresh.last_position = fresh.last_position.max(h.position);
            fresh.by_position.insert(h.position, Arc::clone(&id));
            if h.status == HoldStatus::Held {
                *fresh.used.entry(Arc::clone(&user)).or_insert(0) += u64::from(h.quantity);
                fresh.expiry.insert((h.expires_at_ms, Arc::clone(&id)));
            }
            let stored = Stored {
                user,
                quantity: h.quantity,
                position: h.position,
                created_at_ms: h.created_at_ms,
                expires_at_ms: h.expires_at_ms,
                status: h.status,
            };
            fresh.holds.insert(id, stored);
        }
        let hold_ids: Vec<Arc<str>> = fresh.holds.keys().cloned().collect();
        let sale_id = record.spec.sale_id.clone();
        let cell = match self.sale_cell(&sale_id) {
            Some(cell) => {
                let old = std::mem::replace(&mut *cell.lock(), fresh);
                for id in old.holds.keys() {
                    self.hold_index.remove_if(id, |_, c| Arc::ptr_eq(c, &cell));
                }
                cell
            }
            None => {
                let cell = Arc::new(Mutex::new(fresh));
                self.sales.insert(sale_id, Arc::clone(&cell));
                cell
            }
        };
        for id in hold_ids {
            self.hold_index.insert(id, Arc::clone(&cell));
        }
        Ok(counts)
    }

    async fn ping(&self) -> Result<(), StockError> {
        Ok(())
    }
}
