//! The conformance suite: every engine (memory, Redis on one server and on a Redis
//! Cluster, and each behind a Coalescer) must pass every test here.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use harvest_stock::{
    Hold, HoldStatus, Reject, ReserveOutcome, SaleRecord, SaleSpec, SaleStatus, StockError,
};
use rand::Rng;

use crate::harness::*;

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(crate::harness::Harness::memory()).await;
                }
            )*
        }
        mod coalesced_memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(crate::harness::Harness::memory().coalesced()).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(h) = crate::harness::Harness::redis() {
                        super::$name(h).await;
                    }
                }
            )*
        }
        mod coalesced_redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(h) = crate::harness::Harness::redis() {
                        super::$name(h.coalesced()).await;
                    }
                }
            )*
        }
        mod redis_cluster {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(h) = crate::harness::Harness::redis_cluster().await {
                        super::$name(h).await;
                    }
                }
            )*
        }
        mod coalesced_redis_cluster {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(h) = crate::harness::Harness::redis_cluster().await {
                        super::$name(h.coalesced()).await;
                    }
                }
            )*
        }
    };
}

conformance!(
    create_sale_is_idempotent_and_rejects_conflicts,
    reservations_get_consecutive_positions,
    rejections_follow_the_api_order,
    unknown_sale_is_reported,
    replay_returns_the_first_outcome,
    same_key_concurrently_makes_one_hold,
    replay_after_release_or_payment_reserves_nothing,
    release_returns_units_exactly_once,
    confirm_paid_is_idempotent_and_late_payments_are_refused,
    expire_due_expires_each_hold_once,
    concurrent_sweepers_expire_each_hold_once,
    ended_sale_keeps_holds_payable,
    allocations_list_holds_in_position_order,
    batch_keeps_order_and_per_request_outcomes,
    proposed_hold_id_must_be_fresh,
    no_oversell_under_concurrent_storm,
    restore_rebuilds_exact_counts,
    allocations_page_across_a_sparse_restore,
    conditional_restore_leaves_a_present_sale_alone,
    a_lost_sale_does_not_stop_expiry_elsewhere,
);

async fn create_sale_is_idempotent_and_rejects_conflicts(h: Harness) {
    let e = &*h.engine;
    let s = spec(10, 2);
    let c = e.create_sale(&s).await.unwrap();
    assert_eq!((c.stock, c.remaining, c.held, c.sold), (10, 10, 0, 0));
    hold(e, req(&s, "u1", 1, "k1")).await;
    // Creating the same spec again changes nothing.
    let again = e.create_sale(&s).await.unwrap();
    assert_eq!((again.remaining, again.held), (9, 1));
    let mut other = s.clone();
    other.stock = 11;
    assert!(matches!(
        e.create_sale(&other).await,
        Err(StockError::SaleConflict(_))
    ));
    let mut bad = spec(0, 1);
    assert!(matches!(
        e.create_sale(&bad).await,
        Err(StockError::Invalid(_))
    ));
    bad = spec(1, 1);
    bad.ends_at_ms = bad.starts_at_ms;
    assert!(matches!(
        e.create_sale(&bad).await,
        Err(StockError::Invalid(_))
    ));
    let info = e.sale(&s.sale_id).await.unwrap();
    assert_eq!(info.spec, s);
    assert!(!info.ended);
    assert_eq!(info.status(T0 - 1), SaleStatus::Scheduled);
    assert_eq!(info.status(T0 + 5), SaleStatus::Live);
    assert_eq!(info.status(s.ends_at_ms), SaleStatus::Ended);
}

async fn reservations_get_consecutive_positions(h: Harness) {
    let e = &*h.engine;
    let s = new_sale(e, 10, 5).await;
    let a = hold(e, req_at(&s, "alice", 2, "k", T0 + 10)).await;
    let b = hold(e, req_at(&s, "bob", 3, "k", T0 + 20)).await;
    let c = hold(e, req_at(&s, "alice", 1, "k2", T0 + 30)).await;
    assert_eq!((a.position, b.position, c.position), (1, 2, 3));
    assert_eq!(a.status, HoldStatus::Held);
    assert_eq!(a.sale_id, s.sale_id);
    assert_eq!(a.user_id, "alice");
    assert_eq!(a.quantity, 2);
    assert_eq!(a.created_at_ms, T0 + 10);
    assert_eq!(a.expires_at_ms, T0 + 10 + 60_000);
    let fetched = e.hold(&b.hold_id).await.unwrap();
    assert_eq!(fetched, b);
    let c = counts(e, &s).await;
    assert_eq!((c.remaining, c.held, c.sold), (4, 6, 0));
}

