//! The store's conformance suite: the same behaviour checked on whichever backend the
//! environment selects (`HARVEST_TEST_BACKEND`: SQLite by default, PostgreSQL in the
//! servers pass of the test command), so both backends pass the same tests.

use std::time::Duration;

use harvest_proto::RoomStatus;
use harvest_store::{
    Backend, HoldRow, NewProduct, NewRoom, NewSale, PageRequest, ProductFilter, RoomFilter,
    SalePhase, Store, StoreError, StoreOptions,
};
use harvest_testkit::{TestBackend, TestDatabase};

async fn store() -> (Store, TestDatabase) {
    let db = TestDatabase::create().await;
    let store = db.store().await;
    let expected = match TestBackend::from_env() {
        TestBackend::Embedded => Backend::Sqlite,
        TestBackend::Servers => Backend::Postgres,
    };
    assert_eq!(store.backend(), expected);
    (store, db)
}

fn product(owner: &str, sku: &str, title: &str) -> NewProduct {
    NewProduct {
        owner_id: owner.into(),
        sku: sku.into(),
        title: title.into(),
        origin: Some("Mayang, Hunan".into()),
        unit: None,
        list_price: 3990,
        currency: "CNY".into(),
        image_url: None,
    }
}

fn room(streamer: &str) -> NewRoom {
    NewRoom {
        streamer_id: streamer.into(),
        title: "live".into(),
        description: None,
        scheduled_start: None,
        playback_url: None,
    }
}

fn page(limit: u32) -> PageRequest {
    PageRequest { after: None, limit }
}

#[tokio::test]
async fn products_round_trip_exactly() {
    let (store, _db) = store().await;
    let created = store
        .create_product(product("o", "orange", "冰糖橙 Rock-sugar orange"))
        .await
        .unwrap();
    let read = store.product(&created.id).await.unwrap();
    assert_eq!(read, created);
    assert_eq!(read.origin.as_deref(), Some("Mayang, Hunan"));
    assert!(matches!(
        store.product("missing").await,
        Err(StoreError::NotFound)
    ));
}

#[tokio::test]
async fn skus_are_unique_per_owner() {
    let (store, _db) = store().await;
    store
        .create_product(product("a", "sku", "x"))
        .await
        .unwrap();
    store
        .create_product(product("b", "sku", "x"))
        .await
        .unwrap();
    assert!(matches!(
        store.create_product(product("a", "sku", "y")).await,
        Err(StoreError::DuplicateSku)
    ));
}

#[tokio::test]
async fn product_search_is_case_insensitive_and_literal() {
    let (store, _db) = store().await;
    store
        .create_product(product("a", "KIWI-1", "Shibadong Kiwi"))
        .await
        .unwrap();
    store
        .create_product(product("a", "peach", "Yanling 黄桃 peach"))
        .await
        .unwrap();
    store
        .create_product(product("b", "p_50%", "Hanshou greens"))
        .await
        .unwrap();
    let search = |q: &str| ProductFilter {
        owner_id: None,
        query: Some(q.into()),
    };
    let count = |f: ProductFilter| {
        let store = store.clone();
        async move {
            store
                .list_products(&f, &page(50))
                .await
                .unwrap()
                .items
                .len()
        }
    };
    assert_eq!(count(search("kiwi")).await, 1);
    assert_eq!(count(search("KIWI")).await, 1);
    assert_eq!(count(search("黄桃")).await, 1);
    assert_eq!(count(search("50%")).await, 1);
    assert_eq!(count(search("p_")).await, 1, "underscore is literal");
    assert_eq!(count(search("%")).await, 1, "percent is literal");
    assert_eq!(
        count(ProductFilter {
            owner_id: Some("a".into()),
            query: None
        })
        .await,
        2
    );
}

