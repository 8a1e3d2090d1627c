//! One sample of every event type and client frame, with every optional field both set
//! and unset somewhere.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use harvest_proto::ws::*;

pub fn ts(s: &str) -> DateTime<Utc> {
    s.parse().expect("valid RFC 3339")
}

pub const TS: i64 = 1_764_420_000_123;

pub fn product(id: &str, full: bool) -> Product {
    Product {
        id: id.into(),
        owner_id: "u-coop".into(),
        sku: format!("SKU-{id}"),
        title: "十八洞猕猴桃 5斤装".into(),
        origin: full.then(|| "湖南花垣".into()),
        unit: full.then(|| "箱".into()),
        list_price: 3990,
        currency: "CNY".into(),
        image_url: None,
        created_at: ts("2025-11-01T02:03:04.567Z"),
    }
}

pub fn room() -> Room {
    Room {
        id: "r1".into(),
        title: "Huayuan kiwi harvest".into(),
        description: None,
        streamer_id: "u-coop".into(),
        status: RoomStatus::Live,
        playback_url: Some("https://cdn.example/live/r1.m3u8".into()),
        scheduled_start: Some(ts("2025-11-29T08:00:00Z")),
        started_at: Some(ts("2025-11-29T08:01:30.5Z")),
        ended_at: None,
        created_at: ts("2025-11-20T10:00:00Z"),
    }
}

pub fn sale(status: SaleStatus) -> Sale {
    Sale {
        id: "s1".into(),
        room_id: "r1".into(),
        product_id: "p1".into(),
        price: 1990,
        currency: "CNY".into(),
        stock: 100,
        per_user_limit: 2,
        starts_at: ts("2025-11-29T08:30:00Z"),
        ends_at: ts("2025-11-29T08:35:00Z"),
        hold_ttl_s: 300,
        status,
        remaining: 90,
        held: 4,
        sold: 6,
    }
}

pub fn order(refunded: bool) -> Order {
    Order {
        id: "o1".into(),
        hold_id: "h1".into(),
        sale_id: "s1".into(),
        room_id: "r1".into(),
        product_id: "p1".into(),
        buyer_id: "u-buyer".into(),
        quantity: 2,
        unit_price: 1990,
        amount: 3980,
        currency: "CNY".into(),
        status: if refunded {
            OrderStatus::Refunded
        } else {
            OrderStatus::Paid
        },
        paid_at: ts("2025-11-29T08:31:02.001Z"),
        refunded_at: refunded.then(|| ts("2025-11-30T09:00:00Z")),
    }
}

pub fn pk_match(status: MatchStatus) -> Match {
    Match {
        id: "m1".into(),
        contest_id: "c1".into(),
        participant_ids: vec!["pa".into(), "pb".into()],
        starts_at: ts("2025-11-29T09:00:00Z"),
        ends_at: ts("2025-11-29T09:05:00Z"),
        metric: Metric::PaidGmv,
        status,
        scores: vec![
            Score {
                participant_id: "pa".into(),
                value: 12_000,
            },
            Score {
                participant_id: "pb".into(),
                value: 0,
            },
        ],
        winner_ids: if status == MatchStatus::Ended {
            vec!["pa".into()]
        } else {
            vec![]
        },
    }
}

pub fn standings() -> Standings {
    let row = |rank, id: &str, qualified, gmv: i64, judges: f64| StandingsRow {
        rank,
        participant_id: id.into(),
        name: format!("team {id}"),
        qualified,
        total: 60.0 * gmv as f64 / 12_000.0 + 0.4 * judges,
        metrics: Metrics {
            paid_gmv: gmv,
            paid_orders: gmv / 2000,
            distinct_buyers: gmv / 4000,
            likes: 1234,
            match_wins: 1,
            judges,
        },
        points: BTreeMap::from([
            (Metric::PaidGmv, 60.0 * gmv as f64 / 12_000.0),
            (Metric::Judges, 0.4 * judges),
        ]),
    };
    Standings {
        contest_id: "c1".into(),
        provisional: true,
        computed_at: ts("2025-11-29T09:01:00.250Z"),
        rules_hash: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into(),
        rows: vec![
            row(1, "pa", true, 12_000, 87.5),
            row(2, "pb", false, 0, 0.0),
        ],
    }
}

pub fn chat(id: &str) -> ChatMessage {
    ChatMessage {
        id: id.into(),
        user_id: "u-7".into(),
        name: "张三".into(),
        text: "猕猴桃真甜 \"quoted\" \\ 👍".into(),
    }
}