async fn rejections_follow_the_api_order(h: Harness) {
    let e = &*h.engine;
    let rej = |o: ReserveOutcome| o.rejection().expect("a rejection");

    // Sold out and over the limit, but the window checks come first.
    let s = new_sale(e, 2, 2).await;
    hold(e, req(&s, "a", 2, "k")).await;
    let early = req_at(&s, "a", 1, "early", T0 - 1);
    assert_eq!(rej(e.reserve(early).await.unwrap()), Reject::NotStarted);
    let late = req_at(&s, "a", 1, "late", s.ends_at_ms);
    assert_eq!(rej(e.reserve(late).await.unwrap()), Reject::SaleEnded);
    // Sold out comes before the limit.
    assert_eq!(
        rej(e.reserve(req(&s, "a", 1, "k2")).await.unwrap()),
        Reject::SoldOut
    );

    // The limit comes before insufficient stock.
    let s = new_sale(e, 3, 2).await;
    hold(e, req(&s, "a", 1, "k")).await;
    assert_eq!(
        rej(e.reserve(req(&s, "b", 3, "k")).await.unwrap()),
        Reject::LimitExceeded
    );
    // Held plus bought counts against the limit.
    let paid = hold(e, req(&s, "c", 1, "k")).await;
    e.confirm_paid(&paid.hold_id, T0 + 2).await.unwrap();
    assert_eq!(
        rej(e.reserve(req(&s, "c", 2, "k2")).await.unwrap()),
        Reject::LimitExceeded
    );
    let s = new_sale(e, 3, 3).await;
    hold(e, req(&s, "a", 2, "k")).await;
    assert_eq!(
        rej(e.reserve(req(&s, "b", 2, "k")).await.unwrap()),
        Reject::InsufficientStock
    );
    // What remains can still be taken.
    hold(e, req(&s, "b", 1, "k2")).await;

    // Malformed requests are errors, not outcomes.
    assert!(matches!(
        e.reserve(req(&s, "a", 0, "z")).await,
        Err(StockError::Invalid(_))
    ));
    let mut r = req(&s, "a", 1, "z");
    r.idempotency_key.clear();
    assert!(matches!(e.reserve(r).await, Err(StockError::Invalid(_))));
}

async fn unknown_sale_is_reported(h: Harness) {
    let e = &*h.engine;
    let s = spec(5, 1);
    let r = e.reserve(req(&s, "a", 1, "k")).await;
    let c = e.counts(&s.sale_id).await;
    let ended = e.end_sale(&s.sale_id, T0).await;
    if h.reports_lost_state() {
        assert!(matches!(r, Err(StockError::SaleStateLost { .. })), "{r:?}");
        assert!(matches!(c, Err(StockError::SaleStateLost { .. })), "{c:?}");
        assert!(
            matches!(ended, Err(StockError::SaleStateLost { .. })),
            "{ended:?}"
        );
    } else {
        assert_eq!(r.unwrap(), ReserveOutcome::Rejected(Reject::NotFound));
        assert!(matches!(c, Err(StockError::SaleNotFound(_))), "{c:?}");
        assert!(
            matches!(ended, Err(StockError::SaleNotFound(_))),
            "{ended:?}"
        );
    }
    assert!(matches!(
        e.hold("nope").await,
        Err(StockError::HoldNotFound(_))
    ));
    assert!(matches!(
        e.release("nope", "a", T0).await,
        Err(StockError::HoldNotFound(_))
    ));
    assert!(matches!(
        e.confirm_paid("nope", T0).await,
        Err(StockError::HoldNotFound(_))
    ));
}

async fn replay_returns_the_first_outcome(h: Harness) {
    let e = &*h.engine;
    let s = new_sale(e, 4, 2).await;
    let first = hold(e, req(&s, "a", 2, "k")).await;
    // Same key and body, a later instant and another proposed hold id: same hold.
    let again = hold(e, req_at(&s, "a", 2, "k", T0 + 500)).await;
    assert_eq!(again, first);
    assert_eq!(counts(e, &s).await.held, 2);
    // Same key, different body.
    assert_eq!(
        e.reserve(req(&s, "a", 1, "k")).await.unwrap(),
        ReserveOutcome::Rejected(Reject::IdempotencyKeyReused)
    );
    // Keys are scoped per user.
    let b = hold(e, req(&s, "b", 2, "k")).await;
    assert_ne!(b.hold_id, first.hold_id);
    // A recorded rejection is replayed even after stock returns...
    let limit = e.reserve(req(&s, "a", 1, "more")).await.unwrap();
    assert_eq!(limit, ReserveOutcome::Rejected(Reject::SoldOut));
    e.release(&first.hold_id, "a", T0 + 2).await.unwrap();
    let c = hold(e, req(&s, "c", 1, "k")).await;
    let over = e.reserve(req(&s, "c", 2, "k2")).await.unwrap();
    assert_eq!(over, ReserveOutcome::Rejected(Reject::LimitExceeded));
    e.release(&c.hold_id, "c", T0 + 3).await.unwrap();
    assert_eq!(
        e.reserve(req(&s, "c", 2, "k2")).await.unwrap(),
        ReserveOutcome::Rejected(Reject::LimitExceeded),
        "a recorded limit_exceeded is the key's final answer"
    );
    // ...but sold_out is not recorded: the same key succeeds once stock is back.
    let retried = hold(e, req(&s, "a", 1, "more")).await;
    assert_eq!(retried.quantity, 1);
    let early = req_at(&s, "d", 1, "early", T0 - 5);
    assert_eq!(
        e.reserve(early.clone()).await.unwrap(),
        ReserveOutcome::Rejected(Reject::NotStarted)
    );
    let mut later = early;
    later.now_ms = T0 + 10;
    assert_eq!(
        e.reserve(later).await.unwrap(),
        ReserveOutcome::Rejected(Reject::NotStarted),
        "not_started is recorded too"
    );
}

