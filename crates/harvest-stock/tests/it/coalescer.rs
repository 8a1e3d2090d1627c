//! Coalescer behaviour beyond the conformance suite: batching, FCFS order, per-request
//! outcomes, and the local sold-out flag. Each test runs on memory, and on Redis with
//! the servers backend.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::future::join_all;
use harvest_stock::{
    Coalescer, CoalescerConfig, Hold, Reject, ReserveOutcome, ReserveRequest, SaleCounts, SaleInfo,
    SaleRecord, SaleSpec, StockEngine, StockError,
};

use crate::harness::*;

macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(std::sync::Arc::new(harvest_stock::MemoryEngine::new())).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(r) = crate::harness::redis_engine() {
                        super::$name(r).await;
                    }
                }
            )*
        }
    };
}

on_both!(
    concurrent_reservations_share_batches_in_arrival_order,
    sold_out_is_answered_locally_until_stock_returns,
    sold_out_flag_lapses_and_never_masks_the_end,
    replays_while_sold_out_get_their_first_outcome,
);

/// Holds the first `reserve_batch` call until released, so requests pile up behind it.
struct Gate {
    inner: Arc<dyn StockEngine>,
    gate: tokio::sync::Semaphore,
}

#[async_trait]
impl StockEngine for Gate {
    async fn create_sale(&self, spec: &SaleSpec) -> Result<SaleCounts, StockError> {
        self.inner.create_sale(spec).await
    }
    async fn end_sale(&self, sale_id: &str, now_ms: i64) -> Result<SaleCounts, StockError> {
        self.inner.end_sale(sale_id, now_ms).await
    }
    async fn sale(&self, sale_id: &str) -> Result<SaleInfo, StockError> {
        self.inner.sale(sale_id).await
    }
    async fn reserve(&self, req: ReserveRequest) -> Result<ReserveOutcome, StockError> {
        self.inner.reserve(req).await
    }
    async fn reserve_batch(
        &self,
        reqs: Vec<ReserveRequest>,
    ) -> Vec<Result<ReserveOutcome, StockError>> {
        let permit = self.gate.acquire().await.expect("gate open");
        permit.forget();
        self.inner.reserve_batch(reqs).await
    }
    async fn release(&self, hold_id: &str, user_id: &str, now_ms: i64) -> Result<Hold, StockError> {
        self.inner.release(hold_id, user_id, now_ms).await
    }
    async fn confirm_paid(&self, hold_id: &str, now_ms: i64) -> Result<Hold, StockError> {
        self.inner.confirm_paid(hold_id, now_ms).await
    }
    async fn expire_due(&self, now_ms: i64, max: usize) -> Result<Vec<Hold>, StockError> {
        self.inner.expire_due(now_ms, max).await
    }
    async fn counts(&self, sale_id: &str) -> Result<SaleCounts, StockError> {
        self.inner.counts(sale_id).await
    }
    async fn hold(&self, hold_id: &str) -> Result<Hold, StockError> {
        self.inner.hold(hold_id).await
    }
    async fn allocations(
        &self,
        sale_id: &str,
        after_position: u64,
        limit: usize,
    ) -> Result<Vec<Hold>, StockError> {
        self.inner.allocations(sale_id, after_position, limit).await
    }
    async fn restore_sale(&self, record: SaleRecord) -> Result<SaleCounts, StockError> {
        self.inner.restore_sale(record).await
    }
    async fn ping(&self) -> Result<(), StockError> {
        self.inner.ping().await
    }
}

