//! The embedded engine: every sale's state in process memory.
//!
//! Each sale sits behind its own mutex (never held across an `.await`; every method
//! body is synchronous), so different sales never contend, and a reservation on a hot
//! sale is one short critical section. A batch of one sale shares one critical section.
//!
//! The hot path allocates little, hashes each string once and touches few cache lines.
//! A sale keeps:
//! - its holds in one vector, in position order (a new hold always takes the next
//!   position; a restore sorts the record), so a hold is a slot number and the
//!   allocation log is a binary search. A hold also carries the idempotency record it
//!   answered (key and fingerprint) until the record is forgotten;
//! - its idempotency records, found through a map from a seeded 64-bit digest of
//!   `(user, key)` to the hold or the recorded rejection (the strings are compared on
//!   a hit, and digests that collide get a side map), forgotten oldest first once the
//!   TTL has passed;
//! - each buyer's usage (units held plus bought), which also shares one copy of each
//!   buyer id;
//! - an expiry index: slots grouped by expiry instant in a B-tree. Holds that end
//!   early (paid, released) are not taken out: the sweep skips them when their instant
//!   comes, so the index costs one push per reservation.
//!
//! One map shared by all sales (sharded, so it does not serialise sales) resolves a
//! hold id to its sale and slot; its keys carry their digest, so it never rehashes ids.
//! A hold id is claimed there before it is used, so it is never given to two holds,
//! even by two sales at once. A single reservation claims its id before it takes the
//! sale's lock (the claim is the costliest step, and runs alongside other
//! reservations); a batch claims inside its critical section.

use std::borrow::Borrow;
use std::collections::hash_map::Entry as MapEntry;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{BuildHasher, Hash};
use std::iter::Peekable;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::vec;

use async_trait::async_trait;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use parking_lot::{Mutex, MutexGuard};

use crate::digest::{BuildPrehashed, Seed};
use crate::engine::StockEngine;
use crate::error::StockError;
use crate::types::{
    Hold, HoldStatus, IDEMPOTENCY_TTL, Reject, ReserveOutcome, ReserveRequest, SaleCounts,
    SaleInfo, SaleRecord, SaleSpec,
};

/// A fast hasher with a random seed per map (keys come from clients, so the seed
/// keeps collisions unpredictable).
type Hasher = foldhash::fast::RandomState;
type Map<K, V> = HashMap<K, V, Hasher>;

/// Keeps a value on cache lines of its own.
#[repr(align(128))]
struct Padded<T>(T);

/// One sale: its state behind its lock, and a hint read without the lock. Aligned so
/// the reference counts of `Arc<Sale>` (bumped by index entries and lookups) do not
/// share a cache line with the lock.
#[repr(align(128))]
struct Sale {
    state: Mutex<SaleState>,
    /// Whether nothing remained when the lock was last released.
    sold_out: Padded<AtomicBool>,
}

impl Sale {
    fn new(state: SaleState) -> Self {
        let sold_out = state.remaining == 0;
        Self {
            state: Mutex::new(state),
            sold_out: Padded(AtomicBool::new(sold_out)),
        }
    }

    /// Updates the hint after `remaining` may have changed (written only on a change,
    /// so readers keep their cached copy).
    fn note(&self, st: &SaleState) {
        let sold_out = st.remaining == 0;
        if self.sold_out.0.load(Ordering::Relaxed) != sold_out {
            self.sold_out.0.store(sold_out, Ordering::Relaxed);
        }
    }
}

type SaleCell = Arc<Sale>;

/// The slot of a hold whose reservation claimed its id and has not finished.
const PENDING: usize = usize::MAX;

/// Where a hold lives: its sale and its slot in the sale's hold vector.
struct HoldRef {
    cell: SaleCell,
    slot: usize,
}

/// Hold id → sale and slot, for every sale; keys carry the digest of their id.
struct HoldIndex {
    seed: Seed,
    holds: DashMap<HoldKey, HoldRef, BuildPrehashed>,
}

impl HoldIndex {
    fn new() -> Self {
        Self {
            seed: Seed::default(),
            holds: DashMap::with_hasher(BuildPrehashed::default()),
        }
    }

    fn key(&self, hold_id: &str) -> HoldKey {
        HoldKey {
            digest: self.seed.hash_one(hold_id),
            id: Arc::from(hold_id),
        }
    }