async fn same_key_concurrently_makes_one_hold(h: Harness) {
    let e = h.engine.clone();
    let s = new_sale(&*e, 100, 3).await;
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let e = e.clone();
            let r = req(&s, "a", 2, "same");
            tokio::spawn(async move { e.reserve(r).await })
        })
        .collect();
    let mut ids = HashSet::new();
    for t in tasks {
        match t.await.unwrap().unwrap() {
            ReserveOutcome::Held(h) => {
                ids.insert(h.hold_id);
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(ids.len(), 1, "one hold for one key");
    let c = counts(&*e, &s).await;
    assert_eq!((c.held, c.remaining), (2, 98));
    assert_eq!(all_holds(&*e, &s.sale_id).await.len(), 1);
}

async fn replay_after_release_or_payment_reserves_nothing(h: Harness) {
    let e = &*h.engine;
    let s = new_sale(e, 5, 5).await;
    let released = hold(e, req(&s, "a", 2, "k1")).await;
    let paid = hold(e, req(&s, "a", 1, "k2")).await;
    e.release(&released.hold_id, "a", T0 + 5).await.unwrap();
    e.confirm_paid(&paid.hold_id, T0 + 5).await.unwrap();
    let before = counts(e, &s).await;
    assert_eq!((before.remaining, before.held, before.sold), (4, 0, 1));
    assert_eq!(hold(e, req(&s, "a", 2, "k1")).await, released);
    assert_eq!(hold(e, req(&s, "a", 1, "k2")).await, paid);
    assert_eq!(counts(e, &s).await, before);
    assert_eq!(
        e.hold(&released.hold_id).await.unwrap().status,
        HoldStatus::Released
    );
    assert_eq!(
        e.hold(&paid.hold_id).await.unwrap().status,
        HoldStatus::Paid
    );
    assert_eq!(all_holds(e, &s.sale_id).await.len(), 2);
}

async fn release_returns_units_exactly_once(h: Harness) {
    let e = &*h.engine;
    let s = new_sale(e, 10, 5).await;
    let a = hold(e, req(&s, "a", 3, "k")).await;
    assert!(matches!(
        e.release(&a.hold_id, "b", T0 + 5).await,
        Err(StockError::HoldNotFound(_))
    ));
    let r = e.release(&a.hold_id, "a", T0 + 5).await.unwrap();
    assert_eq!(r.status, HoldStatus::Released);
    assert_eq!((r.hold_id.as_str(), r.quantity), (a.hold_id.as_str(), 3));
    let c = counts(e, &s).await;
    assert_eq!((c.remaining, c.held), (10, 0));
    assert!(matches!(
        e.release(&a.hold_id, "a", T0 + 6).await,
        Err(StockError::HoldReleased(_))
    ));
    assert_eq!(counts(e, &s).await.remaining, 10);
    // The buyer's limit is freed too.
    hold(e, req(&s, "a", 5, "k2")).await;

    let p = hold(e, req(&s, "b", 1, "k")).await;
    e.confirm_paid(&p.hold_id, T0 + 5).await.unwrap();
    assert!(matches!(
        e.release(&p.hold_id, "b", T0 + 6).await,
        Err(StockError::HoldPaid(_))
    ));

    // Its time ran out: expired, even before the sweeper gets to it; no stock moves.
    let x = hold(e, req(&s, "c", 1, "k")).await;
    let before = counts(e, &s).await;
    assert!(matches!(
        e.release(&x.hold_id, "c", x.expires_at_ms).await,
        Err(StockError::HoldExpired(_))
    ));
    assert_eq!(counts(e, &s).await, before);
    let swept = e.expire_due(x.expires_at_ms, 100).await.unwrap();
    assert!(swept.iter().any(|h| h.hold_id == x.hold_id));
    assert!(matches!(
        e.release(&x.hold_id, "c", x.expires_at_ms).await,
        Err(StockError::HoldExpired(_))
    ));
}

async fn confirm_paid_is_idempotent_and_late_payments_are_refused(h: Harness) {
    let e = &*h.engine;
    let s = new_sale(e, 10, 5).await;
    let a = hold(e, req(&s, "a", 2, "k")).await;
    let paid = e.confirm_paid(&a.hold_id, T0 + 5).await.unwrap();
    assert_eq!(paid.status, HoldStatus::Paid);
    let c = counts(e, &s).await;
    assert_eq!((c.remaining, c.held, c.sold), (8, 0, 2));
    // Paying again returns the paid hold and moves nothing.
    assert_eq!(e.confirm_paid(&a.hold_id, T0 + 6).await.unwrap(), paid);
    assert_eq!(counts(e, &s).await, c);

    let r = hold(e, req(&s, "b", 1, "k")).await;
    e.release(&r.hold_id, "b", T0 + 5).await.unwrap();
    match e.confirm_paid(&r.hold_id, T0 + 6).await {
        Err(StockError::LateHold { status, hold }) => {
            assert_eq!(status, HoldStatus::Released);
            assert_eq!(hold.hold_id, r.hold_id);
            assert_eq!(hold.user_id, "b");
        }
        other => panic!("{other:?}"),
    }

    // Payment after the hold's time ran out, before the sweep: late, no stock taken;
    // the sweeper still expires it and returns its units once.
    let x = hold(e, req(&s, "c", 3, "k")).await;
    let before = counts(e, &s).await;
    match e.confirm_paid(&x.hold_id, x.expires_at_ms + 1).await {
        Err(StockError::LateHold { status, .. }) => assert_eq!(status, HoldStatus::Expired),
        other => panic!("{other:?}"),
    }
    assert_eq!(counts(e, &s).await, before);
    let swept = e.expire_due(x.expires_at_ms + 1, 100).await.unwrap();
    assert_eq!(swept.len(), 1);
    assert_eq!(swept[0].hold_id, x.hold_id);
    assert_eq!(swept[0].status, HoldStatus::Expired);
    let after = counts(e, &s).await;
    assert_eq!(
        (after.remaining, after.held, after.sold),
        (before.remaining + 3, before.held - 3, 2)
    );
    match e.confirm_paid(&x.hold_id, x.expires_at_ms + 2).await {
        Err(StockError::LateHold { status, .. }) => assert_eq!(status, HoldStatus::Expired),
        other => panic!("{other:?}"),
    }
    assert_eq!(counts(e, &s).await, after);
}

async fn expire_due_expires_each_hold_once(h: Harness) {
    let e = &*h.engine;
    let s = new_sale(e, 100, 10).await;
    let mut holds = Vec::new();
    for i in 0..10 {
        holds.push(hold(e, req_at(&s, &format!("u{i}"), 2, "k", T0 + i * 1000)).await);
    }
    let paid = &holds[9];
    e.confirm_paid(&paid.hold_id, T0 + 9001).await.unwrap();
    // Nothing is due before the first expiry.
    assert!(
        e.expire_due(holds[0].expires_at_ms - 1, 100)
            .await
            .unwrap()
            .is_empty()
    );
    // Due holds go in expiry order, at most `max` per call.
    let now = holds[5].expires_at_ms;
    let first = e.expire_due(now, 4).await.unwrap();
    let ids: Vec<_> = first.iter().map(|h| h.hold_id.clone()).collect();
    assert_eq!(
        ids,
        holds[..4]
            .iter()
            .map(|h| h.hold_id.clone())
            .collect::<Vec<_>>()
    );
    assert!(first.iter().all(|h| h.status == HoldStatus::Expired));
    let second = e.expire_due(now, 100).await.unwrap();
    assert_eq!(second.len(), 2);
    assert!(
        e.expire_due(now, 100).await.unwrap().is_empty(),
        "each hold expires once"
    );
    let c = counts(e, &s).await;
    assert_eq!((c.remaining, c.held, c.sold), (100 - 2 - 6, 6, 2));
    // Expired holds are final; the paid one never expires.
    let all = e.expire_due(i64::MAX / 2, 100).await.unwrap();
    assert_eq!(all.len(), 3);
    assert!(all.iter().all(|h| h.hold_id != paid.hold_id));
    assert_eq!(
        e.hold(&holds[0].hold_id).await.unwrap().status,
        HoldStatus::Expired
    );
    assert_eq!(
        e.hold(&paid.hold_id).await.unwrap().status,
        HoldStatus::Paid
    );
    let c = counts(e, &s).await;
    assert_eq!((c.remaining, c.held, c.sold), (98, 0, 2));
    // The buyer may reserve again.
    hold(e, req_at(&s, "u0", 10, "k2", T0 + 100_000)).await;
}

async fn concurrent_sweepers_expire_each_hold_once(h: Harness) {
    let e = h.engine.clone();
    let s = new_sale(&*e, 1000, 5).await;
    let reqs: Vec<_> = (0..200)
        .map(|i| req_at(&s, &format!("u{i}"), 1 + (i % 3) as u32, "k", T0 + i))
        .collect();
    for r in e.reserve_batch(reqs).await {
        assert!(matches!(r, Ok(ReserveOutcome::Held(_))), "{r:?}");
    }
    let now = T0 + 200 + 60_000;
    let sweepers: Vec<_> = (0..4)
        .map(|_| {
            let e = e.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                loop {
                    let batch = e.expire_due(now, 7).await.unwrap();
                    if batch.is_empty() {
                        return got;
                    }
                    got.extend(batch.into_iter().map(|h| h.hold_id));
                }
            })
        })
        .collect();
    let mut seen = HashSet::new();
    let mut total = 0;
    for s in sweepers {
        for id in s.await.unwrap() {
            total += 1;
            assert!(seen.insert(id.clone()), "hold {id} expired twice");
        }
    }
    assert_eq!(total, 200);
    let c = counts(&*e, &s).await;
    assert_eq!((c.remaining, c.held), (1000, 0));
}

