//! Redis failure modes: lost script cache, unreachable or stalled servers, ambiguous
//! replies, a restart that loses every key, and several nodes sweeping at once.
//!
//! Tests that stall or kill Redis start their own private `redis-server` on a free
//! port, so the shared test server never blocks.

use std::collections::{HashMap, HashSet};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use harvest_stock::{
    HoldStatus, RedisConfig, RedisEngine, ReserveOutcome, SaleRecord, StockEngine, StockError,
};

use crate::harness::*;

/// A redis-server of our own, stopped (by its pid) when dropped.
struct PrivateRedis {
    child: Option<Child>,
    port: u16,
}

impl PrivateRedis {
    /// Starts one on a free port; `None` on the embedded backend.
    async fn start() -> Option<Self> {
        if !servers_backend() {
            return None;
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let mut r = Self { child: None, port };
        r.restart().await;
        Some(r)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// (Re)starts the server, empty, on the same port.
    async fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(std::env::temp_dir())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs");
        self.child = Some(child);
        let client = redis::Client::open(self.url()).expect("url");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut c) = client.get_multiplexed_async_connection().await {
                let pong: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut c).await;
                if pong.is_ok() {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "private redis-server did not start"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL, as a crash.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    async fn connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect")
    }

    /// Keeps the server busy in a Lua loop for `busy`, and returns once it is, with the
    /// instant the stall ends: the server answers nobody until then.
    async fn stall(&self, busy: Duration) -> Instant {
        let mut conn = self.connection().await;
        let mut probe = self.connection().await;
        let micros = busy.as_micros() as u64;
        let sent = Instant::now();
        tokio::spawn(async move {
            let script = "local t0 = redis.call('TIME') \
                local start = t0[1] * 1000000 + t0[2] \
                while true do \
                  local t = redis.call('TIME') \
                  if t[1] * 1000000 + t[2] - start >= tonumber(ARGV[1]) then return 1 end \
                end";
            let _: redis::RedisResult<i64> = redis::cmd("EVAL")
                .arg(script)
                .arg(0)
                .arg(micros)
                .query_async(&mut conn)
                .await;
        });
        // The server is stalled once a PING goes unanswered for a while.
        loop {
            let cmd = redis::cmd("PING");
            let ping = cmd.query_async::<String>(&mut probe);
            if tokio::time::timeout(Duration::from_millis(15), ping)
                .await
                .is_err()
            {
                return sent + busy;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

fn engine_on(r: &PrivateRedis, timeout: Duration) -> Arc<RedisEngine> {
    let mut cfg = RedisConfig::new(r.url());
    cfg.timeout = timeout;
    Arc::new(RedisEngine::new(cfg).expect("engine"))
}

#[tokio::test]
async fn unreachable_redis_answers_unavailable_quickly() {
    // Nothing listens on a port we just released.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cfg = RedisConfig::new(format!("redis://127.0.0.1:{port}"));
    cfg.timeout = Duration::from_millis(200);
    let e = RedisEngine::new(cfg).expect("lazy engine builds without a server");
    let s = spec(5, 1);
    let started = Instant::now();
    assert!(matches!(e.ping().await, Err(StockError::Unavailable(_))));
    assert!(matches!(
        e.create_sale(&s).await,
        Err(StockError::Unavailable(_))
    ));
    let r = e.reserve(req(&s, "a", 1, "k")).await;
    assert!(matches!(r, Err(StockError::Unavailable(_))), "{r:?}");
    assert!(matches!(
        e.counts(&s.sale_id).await,
        Err(StockError::Unavailable(_))
    ));
    assert!(matches!(
        e.expire_due(T0, 10).await,
        Err(StockError::Unavailable(_))
    ));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "bounded by timeouts"
    );
    assert_eq!(StockError::Unavailable(String::new()).code(), "unavailable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushed_script_cache_is_reloaded() {
    let Some(e) = redis_engine() else { return };
    let s = new_sale(&*e, 10, 5).await;
    let a = hold(&*e, req(&s, "a", 1, "k")).await;
    let mut raw = raw_redis().await;
    let () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut raw)
        .await
        .unwrap();
    // The reservation pipeline and every single-script call recover from NOSCRIPT.
    let b = hold(&*e, req(&s, "b", 1, "k")).await;
    assert_eq!(b.position, 2);
    let () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(
        e.confirm_paid(&a.hold_id, T0 + 5).await.unwrap().status,
        HoldStatus::Paid
    );
    let () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(e.expire_due(b.expires_at_ms, 10).await.unwrap().len(), 1);
    let c = counts(&*e, &s).await;
    assert_eq!((c.remaining, c.held, c.sold), (9, 0, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_sweeping_expire_each_hold_once() {
    let Some(a) = redis_engine() else { return };
    let b = redis_peer(&a);
    let s = new_sale(&*a, 500, 5).await;
    let reqs: Vec<_> = (0..300)
        .map(|i| req(&s, &format!("u{i}"), 1, "k"))
        .collect();
    for r in a.reserve_batch(reqs).await {
        assert!(matches!(r, Ok(ReserveOutcome::Held(_))));
    }
    let now = T0 + 1 + 60_000;
    let sweep = |e: Arc<RedisEngine>| {
        tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let batch = e.expire_due(now, 10).await.unwrap();
                if batch.is_empty() {
                    return got;
                }
                got.extend(batch.into_iter().map(|h| h.hold_id));
            }
        })
    };
    let (x, y) = (sweep(a.clone()), sweep(b.clone()));
    let (x, y) = (x.await.unwrap(), y.await.unwrap());
    let mut seen = HashSet::new();
    for id in x.iter().chain(&y) {
        assert!(seen.insert(id), "hold {id} expired twice");
    }
    assert_eq!(seen.len(), 300);
    let c = counts(&*b, &s).await;
    assert_eq!((c.remaining, c.held), (500, 0));
    // The drained sale left the sweep set; a new hold brings it back.
    let late = hold(&*b, req_at(&s, "late", 1, "k", now)).await;
    assert_eq!(a.expire_due(late.expires_at_ms, 10).await.unwrap().len(), 1);
}

/// The reply to a reservation is lost (the call times out after it was sent): the
/// engine reads the idempotency record back and answers the hold that was made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_reservation_is_settled_from_its_record() {
    let Some(r) = PrivateRedis::start().await else {
        return;
    };
    let timeout = Duration::from_millis(200);
    let e = engine_on(&r, timeout);
    let s = new_sale(&*e, 10, 5).await;
    // The server stalls ~300 ms from the moment the reservation is sent: longer than the
    // call's timeout, shorter than the timeouts of the call and the read-back together.
    // Load the reservation script first: on a server without it, the stalled call would
    // fail with NOSCRIPT and reserve nothing (which the engine would also report right).
    hold(&*e, req(&s, "warm-up", 1, "k")).await;
    let busy_until = r.stall(Duration::from_millis(320)).await;
    let started = Instant::now();
    let out = e.reserve(req(&s, "a", 2, "k")).await;
    let took = started.elapsed();
    tokio::time::sleep_until(busy_until.into()).await;
    let h = match out {
        Ok(ReserveOutcome::Held(h)) => h,
        other => panic!("expected the hold read back from its record, got {other:?}"),
    };
    assert!(took >= timeout, "the first reply was lost ({took:?})");
    assert_eq!(e.hold(&h.hold_id).await.unwrap(), h);
    let c = counts(&*e, &s).await;
    assert_eq!((c.remaining, c.held), (7, 3), "reserved exactly once");
}

/// When even the read-back fails the answer is `Unavailable`, never a guess; the
/// reservation may still happen, and a retry with the same key replays it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsettled_reservation_is_unavailable_and_replays_on_retry() {
    let Some(r) = PrivateRedis::start().await else {
        return;
    };
    let e = engine_on(&r, Duration::from_millis(150));
    let s = new_sale(&*e, 10, 5).await;
    hold(&*e, req(&s, "warm-up", 1, "k")).await;
    let busy_until = r.stall(Duration::from_millis(700)).await;
    let first = req(&s, "a", 2, "k");
    let out = e.reserve(first.clone()).await;
    assert!(matches!(out, Err(StockError::Unavailable(_))), "{out:?}");
    tokio::time::sleep_until((busy_until + Duration::from_millis(20)).into()).await;
    // The stalled command ran after all; the retry (another proposed id) replays it.
    let mut retry = first.clone();
    retry.hold_id = unique("retry");
    let h = hold(&*e, retry).await;
    assert_eq!(h.hold_id, first.hold_id);
    assert_eq!(e.hold(&h.hold_id).await.unwrap().status, HoldStatus::Held);
    let c = counts(&*e, &s).await;
    assert_eq!((c.remaining, c.held), (7, 3));
    assert_eq!(all_holds(&*e, &s.sale_id).await.len(), 2);
}

/// R4 at the engine level: Redis killed mid-sale answers `Unavailable` while down,
/// restarts empty, the loss is reported, and `restore_sale` rebuilds the sale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_is_detected_and_restored() {
    let Some(mut r) = PrivateRedis::start().await else {
        return;
    };
    let e = engine_on(&r, Duration::from_millis(300));
    let s = new_sale(&*e, 10, 3).await;
    let a = hold(&*e, req(&s, "a", 2, "k")).await;
    let b = hold(&*e, req(&s, "b", 3, "k")).await;
    e.confirm_paid(&b.hold_id, T0 + 5).await.unwrap();
    let record = SaleRecord {
        spec: s.clone(),
        ended: false,
        holds: all_holds(&*e, &s.sale_id).await,
        sold_by_user: HashMap::from([("b".to_owned(), 3)]),
    };

    r.kill();
    let started = Instant::now();
    let down = e.reserve(req(&s, "c", 1, "k")).await;
    assert!(matches!(down, Err(StockError::Unavailable(_))), "{down:?}");
    assert!(matches!(e.ping().await, Err(StockError::Unavailable(_))));
    assert!(matches!(
        e.counts(&s.sale_id).await,
        Err(StockError::Unavailable(_))
    ));
    assert!(started.elapsed() < Duration::from_secs(3));

    r.restart().await;
    // Reconnects by itself; the sale's marker is gone, so the loss is reported.
    let deadline = Instant::now() + Duration::from_secs(10);
    let lost = loop {
        match e.reserve(req(&s, "c", 1, "k")).await {
            Err(StockError::Unavailable(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => break other,
        }
    };
    assert!(
        matches!(lost, Err(StockError::SaleStateLost { .. })),
        "{lost:?}"
    );
    assert!(matches!(
        e.hold(&a.hold_id).await,
        Err(StockError::HoldNotFound(_))
    ));

    let c = e.restore_sale(record).await.unwrap();
    assert_eq!((c.remaining, c.held, c.sold), (5, 2, 3));
    assert_eq!(e.hold(&a.hold_id).await.unwrap().status, HoldStatus::Held);
    assert_eq!(e.hold(&b.hold_id).await.unwrap().status, HoldStatus::Paid);
    let c3 = hold(&*e, req(&s, "c", 1, "k")).await;
    assert_eq!(c3.position, 3);
    // b bought its limit before the loss, and still has.
    assert_eq!(
        e.reserve(req(&s, "b", 1, "k2")).await.unwrap().rejection(),
        Some(harvest_stock::Reject::LimitExceeded)
    );
    // The restored hold still expires.
    let swept = e.expire_due(a.expires_at_ms, 10).await.unwrap();
    assert!(swept.iter().any(|h| h.hold_id == a.hold_id));
    let c = counts(&*e, &s).await;
    assert!(c.sold <= s.stock);
    assert_eq!((c.remaining, c.held, c.sold), (7, 0, 3));
}

/// The hold index is rotated by the sweeper: an id stays findable for at least the
/// index TTL, and goes once two rotations have passed over it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_index_rotates_with_the_sweeper() {
    let ttl = Duration::from_secs(10);
    let Some(e) = redis_engine_with(|c| c.hold_index_ttl = ttl) else {
        return;
    };
    let ttl_ms = 10_000;
    let mut s = spec(10, 5);
    s.ends_at_ms = T0 + 10 * ttl_ms;
    e.create_sale(&s).await.unwrap();
    let a = hold(&*e, req_at(&s, "a", 1, "k", T0)).await;
    // The first sweep starts the clock; within a TTL nothing rotates.
    e.expire_due(T0, 10).await.unwrap();
    e.expire_due(T0 + ttl_ms - 1, 10).await.unwrap();
    assert_eq!(e.hold(&a.hold_id).await.unwrap(), a);
    // One rotation: `a` is in the previous generation, still found. (An engine asks
    // the buckets at most every eighth of the TTL.)
    let first = T0 + ttl_ms + ttl_ms / 4;
    e.expire_due(first, 10).await.unwrap();
    assert_eq!(e.hold(&a.hold_id).await.unwrap(), a);
    let b = hold(&*e, req_at(&s, "b", 1, "k", first + 1)).await;
    // A second one drops it; the newer hold moves back a generation and stays.
    e.expire_due(first + ttl_ms, 10).await.unwrap();
    assert!(matches!(
        e.hold(&a.hold_id).await,
        Err(StockError::HoldNotFound(_))
    ));
    assert_eq!(e.hold(&b.hold_id).await.unwrap().hold_id, b.hold_id);
    // The hold itself is still in its sale: the allocation log lists both.
    assert_eq!(all_holds(&*e, &s.sale_id).await.len(), 2);
}