    fn find(&self, hold_id: &str) -> Option<(SaleCell, usize)> {
        let id = HoldIdRef {
            digest: self.seed.hash_one(hold_id),
            id: hold_id,
        };
        self.holds
            .get(&id as &dyn HoldId)
            .map(|e| (Arc::clone(&e.cell), e.slot))
    }

    /// Claims a free hold id for a hold of `cell` at `slot` (or [`PENDING`]); the
    /// claimed key, or `None` if the id is in use.
    fn claim(&self, hold_id: &str, cell: &SaleCell, slot: usize) -> Option<HoldKey> {
        let key = self.key(hold_id);
        let claimed = key.clone();
        match self.holds.entry(key) {
            Entry::Occupied(_) => None,
            Entry::Vacant(v) => {
                v.insert(HoldRef {
                    cell: Arc::clone(cell),
                    slot,
                });
                Some(claimed)
            }
        }
    }

    /// Points a pending claim at the slot of the hold that was made.
    fn fill(&self, claim: &HoldKey, slot: usize) -> bool {
        match self.holds.get_mut(claim as &dyn HoldId) {
            Some(mut r) => {
                r.slot = slot;
                true
            }
            None => false,
        }
    }

    /// Gives back a claim whose reservation made no hold.
    fn unclaim(&self, claim: &HoldKey) {
        self.holds
            .remove_if(claim as &dyn HoldId, |_, r| r.slot == PENDING);
    }

    /// Drops the entry of `hold_id` if it points into `cell`.
    fn remove_in(&self, hold_id: &Arc<str>, cell: &SaleCell) {
        let key = HoldIdRef {
            digest: self.seed.hash_one(&**hold_id),
            id: hold_id,
        };
        self.holds
            .remove_if(&key as &dyn HoldId, |_, r| Arc::ptr_eq(&r.cell, cell));
    }

    fn insert(&self, hold_id: &Arc<str>, at: HoldRef) {
        let key = HoldKey {
            digest: self.seed.hash_one(&**hold_id),
            id: Arc::clone(hold_id),
        };
        self.holds.insert(key, at);
    }
}

/// A hold id as the index keys it: with its digest, so the index never rehashes ids.
#[derive(Clone)]
struct HoldKey {
    digest: u64,
    id: Arc<str>,
}

/// Either form of an indexed hold id, so the index is searched without allocating.
trait HoldId {
    fn digest(&self) -> u64;
    fn id(&self) -> &str;
}

impl HoldId for HoldKey {
    fn digest(&self) -> u64 {
        self.digest
    }
    fn id(&self) -> &str {
        &self.id
    }
}

/// A borrowed hold id with its digest.
struct HoldIdRef<'a> {
    digest: u64,
    id: &'a str,
}

impl HoldId for HoldIdRef<'_> {
    fn digest(&self) -> u64 {
        self.digest
    }
    fn id(&self) -> &str {
        self.id
    }
}

impl Hash for dyn HoldId + '_ {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.digest());
    }
}

impl PartialEq for dyn HoldId + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.digest() == other.digest() && self.id() == other.id()
    }
}

impl Eq for dyn HoldId + '_ {}

// `HoldKey` hashes and compares exactly as its `dyn HoldId` form, as `Borrow` asks.
impl Hash for HoldKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (self as &dyn HoldId).hash(state);
    }
}

impl PartialEq for HoldKey {
    fn eq(&self, other: &Self) -> bool {
        (self as &dyn HoldId) == (other as &dyn HoldId)
    }
}

impl Eq for HoldKey {}

impl<'a> Borrow<dyn HoldId + 'a> for HoldKey {
    fn borrow(&self) -> &(dyn HoldId + 'a) {
        self
    }
}