async fn ended_sale_keeps_holds_payable(h: Harness) {
    let e = &*h.engine;
    let s = new_sale(e, 10, 5).await;
    let a = hold(e, req(&s, "a", 2, "k")).await;
    let b = hold(e, req(&s, "b", 2, "k")).await;
    let c = e.end_sale(&s.sale_id, T0 + 10).await.unwrap();
    assert_eq!(c.held, 4);
    // Idempotent.
    e.end_sale(&s.sale_id, T0 + 11).await.unwrap();
    assert_eq!(
        e.reserve(req_at(&s, "c", 1, "k", T0 + 12)).await.unwrap(),
        ReserveOutcome::Rejected(Reject::SaleEnded)
    );
    let info = e.sale(&s.sale_id).await.unwrap();
    assert!(info.ended);
    assert_eq!(info.status(T0 + 12), SaleStatus::Ended);
    assert_eq!(
        e.confirm_paid(&a.hold_id, T0 + 20).await.unwrap().status,
        HoldStatus::Paid
    );
    assert_eq!(
        e.release(&b.hold_id, "b", T0 + 20).await.unwrap().status,
        HoldStatus::Released
    );
    let c = counts(e, &s).await;
    assert_eq!((c.remaining, c.held, c.sold), (8, 0, 2));
}