async fn concurrent_reservations_share_batches_in_arrival_order(inner: Arc<dyn StockEngine>) {
    // Coalescer -> Counting (sees each batch as it is sent) -> Gate -> engine.
    let gate = Arc::new(Gate {
        inner,
        gate: tokio::sync::Semaphore::new(0),
    });
    let counting = Counting::new(gate.clone());
    let c = Coalescer::new(
        counting.clone(),
        CoalescerConfig {
            max_batch: 50,
            ..CoalescerConfig::default()
        },
    );
    let s = new_sale(&c, 100, 2).await;
    // The first request starts a batch that waits at the gate.
    let first = {
        let c = c.clone();
        let r = req(&s, "first", 1, "k");
        tokio::spawn(async move { c.reserve(r).await })
    };
    while counting.engine_calls() == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // 120 more arrive while it is in flight, in this order, asking for 1 or 2 units;
    // user u7 asks three times (its second request passes the limit of 2).
    let reqs: Vec<ReserveRequest> = (0..120)
        .map(|i| {
            let user = if i % 40 == 7 {
                "u7".to_owned()
            } else {
                format!("u{i}")
            };
            req(&s, &user, 1 + (i % 2) as u32, &format!("k{i}"))
        })
        .collect();
    // join_all polls the calls in order, so they queue in this order; the gate opens
    // once all of them wait.
    let opener = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        gate.gate.add_permits(100);
    };
    let (out, ()) = tokio::join!(join_all(reqs.iter().cloned().map(|r| c.reserve(r))), opener);
    let first = first.await.unwrap().unwrap();
    assert_eq!(first.hold().unwrap().position, 1);
    // One batch for the first request, then full batches of the queued ones.
    let sizes = counting.batch_sizes.lock().clone();
    assert_eq!(sizes, vec![1, 50, 50, 20], "batch sizes");
    assert_eq!(
        counting
            .reserve_calls
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    let stats = c.stats();
    assert_eq!((stats.batches, stats.batched_requests), (4, 121));

    // Each caller got its own outcome, and positions follow arrival order.
    let mut last_position = 1;
    let mut units = 1;
    for (r, o) in reqs.iter().zip(&out) {
        match o.as_ref().unwrap() {
            ReserveOutcome::Held(h) => {
                assert_eq!(h.user_id, r.user_id);
                assert_eq!(h.quantity, r.quantity);
                assert!(h.position > last_position, "FCFS: positions follow arrival");
                last_position = h.position;
                units += u64::from(h.quantity);
            }
            ReserveOutcome::Rejected(rej) => assert!(
                matches!(rej, Reject::SoldOut | Reject::InsufficientStock)
                    || (r.user_id == "u7" && *rej == Reject::LimitExceeded),
                "{} got {rej:?}",
                r.user_id
            ),
        }
    }
    assert_eq!(
        *out[47].as_ref().unwrap(),
        ReserveOutcome::Rejected(Reject::LimitExceeded)
    );
    let counts = counts(&c, &s).await;
    assert_eq!(counts.held, units);
    assert_eq!(counts.remaining, 0, "the first comers took everything");
    let holds = all_holds(&c, &s.sale_id).await;
    assert_eq!(holds.len() as u64, last_position);
}

async fn sold_out_is_answered_locally_until_stock_returns(inner: Arc<dyn StockEngine>) {
    let counting = Counting::new(inner);
    let c = Coalescer::new(
        counting.clone(),
        CoalescerConfig {
            sold_out_recheck: Duration::from_secs(60),
            ..CoalescerConfig::default()
        },
    );
    let s = new_sale(&c, 2, 2).await;
    let a = hold(&c, req(&s, "a", 2, "k")).await;
    assert_eq!(
        c.reserve(req(&s, "b", 1, "k")).await.unwrap(),
        ReserveOutcome::Rejected(Reject::SoldOut)
    );
    assert!(c.is_sold_out_locally(&s.sale_id));
    let calls = counting.engine_calls();
    let rejections = join_all((0..200).map(|i| c.reserve(req(&s, &format!("x{i}"), 1, "k")))).await;
    assert!(
        rejections
            .iter()
            .all(|r| *r.as_ref().unwrap() == ReserveOutcome::Rejected(Reject::SoldOut))
    );
    assert_eq!(
        counting.engine_calls(),
        calls,
        "no engine call after sell-out"
    );
    assert_eq!(c.stats().local_sold_out, 200);

    // A release through this coalescer re-arms the sale.
    c.release(&a.hold_id, "a", T0 + 5).await.unwrap();
    assert!(!c.is_sold_out_locally(&s.sale_id));
    let b = hold(&c, req(&s, "b", 1, "k")).await;
    assert_eq!(b.position, 2);
    hold(&c, req(&s, "c", 1, "k")).await;
    assert_eq!(
        c.reserve(req(&s, "d", 1, "k")).await.unwrap(),
        ReserveOutcome::Rejected(Reject::SoldOut)
    );
    assert!(c.is_sold_out_locally(&s.sale_id));

    // Stock returned elsewhere (another node's release, told through an event).
    c.inner().release(&b.hold_id, "b", T0 + 6).await.unwrap();
    assert!(
        c.is_sold_out_locally(&s.sale_id),
        "this node has not heard yet"
    );
    c.stock_returned(&s.sale_id);
    assert_eq!(hold(&c, req(&s, "d", 1, "k2")).await.position, 4);

    // Expiry through the coalescer re-arms as well.
    assert_eq!(
        c.reserve(req(&s, "e", 1, "k")).await.unwrap(),
        ReserveOutcome::Rejected(Reject::SoldOut)
    );
    let expired = c.expire_due(T0 + 1_000_000, 10).await.unwrap();
    assert_eq!(expired.len(), 2);
    assert!(!c.is_sold_out_locally(&s.sale_id));
    hold(&c, req_at(&s, "e", 1, "k", T0 + 1_000_001)).await;
}