/// The in-process [`StockEngine`]. State lives as long as the value: after a restart,
/// rebuild live sales with [`StockEngine::restore_sale`].
pub struct MemoryEngine {
    sales: DashMap<String, SaleCell, Hasher>,
    holds: HoldIndex,
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
            holds: HoldIndex::new(),
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
        let st = cell.state.lock();
        for s in &st.slots {
            self.holds.remove_in(&s.id, &cell);
        }
        true
    }

    fn sale_cell(&self, sale_id: &str) -> Result<SaleCell, StockError> {
        self.sales
            .get(sale_id)
            .map(|e| Arc::clone(e.value()))
            .ok_or_else(|| StockError::SaleNotFound(sale_id.to_owned()))
    }

    /// Runs `f` on a hold under its sale's lock.
    fn with_hold<T>(
        &self,
        hold_id: &str,
        f: impl FnOnce(&mut SaleState, usize) -> Result<T, StockError>,
    ) -> Result<T, StockError> {
        // A restore renumbers slots and then re-indexes them before it unlocks the sale,
        // so an entry read before the restore is found stale here and read again.
        for _ in 0..3 {
            let Some((cell, slot)) = self.holds.find(hold_id) else {
                break;
            };
            let mut st = cell.state.lock();
            if st.slots.get(slot).is_some_and(|s| &*s.id == hold_id) {
                let out = f(&mut st, slot);
                cell.note(&st);
                return out;
            }
        }
        Err(StockError::HoldNotFound(hold_id.to_owned()))
    }

    /// Reserves `first` and the requests after it that share its sale, in order, in one
    /// critical section.
    fn reserve_run(
        &self,
        first: ReserveRequest,
        rest: &mut Peekable<vec::IntoIter<ReserveRequest>>,
        out: &mut Vec<Result<ReserveOutcome, StockError>>,
    ) {
        let Some(entry) = self.sales.get(first.sale_id.as_str()) else {
            out.push(unknown_sale(&first));
            while let Some(r) = rest.next_if(|r| r.sale_id == first.sale_id) {
                out.push(unknown_sale(&r));
            }
            return;
        };
        let ctx = self.ctx(entry.value());
        let mut st = lock_hot(&ctx.cell.state);
        let reserve = |st: &mut SaleState, r: ReserveRequest| match r.validate() {
            Ok(()) => st.reserve(r, &ctx, None),
            Err(e) => Err(e),
        };
        out.push(reserve(&mut st, first));
        while let Some(r) = rest.next_if(|r| r.sale_id == *entry.key()) {
            out.push(reserve(&mut st, r));
        }
        ctx.cell.note(&st);
    }

    fn ctx<'a>(&'a self, cell: &'a SaleCell) -> Ctx<'a> {
        Ctx {
            cell,
            index: &self.holds,
            idem_ttl_ms: self.idempotency_ttl_ms,
        }
    }
}

/// How many times [`lock_hot`] polls a held lock before it parks the thread: enough
/// for several critical sections, few enough to stop early if the holder was
/// descheduled.
const LOCK_SPINS: u32 = 1_000;

/// Locks a sale for a reservation. The critical section is a fraction of a
/// microsecond, much shorter than parking a thread and waking it (which a contended
/// `lock` soon does, after yielding the CPU a few times), so a busy lock is polled
/// first.
fn lock_hot(lock: &Mutex<SaleState>) -> MutexGuard<'_, SaleState> {
    let mut spins = 0;
    loop {
        if let Some(st) = lock.try_lock() {
            return st;
        }
        while lock.is_locked() {
            spins += 1;
            if spins > LOCK_SPINS {
                return lock.lock();
            }
            std::hint::spin_loop();
        }
    }
}

/// The answer to a reservation for a sale the engine does not know.
fn unknown_sale(r: &ReserveRequest) -> Result<ReserveOutcome, StockError> {
    r.validate()
        .map(|()| ReserveOutcome::Rejected(Reject::NotFound))
}

/// What a reservation needs besides the sale's state.
struct Ctx<'a> {
    cell: &'a SaleCell,
    index: &'a HoldIndex,
    idem_ttl_ms: i64,
}

/// Where an idempotency record lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RecordAt {
    /// With the hold it made, in this slot.
    Held(usize),
    /// In the rejection log, with this sequence number.
    Rejected(u64),
}

/// A recorded rejection.
#[derive(Debug)]
struct Rejection {
    user: Arc<str>,
    key: String,
    fingerprint: String,
    code: Reject,
    at_ms: i64,
}

/// A sale's idempotency records, found by digest. Records of holds live in their
/// slots and are forgotten in slot order; rejections live in a log, forgotten in the
/// order they were written.
#[derive(Debug)]
struct Records {
    seed: Seed,
    by_digest: HashMap<u64, RecordAt, BuildPrehashed>,
    /// Records whose digest another scope's record already uses, by
    /// `<len(user)>:<user>:<key>` (empty but for 64-bit collisions).
    collided: HashMap<String, RecordAt>,
    rejections: VecDeque<Rejection>,
    /// The sequence number of `rejections[0]`.
    first_rejection: u64,
    /// Slots before this one have no record any more (forgotten, or restored).
    held_cursor: usize,
}