async fn allocations_list_holds_in_position_order(h: Harness) {
    let e = &*h.engine;
    let s = new_sale(e, 50, 5).await;
    let mut made = Vec::new();
    for i in 0..10 {
        made.push(hold(e, req(&s, &format!("u{i}"), 1, "k")).await);
    }
    e.release(&made[2].hold_id, "u2", T0 + 5).await.unwrap();
    e.confirm_paid(&made[4].hold_id, T0 + 5).await.unwrap();
    let all = e.allocations(&s.sale_id, 0, 100).await.unwrap();
    assert_eq!(all.len(), 10);
    for (i, h) in all.iter().enumerate() {
        assert_eq!(h.position, i as u64 + 1);
        assert_eq!(h.hold_id, made[i].hold_id);
        assert_eq!(h.user_id, format!("u{i}"));
    }
    assert_eq!(all[2].status, HoldStatus::Released);
    assert_eq!(all[4].status, HoldStatus::Paid);
    assert_eq!(all[5].status, HoldStatus::Held);
    let page = e.allocations(&s.sale_id, 4, 3).await.unwrap();
    assert_eq!(
        page.iter().map(|h| h.position).collect::<Vec<_>>(),
        vec![5, 6, 7]
    );
    assert!(e.allocations(&s.sale_id, 10, 5).await.unwrap().is_empty());
}