#[tokio::test]
async fn pages_walk_every_item_once_in_creation_order() {
    let (store, _db) = store().await;
    let mut ids = Vec::new();
    for i in 0..11 {
        ids.push(
            store
                .create_product(product("o", &format!("s{i}"), "t"))
                .await
                .unwrap()
                .id,
        );
    }
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let p = store
            .list_products(
                &ProductFilter::default(),
                &PageRequest {
                    after: after.clone(),
                    limit: 4,
                },
            )
            .await
            .unwrap();
        seen.extend(p.items.into_iter().map(|p| p.id));
        match p.next_cursor {
            Some(c) => after = Some(c),
            None => break,
        }
    }
    assert_eq!(seen, ids);
}

#[tokio::test]
async fn room_transitions_are_atomic_and_checked() {
    let (store, _db) = store().await;
    let r = store.create_room(room("s")).await.unwrap();
    assert_eq!(r.status, RoomStatus::Scheduled);
    assert!(matches!(
        store.start_room("missing").await,
        Err(StoreError::NotFound)
    ));
    // Many concurrent starts: exactly one wins.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let store = store.clone();
        let id = r.id.clone();
        tasks.push(tokio::spawn(async move { store.start_room(&id).await }));
    }
    let mut won = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(room) => {
                won += 1;
                assert_eq!(room.status, RoomStatus::Live);
                assert!(room.started_at.is_some());
            }
            Err(StoreError::InvalidState(RoomStatus::Live)) => {}
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(won, 1);
    let ended = store.end_room(&r.id).await.unwrap();
    assert_eq!(ended.status, RoomStatus::Ended);
    assert!(ended.ended_at.unwrap() >= ended.started_at.unwrap());
    assert!(matches!(
        store.end_room(&r.id).await,
        Err(StoreError::InvalidState(RoomStatus::Ended))
    ));
    assert!(matches!(
        store.start_room(&r.id).await,
        Err(StoreError::InvalidState(RoomStatus::Ended))
    ));
    let live = store
        .list_rooms(
            &RoomFilter {
                status: Some(RoomStatus::Ended),
                streamer_id: Some("s".into()),
            },
            &page(10),
        )
        .await
        .unwrap();
    assert_eq!(live.items.len(), 1);
}