impl Records {
    fn new() -> Self {
        Self {
            seed: Seed::default(),
            by_digest: HashMap::default(),
            collided: HashMap::new(),
            rejections: VecDeque::new(),
            first_rejection: 0,
            held_cursor: 0,
        }
    }

    fn digest(&self, user: &str, key: &str) -> u64 {
        self.seed.hash_one((user, key))
    }

    fn rejection(&self, seq: u64) -> Option<&Rejection> {
        let i = seq.checked_sub(self.first_rejection)?;
        self.rejections.get(usize::try_from(i).ok()?)
    }

    /// Links a new record, known not to exist yet for its scope.
    fn link(&mut self, digest: u64, at: RecordAt, user: &str, key: &str) {
        match self.by_digest.entry(digest) {
            MapEntry::Vacant(v) => {
                v.insert(at);
            }
            MapEntry::Occupied(_) => {
                self.collided.insert(scope_string(user, key), at);
            }
        }
    }

    fn unlink(&mut self, digest: u64, at: RecordAt, user: &str, key: &str) {
        if self.by_digest.get(&digest) == Some(&at) {
            self.by_digest.remove(&digest);
        } else if !self.collided.is_empty() {
            let scope = scope_string(user, key);
            if self.collided.get(&scope) == Some(&at) {
                self.collided.remove(&scope);
            }
        }
    }
}

/// `<len(user)>:<user>:<key>`: a scope as one unambiguous string.
fn scope_string(user: &str, key: &str) -> String {
    format!("{}:{user}:{key}", user.len())
}