async fn batch_keeps_order_and_per_request_outcomes(h: Harness) {
    let e = &*h.engine;
    let s = new_sale(e, 5, 2).await;
    let mut bad = req(&s, "x", 1, "k");
    bad.quantity = 0;
    let batch = vec![
        req(&s, "a", 2, "k"),
        req(&s, "b", 1, "k"),
        bad,
        req(&s, "a", 1, "k2"), // a is at the limit
        req(&s, "a", 2, "k"),  // replay of the first request
        req(&s, "c", 2, "k"),
        req(&s, "d", 1, "k"), // nothing left
        req(&s, "a", 1, "k"), // same key, other body
    ];
    let out = e.reserve_batch(batch).await;
    assert_eq!(out.len(), 8);
    let held = |i: usize| match &out[i] {
        Ok(ReserveOutcome::Held(h)) => h.clone(),
        other => panic!("request {i}: {other:?}"),
    };
    let rej = |i: usize| match &out[i] {
        Ok(ReserveOutcome::Rejected(r)) => *r,
        other => panic!("request {i}: {other:?}"),
    };
    assert_eq!((held(0).position, held(0).user_id.as_str()), (1, "a"));
    assert_eq!((held(1).position, held(1).user_id.as_str()), (2, "b"));
    assert!(matches!(out[2], Err(StockError::Invalid(_))));
    assert_eq!(rej(3), Reject::LimitExceeded);
    assert_eq!(held(4), held(0));
    assert_eq!((held(5).position, held(5).user_id.as_str()), (3, "c"));
    assert_eq!(rej(6), Reject::SoldOut);
    assert_eq!(rej(7), Reject::IdempotencyKeyReused);
    let c = counts(e, &s).await;
    assert_eq!((c.remaining, c.held), (0, 5));
    assert!(e.reserve_batch(Vec::new()).await.is_empty());
}

async fn proposed_hold_id_must_be_fresh(h: Harness) {
    let e = &*h.engine;
    let s = new_sale(e, 5, 5).await;
    let a = hold(e, req(&s, "a", 1, "k")).await;
    let mut r = req(&s, "b", 1, "k");
    r.hold_id = a.hold_id.clone();
    assert!(matches!(
        e.reserve(r).await,
        Err(StockError::HoldIdTaken(_))
    ));
    let c = counts(e, &s).await;
    assert_eq!((c.remaining, c.held), (4, 1));
    assert_eq!(e.hold(&a.hold_id).await.unwrap().user_id, "a");
}

/// R1: thousands of concurrent reservations with random quantities and retries, mixed
/// with releases, payments and sweeps: never oversold, limits hold, invariants hold at
/// sampled instants and at the end.
async fn no_oversell_under_concurrent_storm(h: Harness) {
    let e = h.engine.clone();
    let s = new_sale(&*e, 300, 3).await;
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (e, s, stop) = (e.clone(), s.clone(), stop.clone());
        tokio::spawn(async move {
            let mut samples = 0;
            while !stop.load(Ordering::Relaxed) {
                let c = e.counts(&s.sale_id).await.unwrap();
                assert!(c.is_consistent(), "inconsistent counts mid-storm: {c:?}");
                samples += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            samples
        })
    };
    let workers: Vec<_> = (0..32)
        .map(|w| {
            let (e, s) = (e.clone(), s.clone());
            tokio::spawn(async move {
                let mut holds = Vec::new();
                for i in 0..100 {
                    let (user, qty, act) = {
                        let mut rng = rand::rng();
                        (
                            format!("u{}", rng.random_range(0..400)),
                            rng.random_range(1..=3u32),
                            rng.random_range(0..10),
                        )
                    };
                    let key = format!("w{w}-{i}");
                    let r = req_at(&s, &user, qty, &key, T0 + 1 + i);
                    let mut outcome = e.reserve(r.clone()).await.unwrap();
                    // A client retry with the same key and body answers the same, except
                    // after sold_out, which is not recorded: then it is a fresh attempt.
                    if i % 3 == 0 {
                        let mut retry = r.clone();
                        retry.hold_id = unique("retry");
                        let again = e.reserve(retry).await.unwrap();
                        if outcome == ReserveOutcome::Rejected(Reject::SoldOut) {
                            outcome = again;
                        } else {
                            assert_eq!(outcome, again);
                        }
                    }
                    if let ReserveOutcome::Held(h) = outcome {
                        match act {
                            0..=2 => {
                                e.release(&h.hold_id, &h.user_id, T0 + 200).await.unwrap();
                            }
                            3..=5 => {
                                e.confirm_paid(&h.hold_id, T0 + 200).await.unwrap();
                            }
                            _ => holds.push(h),
                        }
                    }
                    if i % 25 == 0 {
                        // Sweeps at a time when nothing is due yet.
                        assert!(e.expire_due(T0, 10).await.unwrap().is_empty());
                    }
                }
                holds
            })
        })
        .collect();
    let mut kept = Vec::new();
    for w in workers {
        kept.extend(w.await.unwrap());
    }
    stop.store(true, Ordering::Relaxed);
    assert!(sampler.await.unwrap() > 0);

    let c = counts(&*e, &s).await;
    let holds = all_holds(&*e, &s.sale_id).await;
    let mut per_user: HashMap<&str, u64> = HashMap::new();
    let (mut held, mut sold) = (0, 0);
    for (i, h) in holds.iter().enumerate() {
        assert_eq!(h.position, i as u64 + 1, "positions are 1, 2, 3, ...");
        match h.status {
            HoldStatus::Held => held += u64::from(h.quantity),
            HoldStatus::Paid => sold += u64::from(h.quantity),
            _ => continue,
        }
        *per_user.entry(&h.user_id).or_default() += u64::from(h.quantity);
    }
    assert_eq!((c.held, c.sold), (held, sold));
    assert!(held + sold <= s.stock);
    assert!(
        per_user.values().all(|&u| u <= 3),
        "a buyer passed the limit"
    );
    assert_eq!(
        kept.iter().map(|h| u64::from(h.quantity)).sum::<u64>(),
        held
    );
    // Everything still held expires once and comes back.
    let mut expired = 0;
    loop {
        let batch = e.expire_due(T0 + 10_000_000, 64).await.unwrap();
        if batch.is_empty() {
            break;
        }
        expired += batch.iter().map(|h| u64::from(h.quantity)).sum::<u64>();
    }
    assert_eq!(expired, held);
    let c = counts(&*e, &s).await;
    assert_eq!((c.held, c.sold, c.remaining), (0, sold, s.stock - sold));
}