#[tokio::test]
async fn bag_and_pin_stay_consistent() {
    let (store, _db) = store().await;
    let r = store.create_room(room("s")).await.unwrap();
    let p: Vec<String> = {
        let mut v = Vec::new();
        for i in 0..3 {
            v.push(
                store
                    .create_product(product("s", &format!("p{i}"), "t"))
                    .await
                    .unwrap()
                    .id,
            );
        }
        v
    };
    assert!(matches!(
        store.set_pinned_product(&r.id, Some(&p[0])).await,
        Err(StoreError::NotInRoom)
    ));
    // Concurrent adds of the same product add it once.
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let (store, rid, pid) = (store.clone(), r.id.clone(), p[1].clone());
        tasks.push(tokio::spawn(async move {
            store.add_room_product(&rid, &pid).await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    store.add_room_product(&r.id, &p[0]).await.unwrap();
    assert_eq!(
        store.room_products(&r.id).await.unwrap(),
        vec![p[1].clone(), p[0].clone()]
    );
    // The bag's products in one read, in the same order, whole.
    let bag = store.room_bag(&r.id).await.unwrap();
    assert_eq!(
        bag.iter().map(|b| b.id.clone()).collect::<Vec<_>>(),
        vec![p[1].clone(), p[0].clone()]
    );
    assert_eq!(bag[1], store.product(&p[0]).await.unwrap());
    assert!(store.room_bag("missing").await.unwrap().is_empty());
    assert_eq!(
        store.set_pinned_product(&r.id, Some(&p[0])).await.unwrap(),
        Some(p[0].clone())
    );
    assert_eq!(
        store.pinned_product(&r.id).await.unwrap(),
        Some(p[0].clone())
    );
    // Removing another product keeps the pin; removing the pinned one clears it.
    store.remove_room_product(&r.id, &p[1]).await.unwrap();
    assert_eq!(
        store.pinned_product(&r.id).await.unwrap(),
        Some(p[0].clone())
    );
    assert_eq!(
        store.remove_room_product(&r.id, &p[0]).await.unwrap(),
        Vec::<String>::new()
    );
    assert_eq!(store.pinned_product(&r.id).await.unwrap(), None);
    assert!(matches!(
        store.remove_room_product(&r.id, &p[0]).await,
        Err(StoreError::NotInRoom)
    ));
    assert!(matches!(
        store.set_pinned_product("missing", None).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.pinned_product("missing").await,
        Err(StoreError::NotFound)
    ));
}

#[tokio::test]
async fn migrations_are_idempotent() {
    let (store, _db) = store().await;
    store.migrate().await.unwrap();
    store.migrate().await.unwrap();
    store.ping().await.unwrap();
}

#[tokio::test]
async fn an_unreachable_database_is_unavailable_not_a_hang() {
    // A port nothing listens on: connecting fails fast and says "unavailable".
    let port = harvest_testkit::free_port();
    let started = std::time::Instant::now();
    let result = Store::connect(
        &format!("postgres://postgres@127.0.0.1:{port}/none"),
        StoreOptions {
            max_connections: 2,
            timeout: Duration::from_millis(500),
        },
    )
    .await;
    let err = result.expect_err("nothing listens there");
    assert!(err.is_unavailable(), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn a_closed_store_reports_unavailable() {
    let (store, _db) = store().await;
    store.close().await;
    let err = store.ping().await.expect_err("closed");
    assert!(err.is_unavailable(), "{err}");
}

fn event(room: &str, epoch: &str, seq: i64) -> harvest_store::RoomEventRecord {
    harvest_store::RoomEventRecord {
        room_id: room.into(),
        epoch: epoch.into(),
        seq,
        event_type: "room.status".into(),
        ts: 1_000 + seq,
        body: format!(
            r#"{{"type":"room.status","seq":{seq},"ts":{},"data":{{"status":"live"}}}}"#,
            1_000 + seq
        ),
    }
}

#[tokio::test]
async fn the_room_event_log_appends_in_order_and_idempotently() {
    let (store, _db) = store().await;
    assert_eq!(store.room_log("r1").await.unwrap(), None);
    let batch: Vec<_> = (1..=5)
        .map(|s| event("r1", "e1", s))
        .chain([event("r2", "x", 1)])
        .collect();
    store.append_room_events(&batch).await.unwrap();
    // A retried batch changes nothing.
    store.append_room_events(&batch[2..]).await.unwrap();
    assert_eq!(store.room_log("r1").await.unwrap(), Some(("e1".into(), 5)));
    assert_eq!(store.room_log("r2").await.unwrap(), Some(("x".into(), 1)));
    let after2 = store.room_events("r1", "e1", 2, 100).await.unwrap();
    assert_eq!(
        after2.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![3, 4, 5]
    );
    assert_eq!(after2[0], batch[2]);
    assert_eq!(store.room_events("r1", "e1", 0, 2).await.unwrap().len(), 2);
    assert!(
        store
            .room_events("r1", "other", 0, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let recent = store.recent_room_events("r1", "e1", 2).await.unwrap();
    assert_eq!(recent.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![4, 5]);
    // A late batch never moves the position back.
    store
        .append_room_events(&[event("r1", "e1", 7)])
        .await
        .unwrap();
    store
        .append_room_events(&[event("r1", "e1", 6)])
        .await
        .unwrap();
    assert_eq!(store.room_log("r1").await.unwrap(), Some(("e1".into(), 7)));
    // A new epoch resets it.
    store
        .append_room_events(&[event("r1", "e2", 1)])
        .await
        .unwrap();
    assert_eq!(store.room_log("r1").await.unwrap(), Some(("e2".into(), 1)));
    assert_eq!(store.prune_room_events(1_003).await.unwrap(), 4);
    assert_eq!(
        store.room_events("r1", "e1", 0, 100).await.unwrap().len(),
        5
    );
}

#[tokio::test]
async fn bans_and_mutes_are_kept() {
    let (store, _db) = store().await;
    assert!(!store.is_banned("r", "u").await.unwrap());
    store.ban_user("r", "u").await.unwrap();
    store.ban_user("r", "u").await.unwrap();
    assert!(store.is_banned("r", "u").await.unwrap());
    assert!(!store.is_banned("other", "u").await.unwrap());
    store.mute_user("r", "a", 5_000).await.unwrap();
    store.mute_user("r", "b", 1_000).await.unwrap();
    store.mute_user("r", "a", 9_000).await.unwrap();
    let mut mutes = store.room_mutes("r", 2_000).await.unwrap();
    mutes.sort();
    assert_eq!(mutes, vec![("a".to_owned(), 9_000)]);
}

fn hold_row(id: &str, sale: &str, user: &str, position: i64, status: &str) -> HoldRow {
    HoldRow {
        id: id.into(),
        sale_id: sale.into(),
        user_id: user.into(),
        quantity: 2,
        unit_price: 990,
        amount: 1980,
        currency: "CNY".into(),
        position,
        status: status.into(),
        created_at: 1_000,
        expires_at: 301_000,
        ended_at: None,
        order_id: None,
        user_name: Some("Zhang San".into()),
        idempotency_key: Some("k-1".into()),
        request_fingerprint: Some("{}".into()),
    }
}

#[tokio::test]
async fn sales_phases_advance_once_and_holds_keep_their_final_status() {
    let (store, _db) = store().await;
    let p = store
        .create_product(product("s1", "kiwi", "Kiwi"))
        .await
        .unwrap();
    let r = store.create_room(room("s1")).await.unwrap();
    let sale = store
        .create_sale(NewSale {
            room_id: r.id.clone(),
            product_id: p.id.clone(),
            price: 990,
            currency: "CNY".into(),
            stock: 10,
            per_user_limit: 2,
            starts_at: 5_000,
            ends_at: 305_000,
            hold_ttl_s: 300,
        })
        .await
        .unwrap();
    assert_eq!(store.sale(&sale.id).await.unwrap(), sale);
    assert_eq!(sale.phase, SalePhase::Scheduled);
    assert_eq!(store.open_sales().await.unwrap(), vec![sale.clone()]);

    // Exactly one of two concurrent movers wins.
    let (a, b) = tokio::join!(
        store.advance_sale_phase(&sale.id, SalePhase::Scheduled, SalePhase::Live),
        store.advance_sale_phase(&sale.id, SalePhase::Scheduled, SalePhase::Live)
    );
    assert!(a.unwrap() ^ b.unwrap());

    let ended = store.end_sale_early(&sale.id, 9_000).await.unwrap();
    assert_eq!(ended.ended_early_at, Some(9_000));
    assert_eq!(ended.closes_at(), 9_000);
    // The first early end stands.
    let again = store.end_sale_early(&sale.id, 12_000).await.unwrap();
    assert_eq!(again.ended_early_at, Some(9_000));

    let h1 = hold_row("h1", &sale.id, "u1", 1, "held");
    let h2 = hold_row("h2", &sale.id, "u2", 2, "held");
    store.record_holds(&[h1.clone(), h2.clone()]).await.unwrap();
    let mut expired = h1.clone();
    expired.status = "expired".into();
    expired.ended_at = Some(301_000);
    store
        .record_holds(std::slice::from_ref(&expired))
        .await
        .unwrap();
    // A late, stale write of the first state changes nothing.
    store.record_holds(std::slice::from_ref(&h1)).await.unwrap();
    assert_eq!(store.hold("h1").await.unwrap(), expired);
    assert_eq!(store.sale_holds(&sale.id).await.unwrap(), vec![expired, h2]);
    assert!(matches!(
        store.hold("nope").await,
        Err(StoreError::NotFound)
    ));

    assert!(
        store
            .ended_sales_with_open_holds()
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .advance_sale_phase(&sale.id, SalePhase::Live, SalePhase::Ended)
            .await
            .unwrap()
    );
    assert_eq!(
        store.ended_sales_with_open_holds().await.unwrap(),
        vec![sale.id.clone()]
    );
    assert!(store.open_sales().await.unwrap().is_empty());
    assert_eq!(store.room_sales(&r.id, false).await.unwrap().len(), 1);
    assert!(store.room_sales(&r.id, true).await.unwrap().is_empty());
}