/// A record found for a request's scope.
enum Found<'a> {
    Held { slot: usize, fingerprint: &'a str },
    Rejected { code: Reject, fingerprint: &'a str },
}

/// A hold as the sale keeps it; ids are shared with the hold index.
#[derive(Debug)]
struct Stored {
    id: Arc<str>,
    user: Arc<str>,
    quantity: u32,
    status: HoldStatus,
    position: u64,
    created_at_ms: i64,
    expires_at_ms: i64,
    /// The idempotency key and fingerprint of the reservation that made the hold, until
    /// its record is forgotten (restored holds have none).
    record: Option<(String, String)>,
}

/// Slots whose holds expire at one instant.
#[derive(Debug, Default)]
struct Due {
    slots: Vec<usize>,
    /// Whether `slots` is in descending hold-id order (the sweep pops the smallest id).
    sorted: bool,
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
    /// Every hold of the sale, in position order.
    slots: Vec<Stored>,
    /// Units each buyer holds plus has bought.
    used: Map<Arc<str>, u64>,
    /// Slots of held holds (and of holds that ended since) by expiry instant.
    expiry: BTreeMap<i64, Due>,
    records: Records,
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
            slots: Vec::new(),
            used: Map::default(),
            expiry: BTreeMap::new(),
            records: Records::new(),
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

    fn to_hold(&self, s: &Stored) -> Hold {
        Hold {
            hold_id: s.id.to_string(),
            sale_id: self.spec.sale_id.clone(),
            user_id: s.user.to_string(),
            quantity: s.quantity,
            position: s.position,
            created_at_ms: s.created_at_ms,
            expires_at_ms: s.expires_at_ms,
            status: s.status,
        }
    }

    /// The buyer's shared id, allocated once per buyer with usage.
    fn user(&self, user: &str) -> Arc<str> {
        match self.used.get_key_value(user) {
            Some((k, _)) => Arc::clone(k),
            None => Arc::from(user),
        }
    }

    fn add_usage(&mut self, user: &Arc<str>, units: u64) {
        *self.used.entry(Arc::clone(user)).or_insert(0) += units;
    }

    /// Files a held slot under its expiry instant.
    fn index_expiry(&mut self, expires_at_ms: i64, slot: usize) {
        let due = match self.expiry.last_entry() {
            Some(e) if *e.key() == expires_at_ms => e.into_mut(),
            _ => self.expiry.entry(expires_at_ms).or_default(),
        };
        due.slots.push(slot);
        due.sorted = false;
    }

    /// The record of `(user, key)`, if one is kept.
    fn find_record(&self, digest: u64, user: &str, key: &str) -> Option<Found<'_>> {
        let found = |at: RecordAt| match at {
            RecordAt::Held(slot) => {
                let s = self.slots.get(slot)?;
                let (k, fingerprint) = s.record.as_ref()?;
                (&*s.user == user && k == key).then_some(Found::Held { slot, fingerprint })
            }
            RecordAt::Rejected(seq) => {
                let r = self.records.rejection(seq)?;
                (&*r.user == user && r.key == key).then_some(Found::Rejected {
                    code: r.code,
                    fingerprint: &r.fingerprint,
                })
            }
        };
        if let Some(&at) = self.records.by_digest.get(&digest)
            && let Some(f) = found(at)
        {
            return Some(f);
        }
        if self.records.collided.is_empty() {
            return None;
        }
        found(*self.records.collided.get(&scope_string(user, key))?)
    }

    /// Forgets the records written `ttl_ms` or longer before `now_ms`, oldest first.
    fn prune_records(&mut self, now_ms: i64, ttl_ms: i64) {
        let due = |at_ms: i64| at_ms.saturating_add(ttl_ms) <= now_ms;
        while let Some(s) = self.slots.get_mut(self.records.held_cursor) {
            if s.record.is_some() && !due(s.created_at_ms) {
                break;
            }
            let slot = self.records.held_cursor;
            self.records.held_cursor += 1;
            if let Some((key, _)) = s.record.take() {
                let user = Arc::clone(&s.user);
                let digest = self.records.digest(&user, &key);
                self.records
                    .unlink(digest, RecordAt::Held(slot), &user, &key);
            }
        }
        while let Some(r) = self.records.rejections.front() {
            if !due(r.at_ms) {
                break;
            }
            let seq = self.records.first_rejection;
            if let Some(r) = self.records.rejections.pop_front() {
                self.records.first_rejection += 1;
                let digest = self.records.digest(&r.user, &r.key);
                self.records
                    .unlink(digest, RecordAt::Rejected(seq), &r.user, &r.key);
            }
        }
    }

    /// Reserves one validated request. `claim` is its hold id, already claimed in the
    /// index (pending), if the caller did so.
    fn reserve(
        &mut self,
        r: ReserveRequest,
        ctx: &Ctx<'_>,
        claim: Option<&HoldKey>,
    ) -> Result<ReserveOutcome, StockError> {
        self.prune_records(r.now_ms, ctx.idem_ttl_ms);
        let digest = self.records.digest(&r.user_id, &r.idempotency_key);
        if let Some(found) = self.find_record(digest, &r.user_id, &r.idempotency_key) {
            return Ok(match found {
                Found::Held { fingerprint, .. } | Found::Rejected { fingerprint, .. }
                    if fingerprint != r.request_fingerprint =>
                {
                    ReserveOutcome::Rejected(Reject::IdempotencyKeyReused)
                }
                Found::Rejected { code, .. } => ReserveOutcome::Rejected(code),
                Found::Held { slot, .. } => {
                    // The first outcome, as first answered.
                    let mut first = self.to_hold(&self.slots[slot]);
                    first.status = HoldStatus::Held;
                    ReserveOutcome::Held(first)
                }
            });
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
            return self.make_hold(r, digest, ctx, claim);
        };
        let seq = self.records.first_rejection + self.records.rejections.len() as u64;
        self.records.link(
            digest,
            RecordAt::Rejected(seq),
            &r.user_id,
            &r.idempotency_key,
        );
        let rejection = Rejection {
            user: self.user(&r.user_id),
            key: r.idempotency_key,
            fingerprint: r.request_fingerprint,
            code: reject,
            at_ms: r.now_ms,
        };
        self.records.rejections.push_back(rejection);
        Ok(ReserveOutcome::Rejected(reject))
    }

    fn make_hold(
        &mut self,
        r: ReserveRequest,
        digest: u64,
        ctx: &Ctx<'_>,
        claim: Option<&HoldKey>,
    ) -> Result<ReserveOutcome, StockError> {
        let slot = self.slots.len();
        let id = match claim {
            Some(key) if ctx.index.fill(key, slot) => Some(Arc::clone(&key.id)),
            Some(_) => None,
            None => ctx
                .index
                .claim(&r.hold_id, ctx.cell, slot)
                .map(|key| key.id),
        };
        // Never overwrite another hold; the caller must propose a fresh id.
        let Some(id) = id else {
            return Err(StockError::HoldIdTaken(r.hold_id));
        };
        let q = u64::from(r.quantity);
        self.remaining -= q;
        self.held += q;
        self.last_position += 1;
        let user = self.user(&r.user_id);
        self.add_usage(&user, q);
        let expires_at_ms = r.now_ms.saturating_add(self.ttl_ms);
        self.index_expiry(expires_at_ms, slot);
        self.records
            .link(digest, RecordAt::Held(slot), &r.user_id, &r.idempotency_key);
        self.slots.push(Stored {
            id,
            user,
            quantity: r.quantity,
            status: HoldStatus::Held,
            position: self.last_position,
            created_at_ms: r.now_ms,
            expires_at_ms,
            record: Some((r.idempotency_key, r.request_fingerprint)),
        });
        Ok(ReserveOutcome::Held(Hold {
            hold_id: r.hold_id,
            sale_id: r.sale_id,
            user_id: r.user_id,
            quantity: r.quantity,
            position: self.last_position,
            created_at_ms: r.now_ms,
            expires_at_ms,
            status: HoldStatus::Held,
        }))
    }

    /// Ends a held hold with `status`: paid units count as sold; released and expired
    /// units go back to `remaining` and leave the buyer's usage. `None` if it was not held.
    fn settle(&mut self, slot: usize, status: HoldStatus) -> Option<Hold> {
        let s = self.slots.get_mut(slot)?;
        if s.status != HoldStatus::Held {
            return None;
        }
        s.status = status;
        let q = u64::from(s.quantity);
        let user = Arc::clone(&s.user);
        self.held -= q;
        if status == HoldStatus::Paid {
            self.sold += q;
        } else {
            self.remaining += q;
            if let Some(u) = self.used.get_mut(&user) {
                *u = u.saturating_sub(q);
                if *u == 0 {
                    self.used.remove(&user);
                }
            }
        }
        Some(self.to_hold(&self.slots[slot]))
    }

    /// Expires due holds in `(expires_at, hold_id)` order until `out` holds `max`.
    fn expire_due(&mut self, now_ms: i64, max: usize, out: &mut Vec<Hold>) {
        while out.len() < max {
            match self.expiry.first_key_value() {
                Some((&at, _)) if at <= now_ms => {}
                _ => return,
            }
            let Some((at, mut due)) = self.expiry.pop_first() else {
                return;
            };
            if !due.sorted {
                let slots = &self.slots;
                due.slots
                    .sort_unstable_by(|a, b| slots[*b].id.cmp(&slots[*a].id));
                due.sorted = true;
            }
            while out.len() < max
                && let Some(slot) = due.slots.pop()
            {
                // Holds that were paid or released meanwhile are skipped.
                if let Some(h) = self.settle(slot, HoldStatus::Expired) {
                    out.push(h);
                }
            }
            if !due.slots.is_empty() {
                self.expiry.insert(at, due);
            }
        }
    }

    /// The sale's state rebuilt from a record (already validated into `counts`).
    fn restored(record: SaleRecord, counts: SaleCounts) -> Self {
        let mut st = Self::new(&record.spec);
        st.ended = record.ended;
        st.remaining = counts.remaining;
        st.held = counts.held;
        st.sold = counts.sold;
        for (user, units) in &record.sold_by_user {
            if *units > 0 {
                let user = st.user(user);
                st.add_usage(&user, *units);
            }
        }
        let mut holds = record.holds;
        holds.sort_unstable_by_key(|h| h.position);
        st.slots.reserve(holds.len());
        for h in holds {
            let slot = st.slots.len();
            let user = st.user(&h.user_id);
            st.last_position = st.last_position.max(h.position);
            if h.status == HoldStatus::Held {
                st.add_usage(&user, u64::from(h.quantity));
                st.index_expiry(h.expires_at_ms, slot);
            }
            st.slots.push(Stored {
                id: Arc::from(h.hold_id),
                user,
                quantity: h.quantity,
                status: h.status,
                position: h.position,
                created_at_ms: h.created_at_ms,
                expires_at_ms: h.expires_at_ms,
                record: None,
            });
        }
        st
    }
}