/// After an engine loses a sale (Redis restarted empty), `restore_sale` rebuilds it
/// from the record: exact counts, limits, positions, payable and expiring holds.
async fn restore_rebuilds_exact_counts(h: Harness) {
    let e = &*h.engine;
    let s = new_sale(e, 20, 4).await;
    let a1 = hold(e, req(&s, "a", 2, "k1")).await;
    let a2 = hold(e, req(&s, "a", 2, "k2")).await;
    let b1 = hold(e, req(&s, "b", 3, "k1")).await;
    let c1 = hold(e, req(&s, "c", 1, "k1")).await;
    e.confirm_paid(&a1.hold_id, T0 + 5).await.unwrap();
    e.release(&c1.hold_id, "c", T0 + 5).await.unwrap();
    let before = counts(e, &s).await;
    assert_eq!((before.remaining, before.held, before.sold), (13, 5, 2));
    let record_holds = all_holds(e, &s.sale_id).await;

    h.lose_sale(&s.sale_id).await;
    let lost = e.reserve(req(&s, "d", 1, "k1")).await;
    if h.reports_lost_state() {
        assert!(
            matches!(lost, Err(StockError::SaleStateLost { .. })),
            "{lost:?}"
        );
        assert!(matches!(
            e.counts(&s.sale_id).await,
            Err(StockError::SaleStateLost { .. })
        ));
    } else {
        assert_eq!(lost.unwrap(), ReserveOutcome::Rejected(Reject::NotFound));
    }

    let record = SaleRecord {
        spec: s.clone(),
        ended: false,
        holds: record_holds,
        sold_by_user: HashMap::from([("a".to_owned(), 2)]),
    };
    let restored = e.restore_sale(record.clone()).await.unwrap();
    assert_eq!(restored, before);
    assert_eq!(counts(e, &s).await, before);
    // Limits count held plus bought: a has 2 bought + 2 held of 4.
    assert_eq!(
        e.reserve(req(&s, "a", 1, "k3")).await.unwrap(),
        ReserveOutcome::Rejected(Reject::LimitExceeded)
    );
    // Positions continue after the highest recorded one.
    let d = hold(e, req(&s, "d", 1, "k1")).await;
    assert_eq!(d.position, 5);
    // Restored holds are payable, releasable, and expire.
    assert_eq!(
        e.confirm_paid(&a2.hold_id, T0 + 6).await.unwrap().status,
        HoldStatus::Paid
    );
    assert_eq!(
        e.hold(&c1.hold_id).await.unwrap().status,
        HoldStatus::Released
    );
    let swept = e.expire_due(b1.expires_at_ms, 100).await.unwrap();
    let ids: HashSet<_> = swept.iter().map(|h| h.hold_id.as_str()).collect();
    assert!(ids.contains(b1.hold_id.as_str()) && ids.contains(d.hold_id.as_str()));
    let c = counts(e, &s).await;
    assert_eq!((c.remaining, c.held, c.sold), (16, 0, 4));

    // A record that oversells is refused.
    let mut bad = record;
    bad.sold_by_user.insert("z".into(), 100);
    assert!(matches!(
        e.restore_sale(bad).await,
        Err(StockError::Invalid(_))
    ));
    // A spec with the same id but never created restores too.
    let fresh = SaleSpec {
        sale_id: unique("sale"),
        ..s
    };
    let c = e
        .restore_sale(SaleRecord {
            spec: fresh.clone(),
            ended: true,
            holds: Vec::new(),
            sold_by_user: HashMap::from([("a".to_owned(), 3)]),
        })
        .await
        .unwrap();
    assert_eq!((c.remaining, c.sold), (17, 3));
    assert!(e.sale(&fresh.sale_id).await.unwrap().ended);
}