/// One event of every type, in `EventData::TYPES` order, room events numbered from 1.
pub fn all_events() -> Vec<Event> {
    let data: Vec<EventData> = vec![
        SessionWelcome {
            session_id: "sess-1".into(),
            room_id: "r1".into(),
            user_id: None,
            epoch: "ep-1".into(),
            last_seq: 41,
            recovered: false,
        }
        .into(),
        RoomSnapshot {
            room: room(),
            viewers: 20_000,
            likes: 1_000_000,
            pinned_product: Some(product("p1", true)),
            products: vec![product("p1", true), product("p2", false)],
            sales: vec![sale(SaleStatus::Live), sale(SaleStatus::Scheduled)],
            r#match: Some(pk_match(MatchStatus::Live)),
            standings: vec![standings()],
            recent_chat: vec![chat("m1"), chat("m2")],
        }
        .into(),
        RoomStatusChanged {
            status: RoomStatus::Ended,
        }
        .into(),
        RoomProducts {
            product_ids: vec!["p1".into(), "p2".into()],
        }
        .into(),
        ProductPinned { product: None }.into(),
        SaleScheduled {
            sale: sale(SaleStatus::Scheduled),
        }
        .into(),
        SaleStarted {
            sale: sale(SaleStatus::Live),
        }
        .into(),
        SaleStock {
            sale_id: "s1".into(),
            remaining: 0,
            held: 4,
            sold: 96,
        }
        .into(),
        SaleSoldOut {
            sale_id: "s1".into(),
        }
        .into(),
        SaleEnded {
            sale_id: "s1".into(),
            sold: 100,
        }
        .into(),
        OrderPlaced {
            sale_id: "s1".into(),
            product_id: "p1".into(),
            quantity: 1,
            buyer: "张*".into(),
        }
        .into(),
        ChatDeleted {
            message_id: "m1".into(),
        }
        .into(),
        PkStarted {
            r#match: pk_match(MatchStatus::Live),
        }
        .into(),
        PkScore {
            match_id: "m1".into(),
            scores: pk_match(MatchStatus::Live).scores,
            leader_ids: vec!["pa".into()],
            ends_at: ts("2025-11-29T09:05:00Z"),
        }
        .into(),
        PkEnded {
            r#match: pk_match(MatchStatus::Ended),
        }
        .into(),
        ContestStandings {
            standings: standings(),
        }
        .into(),
        chat("m3").into(),
        Likes { total: 1_000_017 }.into(),
        RoomViewers { count: 19_999 }.into(),
        HoldExpired {
            hold_id: "h2".into(),
            sale_id: "s1".into(),
        }
        .into(),
        OrderPaid {
            order: order(false),
        }
        .into(),
        TestMessage {
            text: "1 42 xx".into(),
        }
        .into(),
        ErrorEvent {
            code: WsErrorCode::RateLimited,
            message: "too many chat messages".into(),
            r#ref: Some("c-42".into()),
        }
        .into(),
        Pong {
            nonce: "n-1".into(),
        }
        .into(),
    ];
    let mut seq = 0;
    data.into_iter()
        .enumerate()
        .map(|(i, data)| {
            let ts = TS + i as i64;
            if data.lane() == Lane::Room {
                seq += 1;
                Event::room(seq, ts, data)
            } else {
                Event::unsequenced(ts, data)
            }
        })
        .collect()
}

/// Events whose optional parts take the other branch (set where the samples above leave
/// them unset, and the reverse).
pub fn more_events() -> Vec<Event> {
    vec![
        Event::unsequenced(
            TS,
            SessionWelcome {
                session_id: "sess-2".into(),
                room_id: "r1".into(),
                user_id: Some("u-7".into()),
                epoch: "ep-1".into(),
                last_seq: 0,
                recovered: true,
            },
        ),
        Event::unsequenced(
            TS,
            RoomSnapshot {
                room: Room {
                    status: RoomStatus::Scheduled,
                    ..room()
                },
                viewers: 0,
                likes: 0,
                pinned_product: None,
                products: vec![],
                sales: vec![],
                r#match: None,
                standings: vec![],
                recent_chat: vec![],
            },
        ),
        Event::room(
            1,
            TS,
            ProductPinned {
                product: Some(product("p2", false)),
            },
        ),
        Event::unsequenced(TS, OrderPaid { order: order(true) }),
        Event::unsequenced(
            TS,
            ErrorEvent {
                code: WsErrorCode::BadFrame,
                message: "frame is not JSON".into(),
                r#ref: None,
            },
        ),
        Event::room(
            u64::MAX,
            i64::MAX,
            SaleStock {
                sale_id: String::new(),
                remaining: 0,
                held: 0,
                sold: 0,
            },
        ),
    ]
}

/// A few client frames of every type.
pub fn client_frames() -> Vec<ClientFrame> {
    vec![
        ClientFrame::ChatSend(ChatSend {
            text: "好吃！🍊".into(),
            r#ref: Some("c-1".into()),
        }),
        ClientFrame::ChatSend(ChatSend {
            text: "no ref".into(),
            r#ref: None,
        }),
        ClientFrame::Like(Like {
            count: 1,
            r#ref: None,
        }),
        ClientFrame::Like(Like {
            count: 100,
            r#ref: Some("l-9".into()),
        }),
        ClientFrame::Ping(Ping {
            nonce: "n-1".into(),
            r#ref: None,
        }),
        ClientFrame::Ping(Ping {
            nonce: String::new(),
            r#ref: Some(String::new()),
        }),
    ]
}