#[async_trait]
impl StockEngine for MemoryEngine {
    async fn create_sale(&self, spec: &SaleSpec) -> Result<SaleCounts, StockError> {
        spec.validate()?;
        let cell = self
            .sales
            .entry(spec.sale_id.clone())
            .or_insert_with(|| Arc::new(Sale::new(SaleState::new(spec))))
            .value()
            .clone();
        let st = cell.state.lock();
        if st.spec != *spec {
            return Err(StockError::SaleConflict(spec.sale_id.clone()));
        }
        Ok(st.counts())
    }

    async fn end_sale(&self, sale_id: &str, _now_ms: i64) -> Result<SaleCounts, StockError> {
        let cell = self.sale_cell(sale_id)?;
        let mut st = cell.state.lock();
        st.ended = true;
        Ok(st.counts())
    }

    async fn sale(&self, sale_id: &str) -> Result<SaleInfo, StockError> {
        let cell = self.sale_cell(sale_id)?;
        let st = cell.state.lock();
        Ok(SaleInfo {
            spec: st.spec.clone(),
            ended: st.ended,
            counts: st.counts(),
        })
    }

    async fn reserve(&self, req: ReserveRequest) -> Result<ReserveOutcome, StockError> {
        req.validate()?;
        let Some(entry) = self.sales.get(req.sale_id.as_str()) else {
            return Ok(ReserveOutcome::Rejected(Reject::NotFound));
        };
        let ctx = self.ctx(entry.value());
        // Claim the hold id before taking the lock, unless the sale looks sold out
        // (then most requests make no hold, and the claim would be given back).
        let claim = if ctx.cell.sold_out.0.load(Ordering::Relaxed) {
            None
        } else {
            self.holds.claim(&req.hold_id, ctx.cell, PENDING)
        };
        let out = {
            let mut st = lock_hot(&ctx.cell.state);
            let out = st.reserve(req, &ctx, claim.as_ref());
            ctx.cell.note(&st);
            out
        };
        if let Some(claim) = claim {
            let made = matches!(&out, Ok(ReserveOutcome::Held(h)) if h.hold_id == claim.id());
            if !made {
                self.holds.unclaim(&claim);
            }
        }
        out
    }