async fn allocations_page_across_a_sparse_restore(h: Harness) {
    let e = &*h.engine;
    let s = spec(20, 5);
    let made = |user: &str, position: u64, status: HoldStatus| Hold {
        hold_id: unique("hold"),
        sale_id: s.sale_id.clone(),
        user_id: user.to_owned(),
        quantity: 1,
        position,
        created_at_ms: T0 + 1,
        expires_at_ms: T0 + 60_001,
        status,
    };
    // Positions with gaps, as a record may hold them; listed out of order.
    let holds = vec![
        made("b", 7, HoldStatus::Held),
        made("a", 2, HoldStatus::Paid),
        made("c", 8, HoldStatus::Released),
    ];
    e.restore_sale(SaleRecord {
        spec: s.clone(),
        ended: false,
        holds: holds.clone(),
        sold_by_user: HashMap::from([("a".to_owned(), 1)]),
    })
    .await
    .unwrap();
    let d = hold(e, req(&s, "d", 1, "k")).await;
    let f = hold(e, req(&s, "f", 1, "k")).await;
    assert_eq!((d.position, f.position), (9, 10));
    let sale_id = s.sale_id.as_str();
    let page = |after: u64, limit: usize| async move {
        e.allocations(sale_id, after, limit)
            .await
            .unwrap()
            .into_iter()
            .map(|h| h.position)
            .collect::<Vec<_>>()
    };
    assert_eq!(page(0, 2).await, vec![2, 7]);
    assert_eq!(page(7, 2).await, vec![8, 9]);
    assert_eq!(page(3, 3).await, vec![7, 8, 9]);
    assert_eq!(page(8, 5).await, vec![9, 10]);
    assert_eq!(page(10, 5).await, Vec::<u64>::new());
    assert_eq!(page(0, 100).await, vec![2, 7, 8, 9, 10]);
    let all = all_holds(e, &s.sale_id).await;
    assert_eq!(all[0], holds[1]);
    assert_eq!(all[3], d);
}

async fn conditional_restore_leaves_a_present_sale_alone(h: Harness) {
    let e = &*h.engine;
    let s = new_sale(e, 10, 5).await;
    let a = hold(e, req(&s, "a", 2, "k1")).await;
    let stale = SaleRecord {
        spec: s.clone(),
        ended: false,
        holds: Vec::new(),
        sold_by_user: HashMap::new(),
    };
    // The sale is there: a rebuild from an older record changes nothing.
    assert_eq!(
        e.restore_sale_if_missing(stale.clone()).await.unwrap(),
        None
    );
    let now = counts(e, &s).await;
    assert_eq!((now.remaining, now.held, now.sold), (8, 2, 0));
    assert_eq!(e.hold(&a.hold_id).await.unwrap().status, HoldStatus::Held);

    // Once lost, the first conditional rebuild wins and later ones change nothing.
    let record = SaleRecord {
        holds: vec![a.clone()],
        ..stale.clone()
    };
    h.lose_sale(&s.sale_id).await;
    let rebuilt = e.restore_sale_if_missing(record).await.unwrap().unwrap();
    assert_eq!((rebuilt.remaining, rebuilt.held, rebuilt.sold), (8, 2, 0));
    assert_eq!(e.restore_sale_if_missing(stale).await.unwrap(), None);
    assert_eq!(counts(e, &s).await, rebuilt);
}

async fn a_lost_sale_does_not_stop_expiry_elsewhere(h: Harness) {
    let e = &*h.engine;
    // Several lost sales, whatever order the sweep visits them in.
    for _ in 0..3 {
        let lost = new_sale(e, 5, 5).await;
        hold(e, req(&lost, "a", 1, "k1")).await;
        h.lose_sale(&lost.sale_id).await;
    }
    let s = new_sale(e, 5, 5).await;
    let due = hold(e, req(&s, "b", 2, "k1")).await;
    let later = due.expires_at_ms + 1;
    let mut expired = Vec::new();
    for _ in 0..8 {
        expired.extend(e.expire_due(later, 10).await.unwrap());
        if !expired.is_empty() {
            break;
        }
    }
    assert_eq!(
        expired
            .iter()
            .map(|h| h.hold_id.as_str())
            .collect::<Vec<_>>(),
        vec![due.hold_id.as_str()]
    );
    let c = counts(e, &s).await;
    assert_eq!((c.remaining, c.held), (5, 0));
}