async fn sold_out_flag_lapses_and_never_masks_the_end(inner: Arc<dyn StockEngine>) {
    let counting = Counting::new(inner);
    let c = Coalescer::new(
        counting.clone(),
        CoalescerConfig {
            sold_out_recheck: Duration::from_millis(50),
            ..CoalescerConfig::default()
        },
    );
    let s = new_sale(&*counting, 1, 1).await;
    let a = hold(&c, req(&s, "a", 1, "k")).await;
    assert_eq!(
        c.reserve(req(&s, "b", 1, "k")).await.unwrap(),
        ReserveOutcome::Rejected(Reject::SoldOut)
    );
    assert!(c.is_sold_out_locally(&s.sale_id));
    // Past the sale's end the engine answers, so the answer is sale_ended.
    let after_end = req_at(&s, "b", 1, "k2", s.ends_at_ms);
    assert_eq!(
        c.reserve(after_end).await.unwrap(),
        ReserveOutcome::Rejected(Reject::SaleEnded)
    );
    // Stock comes back behind the coalescer's back; the flag lapses by itself.
    counting.release(&a.hold_id, "a", T0 + 5).await.unwrap();
    tokio::time::sleep(Duration::from_millis(80)).await;
    assert!(!c.is_sold_out_locally(&s.sale_id));
    hold(&c, req(&s, "b", 1, "k3")).await;
    // Ending the sale clears the flag so reservations answer sale_ended.
    assert_eq!(
        c.reserve(req(&s, "c", 1, "k")).await.unwrap(),
        ReserveOutcome::Rejected(Reject::SoldOut)
    );
    c.end_sale(&s.sale_id, T0 + 10).await.unwrap();
    assert_eq!(
        c.reserve(req(&s, "c", 1, "k2")).await.unwrap(),
        ReserveOutcome::Rejected(Reject::SaleEnded)
    );
}

async fn replays_while_sold_out_get_their_first_outcome(inner: Arc<dyn StockEngine>) {
    let counting = Counting::new(inner);
    let c = Coalescer::new(
        counting.clone(),
        CoalescerConfig {
            sold_out_recheck: Duration::from_secs(60),
            ..CoalescerConfig::default()
        },
    );
    let s = new_sale(&c, 2, 1).await;
    let a = hold(&c, req(&s, "a", 1, "k")).await;
    let over = c.reserve(req(&s, "a", 1, "k2")).await.unwrap();
    assert_eq!(over, ReserveOutcome::Rejected(Reject::LimitExceeded));
    hold(&c, req(&s, "b", 1, "k")).await;
    assert_eq!(
        c.reserve(req(&s, "x", 1, "k")).await.unwrap(),
        ReserveOutcome::Rejected(Reject::SoldOut)
    );
    assert!(c.is_sold_out_locally(&s.sale_id));
    let calls = counting.engine_calls();
    // Keys this node answered go to the engine, which replays their first outcome...
    assert_eq!(hold(&c, req_at(&s, "a", 1, "k", T0 + 9)).await, a);
    assert_eq!(
        c.reserve(req(&s, "a", 1, "k2")).await.unwrap(),
        over,
        "a recorded rejection replays"
    );
    assert_eq!(
        c.reserve(req(&s, "a", 2, "k")).await.unwrap(),
        ReserveOutcome::Rejected(Reject::IdempotencyKeyReused)
    );
    assert_eq!(counting.engine_calls(), calls + 3);
    // ...while new keys are still refused on the spot.
    assert_eq!(
        c.reserve(req(&s, "y", 1, "k")).await.unwrap(),
        ReserveOutcome::Rejected(Reject::SoldOut)
    );
    assert_eq!(counting.engine_calls(), calls + 3);
    assert_eq!(c.stats().local_sold_out, 1);
}