    async fn reserve_batch(
        &self,
        reqs: Vec<ReserveRequest>,
    ) -> Vec<Result<ReserveOutcome, StockError>> {
        let mut out = Vec::with_capacity(reqs.len());
        let mut reqs = reqs.into_iter().peekable();
        // Runs of the same sale share one critical section.
        while let Some(first) = reqs.next() {
            self.reserve_run(first, &mut reqs, &mut out);
        }
        out
    }

    async fn release(&self, hold_id: &str, user_id: &str, now_ms: i64) -> Result<Hold, StockError> {
        self.with_hold(hold_id, |st, slot| {
            let h = &st.slots[slot];
            if &*h.user != user_id {
                return Err(StockError::HoldNotFound(hold_id.to_owned()));
            }
            match h.status {
                HoldStatus::Paid => return Err(StockError::HoldPaid(hold_id.to_owned())),
                HoldStatus::Released => return Err(StockError::HoldReleased(hold_id.to_owned())),
                HoldStatus::Expired => return Err(StockError::HoldExpired(hold_id.to_owned())),
                HoldStatus::Held if now_ms >= h.expires_at_ms => {
                    return Err(StockError::HoldExpired(hold_id.to_owned()));
                }
                HoldStatus::Held => {}
            }
            st.settle(slot, HoldStatus::Released)
                .ok_or_else(|| StockError::Backend(format!("hold {hold_id} vanished")))
        })
    }

    async fn confirm_paid(&self, hold_id: &str, now_ms: i64) -> Result<Hold, StockError> {
        self.with_hold(hold_id, |st, slot| {
            let mut hold = st.to_hold(&st.slots[slot]);
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
            st.settle(slot, HoldStatus::Paid)
                .ok_or_else(|| StockError::Backend(format!("hold {hold_id} vanished")))
        })
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
            let mut st = cell.state.lock();
            st.expire_due(now_ms, max, &mut out);
            cell.note(&st);
        }
        Ok(out)
    }

    async fn counts(&self, sale_id: &str) -> Result<SaleCounts, StockError> {
        let cell = self.sale_cell(sale_id)?;
        let counts = cell.state.lock().counts();
        Ok(counts)
    }

    async fn hold(&self, hold_id: &str) -> Result<Hold, StockError> {
        self.with_hold(hold_id, |st, slot| Ok(st.to_hold(&st.slots[slot])))
    }

    async fn allocations(
        &self,
        sale_id: &str,
        after_position: u64,
        limit: usize,
    ) -> Result<Vec<Hold>, StockError> {
        let cell = self.sale_cell(sale_id)?;
        let st = cell.state.lock();
        let start = st.slots.partition_point(|s| s.position <= after_position);
        Ok(st.slots[start..]
            .iter()
            .take(limit)
            .map(|s| st.to_hold(s))
            .collect())
    }

    async fn restore_sale(&self, record: SaleRecord) -> Result<SaleCounts, StockError> {
        let counts = record.validate()?;
        let sale_id = record.spec.sale_id.clone();
        let fresh = SaleState::restored(record, counts);
        let cell = self
            .sales
            .entry(sale_id)
            .or_insert_with(|| Arc::new(Sale::new(SaleState::new(&fresh.spec))))
            .value()
            .clone();
        let old = {
            let mut st = cell.state.lock();
            let old = std::mem::replace(&mut *st, fresh);
            // Re-indexed before the sale unlocks: see `with_hold`.
            for s in &old.slots {
                self.holds.remove_in(&s.id, &cell);
            }
            for (slot, s) in st.slots.iter().enumerate() {
                let at = HoldRef {
                    cell: Arc::clone(&cell),
                    slot,
                };
                self.holds.insert(&s.id, at);
            }
            cell.note(&st);
            old
        };
        drop(old);
        Ok(counts)
    }

    async fn ping(&self) -> Result<(), StockError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const T0: i64 = 1_764_420_000_000;

    fn spec() -> SaleSpec {
        SaleSpec {
            sale_id: "s".into(),
            stock: 100,
            per_user_limit: 2,
            hold_ttl: Duration::from_secs(60),
            starts_at_ms: T0,
            ends_at_ms: T0 + 3 * 24 * 3_600_000,
        }
    }

    fn req(user: &str, quantity: u32, key: &str, hold_id: &str, now_ms: i64) -> ReserveRequest {
        ReserveRequest {
            sale_id: "s".into(),
            user_id: user.into(),
            quantity,
            idempotency_key: key.into(),
            request_fingerprint: format!("q{quantity}"),
            hold_id: hold_id.into(),
            now_ms,
        }
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
    }

    #[test]
    fn records_are_forgotten_after_the_idempotency_ttl() {
        rt().block_on(async {
            let e = MemoryEngine::new();
            e.create_sale(&spec()).await.unwrap();
            let ttl = e.idempotency_ttl_ms;
            let first = e.reserve(req("a", 1, "k", "h1", T0)).await.unwrap();
            let limited = e.reserve(req("b", 3, "k", "h2", T0)).await.unwrap();
            assert_eq!(limited, ReserveOutcome::Rejected(Reject::LimitExceeded));
            // Within the TTL both replay, whatever the proposed hold id.
            let at = T0 + ttl - 1;
            assert_eq!(e.reserve(req("a", 1, "k", "h3", at)).await.unwrap(), first);
            assert_eq!(
                e.reserve(req("b", 3, "k", "h4", at)).await.unwrap(),
                limited
            );
            // From then on the key is fresh: a new hold, a new check.
            let at = T0 + ttl;
            let again = e.reserve(req("a", 1, "k", "h5", at)).await.unwrap();
            assert_eq!(again.hold().map(|h| h.hold_id.as_str()), Some("h5"));
            let b = e.reserve(req("b", 1, "k", "h6", at)).await.unwrap();
            assert_eq!(b.hold().map(|h| h.position), Some(3));
            // The first hold is still there; only its record went.
            assert_eq!(e.hold("h1").await.unwrap().status, HoldStatus::Held);
        });
    }

    #[test]
    fn colliding_digests_keep_both_records() {
        let mut st = SaleState::new(&spec());
        let digest = 7;
        for (seq, user) in [(0, "a"), (1, "b")] {
            st.records.link(digest, RecordAt::Rejected(seq), user, "k");
            st.records.rejections.push_back(Rejection {
                user: Arc::from(user),
                key: "k".into(),
                fingerprint: format!("fp-{user}"),
                code: Reject::NotStarted,
                at_ms: T0 + i64::try_from(seq).unwrap(),
            });
        }
        let fingerprint = |st: &SaleState, user| match st.find_record(digest, user, "k") {
            Some(Found::Rejected { fingerprint, .. }) => Some(fingerprint.to_owned()),
            _ => None,
        };
        assert_eq!(fingerprint(&st, "a").as_deref(), Some("fp-a"));
        assert_eq!(fingerprint(&st, "b").as_deref(), Some("fp-b"));
        assert_eq!(fingerprint(&st, "c"), None);
        // Forgetting the first leaves the second findable, and the reverse.
        st.records.unlink(digest, RecordAt::Rejected(0), "a", "k");
        assert_eq!(fingerprint(&st, "a"), None);
        assert_eq!(fingerprint(&st, "b").as_deref(), Some("fp-b"));
        st.records.unlink(digest, RecordAt::Rejected(1), "b", "k");
        assert!(st.records.by_digest.is_empty() && st.records.collided.is_empty());
    }
}
