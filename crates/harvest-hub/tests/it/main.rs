//! Behaviour of the hub with a plain-text test encoding: ordering, recovery, lanes,
//! slow consumers, batching, admission.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use harvest_hub::{Encode, Encoding, Frame, Framing, Hub, HubConfig, Lane, Refusal, SocialKind};

/// Encodes as `name#seq` (JSON) or `name` (protobuf) so tests can read frames back.
struct Ev(&'static str);

impl Encode for Ev {
    fn encode(&self, seq: Option<u64>, encoding: Encoding) -> Bytes {
        match (encoding, seq) {
            (Encoding::Json, Some(seq)) => Bytes::from(format!("{}#{seq}", self.0)),
            _ => Bytes::from(self.0.to_owned()),
        }
    }
}

struct Joiner;

impl Framing for Joiner {
    fn frame(&self, _: Encoding, events: &[Bytes]) -> Bytes {
        let parts: Vec<&[u8]> = events.iter().map(|b| b.as_ref()).collect();
        Bytes::from(parts.join(&b"|"[..]))
    }

    fn join(&self, _: Encoding, pieces: &[harvest_hub::Piece<'_>]) -> Bytes {
        let parts: Vec<&[u8]> = pieces.iter().map(|p| p.bytes.as_ref()).collect();
        Bytes::from(parts.join(&b"|"[..]))
    }
}

fn hub(config: HubConfig) -> Hub {
    Hub::new(config, Arc::new(Joiner))
}

fn text(frame: &Frame) -> String {
    match frame {
        Frame::Data { bytes, .. } => String::from_utf8(bytes.to_vec()).unwrap(),
        Frame::Close(code) => format!("close:{code}"),
    }
}

/// Every event of every frame ready now.
fn drain(session: &harvest_hub::Session) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(frame) = session.take_frame() {
        let t = text(&frame);
        let closed = matches!(frame, Frame::Close(_));
        out.extend(t.split('|').map(str::to_owned));
        if closed {
            break;
        }
    }
    out
}

fn seqs(events: &[String]) -> Vec<u64> {
    events
        .iter()
        .filter_map(|e| e.split_once('#').map(|(_, s)| s.parse().unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn room_events_are_gap_free_and_in_order_for_every_session() {
    let hub = hub(HubConfig::default());
    let room = hub.room("r1");
    let a = hub.join(hub.admit().unwrap(), &room, None, Encoding::Json, None);
    let b = hub.join(
        hub.admit().unwrap(),
        &room,
        Some("u".into()),
        Encoding::Json,
        None,
    );
    a.session.start(vec![]);
    b.session.start(vec![]);
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let hub = hub.clone();
            tokio::spawn(async move {
                for _ in 0..250 {
                    hub.publish("r1", &Ev("e")).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    for s in [&a.session, &b.session] {
        let got = seqs(&drain(s));
        assert_eq!(got, (1..=1000).collect::<Vec<_>>());
    }
    assert_eq!(room.position().1, 1000);
}

#[tokio::test]
async fn recovery_replays_exactly_the_missed_events() {
    let hub = hub(HubConfig::default());
    let room = hub.room("r");
    for _ in 0..10 {
        hub.publish("r", &Ev("e")).await.unwrap();
    }
    let (epoch, last) = room.position();
    assert_eq!(last, 10);
    let j = hub.join(
        hub.admit().unwrap(),
        &room,
        None,
        Encoding::Json,
        Some((&epoch, 6)),
    );
    assert!(j.recovered);
    assert_eq!(j.last_seq, 10);
    j.session
        .start(vec![hub.encode_once(Lane::Private, &Ev("welcome"))]);
    hub.publish("r", &Ev("e")).await.unwrap();
    let events = drain(&j.session);
    assert_eq!(events[0], "welcome");
    assert_eq!(seqs(&events), vec![7, 8, 9, 10, 11]);

    // Up to date: recovered with nothing to replay.
    let j = hub.join(
        hub.admit().unwrap(),
        &room,
        None,
        Encoding::Json,
        Some((&epoch, 11)),
    );
    assert!(j.recovered);
    j.session.start(vec![]);
    assert!(drain(&j.session).is_empty());
    // Wrong epoch, or a seq from the future: snapshot.
    assert!(
        !hub.join(
            hub.admit().unwrap(),
            &room,
            None,
            Encoding::Json,
            Some(("other", 3))
        )
        .recovered
    );
    assert!(
        !hub.join(
            hub.admit().unwrap(),
            &room,
            None,
            Encoding::Json,
            Some((&epoch, 99))
        )
        .recovered
    );
}

#[tokio::test]
async fn history_keeps_the_larger_of_count_and_age() {
    // Young events are kept beyond the count…
    let hub1 = hub(HubConfig {
        history_events: 5,
        history_age: Duration::from_secs(600),
        ..HubConfig::default()
    });
    let room = hub1.room("r");
    for _ in 0..20 {
        hub1.publish("r", &Ev("e")).await.unwrap();
    }
    let (epoch, _) = room.position();
    assert!(
        hub1.join(
            hub1.admit().unwrap(),
            &room,
            None,
            Encoding::Json,
            Some((&epoch, 1))
        )
        .recovered
    );
    // …and old ones are dropped once the count is passed.
    let hub2 = hub(HubConfig {
        history_events: 5,
        history_age: Duration::ZERO,
        ..HubConfig::default()
    });
    let room = hub2.room("r");
    for _ in 0..20 {
        hub2.publish("r", &Ev("e")).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    let (epoch, _) = room.position();
    assert!(
        !hub2
            .join(
                hub2.admit().unwrap(),
                &room,
                None,
                Encoding::Json,
                Some((&epoch, 1))
            )
            .recovered
    );
    assert!(
        hub2.join(
            hub2.admit().unwrap(),
            &room,
            None,
            Encoding::Json,
            Some((&epoch, 15))
        )
        .recovered
    );
    assert_eq!(room.history_after(0).len(), 5);
}

#[tokio::test]
async fn a_slow_session_is_closed_with_4008_and_nobody_else_notices() {
    let hub = hub(HubConfig {
        lossless_queue_bytes: 1000,
        ..HubConfig::default()
    });
    let room = hub.room("r");
    let slow = hub.join(hub.admit().unwrap(), &room, None, Encoding::Json, None);
    let fast = hub.join(hub.admit().unwrap(), &room, None, Encoding::Json, None);
    slow.session.start(vec![]);
    fast.session.start(vec![]);
    let mut received = Vec::new();
    for _ in 0..500 {
        hub.publish("r", &Ev("a-room-event-of-some-size"))
            .await
            .unwrap();
        received.extend(drain(&fast.session));
    }
    assert_eq!(seqs(&received), (1..=500).collect::<Vec<_>>());
    assert_eq!(slow.session.closing(), Some(4008));
    assert_eq!(slow.session.take_frame(), Some(Frame::Close(4008)));
}

#[tokio::test]
async fn backlogs_go_out_as_batches_and_social_events_coalesce() {
    let hub = hub(HubConfig {
        max_batch: 4,
        ..HubConfig::default()
    });
    let room = hub.room("r");
    let j = hub.join(hub.admit().unwrap(), &room, None, Encoding::Json, None);
    j.session.start(vec![]);
    for _ in 0..6 {
        hub.publish("r", &Ev("e")).await.unwrap();
    }
    hub.social("r", SocialKind::Likes, &Ev("likes-1"));
    hub.social("r", SocialKind::Likes, &Ev("likes-2"));
    hub.social("r", SocialKind::Viewers, &Ev("viewers-9"));
    let first = j.session.take_frame().unwrap();
    match &first {
        Frame::Data { counts, .. } => assert_eq!(counts, &[4, 0, 0]),
        other => panic!("{other:?}"),
    }
    assert_eq!(text(&first), "e#1|e#2|e#3|e#4");
    let second = j.session.take_frame().unwrap();
    assert_eq!(
        text(&second),
        "e#5|e#6|likes-2|viewers-9",
        "latest like total only"
    );
    assert_eq!(j.session.take_frame(), None);
    // A single pending event goes out alone, not as a batch.
    hub.publish("r", &Ev("e")).await.unwrap();
    assert_eq!(text(&j.session.take_frame().unwrap()), "e#7");
}

#[tokio::test]
async fn chat_is_sampled_at_the_per_viewer_cap() {
    let hub = hub(HubConfig {
        chat_per_viewer_per_s: 5,
        social_queue_len: 100,
        ..HubConfig::default()
    });
    let room = hub.room("r");
    let j = hub.join(hub.admit().unwrap(), &room, None, Encoding::Json, None);
    j.session.start(vec![]);
    for _ in 0..50 {
        hub.social("r", SocialKind::Chat, &Ev("chat"));
    }
    let got = drain(&j.session).len();
    // At most the cap per second (the burst may straddle a second boundary).
    assert!((5..=10).contains(&got), "{got}");
    assert_eq!(room.stats().chat_messages, 50);
}

#[tokio::test]
async fn private_events_reach_only_that_user() {
    let hub = hub(HubConfig::default());
    let r1 = hub.room("r1");
    let r2 = hub.room("r2");
    let a1 = hub.join(
        hub.admit().unwrap(),
        &r1,
        Some("alice".into()),
        Encoding::Json,
        None,
    );
    let a2 = hub.join(
        hub.admit().unwrap(),
        &r2,
        Some("alice".into()),
        Encoding::Protobuf,
        None,
    );
    let b = hub.join(
        hub.admit().unwrap(),
        &r1,
        Some("bob".into()),
        Encoding::Json,
        None,
    );
    for j in [&a1, &a2, &b] {
        j.session.start(vec![]);
    }
    assert_eq!(hub.private("alice", &Ev("hold.expired")), 2);
    assert_eq!(drain(&a1.session), vec!["hold.expired"]);
    assert_eq!(drain(&a2.session), vec!["hold.expired"]);
    assert!(drain(&b.session).is_empty());
    drop(a1);
    assert_eq!(hub.private("alice", &Ev("x")), 1);
}

#[tokio::test]
async fn admission_control_limits_connections_and_their_rate() {
    let hub1 = hub(HubConfig {
        max_connections: 2,
        ..HubConfig::default()
    });
    let room = hub1.room("r");
    let a = hub1.join(hub1.admit().unwrap(), &room, None, Encoding::Json, None);
    let b = hub1.admit().unwrap();
    assert_eq!(hub1.admit().err(), Some(Refusal::Full));
    drop(b); // an admission that never joined is given back
    let c = hub1.admit().unwrap();
    drop(a); // leaving frees the slot too
    assert_eq!(room.viewers(), 0);
    let _d = hub1.admit().unwrap();
    drop(c);
    assert_eq!(hub1.stats().connections, 1);

    let hub2 = hub(HubConfig {
        new_connections_per_s: 3,
        ..HubConfig::default()
    });
    let mut ok = 0;
    let mut refused = 0;
    let mut keep = Vec::new();
    for _ in 0..10 {
        match hub2.admit() {
            Ok(a) => {
                ok += 1;
                keep.push(a);
            }
            Err(Refusal::TooFast) => refused += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert!((3..=6).contains(&ok), "{ok}");
    assert!(refused >= 4);
}

#[tokio::test]
async fn presence_counts_viewers_peak_and_unique_users() {
    let hub = hub(HubConfig::default());
    let room = hub.room("r");
    let a = hub.join(
        hub.admit().unwrap(),
        &room,
        Some("u1".into()),
        Encoding::Json,
        None,
    );
    let b = hub.join(
        hub.admit().unwrap(),
        &room,
        Some("u1".into()),
        Encoding::Json,
        None,
    );
    let c = hub.join(hub.admit().unwrap(), &room, None, Encoding::Json, None);
    assert_eq!(room.viewers_changed(), Some(3));
    assert_eq!(room.viewers_changed(), None);
    drop(b);
    drop(c);
    let s = room.stats();
    assert_eq!((s.viewers_now, s.viewers_peak, s.viewers_unique), (1, 3, 1));
    room.add_likes(5);
    assert_eq!(room.likes_changed(), Some(5));
    assert_eq!(room.likes_changed(), None);
    room.close_user("u1", 4003);
    assert_eq!(a.session.take_frame(), Some(Frame::Close(4003)));
}

#[tokio::test]
async fn next_frame_waits_for_work() {
    let hub = hub(HubConfig::default());
    let room = hub.room("r");
    let j = hub.join(hub.admit().unwrap(), &room, None, Encoding::Json, None);
    j.session.start(vec![]);
    let session = j.session.clone();
    let waiter = tokio::spawn(async move { session.next_frame().await });
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!waiter.is_finished());
    hub.publish("r", &Ev("e")).await.unwrap();
    let frame = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(text(&frame), "e#1");
}

#[tokio::test]
async fn a_room_opened_from_a_stored_position_serves_recovery_from_its_history() {
    let hub = hub(HubConfig::default());
    let history: Vec<_> = (8..=10)
        .map(|seq| {
            Arc::new(harvest_hub::Encoded::from_parts(
                Lane::Room,
                Some(seq),
                harvest_hub::now_ms(),
                Bytes::from(format!("old#{seq}")),
                Bytes::from_static(b"old"),
            ))
        })
        .collect();
    let room = hub.room_with("r", || harvest_hub::RoomInit {
        epoch: "stored".into(),
        last_seq: 10,
        history,
    });
    assert_eq!(room.position(), ("stored".to_owned(), 10));
    let j = hub.join(
        hub.admit().unwrap(),
        &room,
        None,
        Encoding::Json,
        Some(("stored", 8)),
    );
    assert!(j.recovered);
    j.session.start(vec![]);
    hub.publish("r", &Ev("new")).await.unwrap();
    assert_eq!(drain(&j.session), vec!["old#9", "old#10", "new#11"]);
    // Older than the stored history: a snapshot.
    assert!(
        !hub.join(
            hub.admit().unwrap(),
            &room,
            None,
            Encoding::Json,
            Some(("stored", 5))
        )
        .recovered
    );
}

/// Every frame a session has ready, as text.
fn frames(session: &harvest_hub::Session) -> Vec<(String, [u32; 3])> {
    let mut out = Vec::new();
    while let Some(frame) = session.take_frame() {
        match &frame {
            Frame::Data { counts, .. } => out.push((text(&frame), *counts)),
            Frame::Close(_) => panic!("closed: {frame:?}"),
        }
    }
    out
}

/// Lets (paused) time pass beyond `d` and the batcher run.
async fn settle(d: Duration) {
    tokio::time::sleep(d + Duration::from_millis(1)).await;
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn room_events_close_together_go_out_as_one_batch_per_window() {
    let window = Duration::from_millis(20);
    let hub = hub(HubConfig {
        batch_window: window,
        max_batch: 8,
        ..HubConfig::default()
    });
    let room = hub.room("r");
    let a = hub.join(hub.admit().unwrap(), &room, None, Encoding::Json, None);
    a.session.start(vec![]);

    // A quiet room: the first event goes out at once, alone.
    hub.publish("r", &Ev("e")).await.unwrap();
    assert_eq!(frames(&a.session), [("e#1".to_owned(), [1, 0, 0])]);

    // Events that follow within the window wait for it to close...
    for _ in 0..3 {
        hub.publish("r", &Ev("e")).await.unwrap();
    }
    assert!(
        frames(&a.session).is_empty(),
        "held until the window closes"
    );
    assert_eq!(room.position().1, 4, "seqs are assigned at once");
    // ...and go out as one batch, counted as three room events.
    settle(window).await;
    assert_eq!(frames(&a.session), [("e#2|e#3|e#4".to_owned(), [3, 0, 0])]);

    // A session joining while events are pending does not get them twice: those
    // already here get the pending events first, the newcomer starts after them.
    hub.publish("r", &Ev("e")).await.unwrap();
    let b = hub.join(hub.admit().unwrap(), &room, None, Encoding::Json, None);
    b.session.start(vec![]);
    assert_eq!(b.last_seq, 5);
    assert_eq!(frames(&a.session), [("e#5".to_owned(), [1, 0, 0])]);
    hub.publish("r", &Ev("e")).await.unwrap();
    settle(window * 2).await;
    assert_eq!(seqs(&drain(&a.session)), [6]);
    assert_eq!(seqs(&drain(&b.session)), [6]);

    // After a quiet window the next event goes out at once; a full batch (8) goes out
    // without waiting for the window (both are taken as one frame here).
    tokio::time::sleep(window * 2).await;
    for _ in 0..9 {
        hub.publish("r", &Ev("e")).await.unwrap();
    }
    let early = frames(&a.session);
    assert_eq!(early.len(), 1, "{early:?}");
    assert_eq!(early[0].1, [9, 0, 0]);
    assert_eq!(
        seqs(&early[0].0.split('|').map(str::to_owned).collect::<Vec<_>>()),
        (7..=15).collect::<Vec<_>>()
    );
    settle(window).await;
    assert!(frames(&a.session).is_empty());

    // A batch queued behind other events is spliced into one frame with them, in order.
    hub.social("r", SocialKind::Likes, &Ev("likes-1"));
    hub.publish("r", &Ev("e")).await.unwrap();
    hub.publish("r", &Ev("e")).await.unwrap();
    settle(window).await;
    let got = frames(&b.session);
    let all: Vec<String> = got.iter().map(|(t, _)| t.clone()).collect();
    let joined = all.join("|");
    assert_eq!(
        seqs(&joined.split('|').map(str::to_owned).collect::<Vec<_>>()),
        (7..=17).collect::<Vec<_>>()
    );
    assert!(joined.contains("likes-1"));
}

#[tokio::test(start_paused = true)]
async fn recovery_sees_events_still_waiting_for_their_batch() {
    let hub = hub(HubConfig {
        batch_window: Duration::from_millis(50),
        ..HubConfig::default()
    });
    let room = hub.room("r");
    let a = hub.join(hub.admit().unwrap(), &room, None, Encoding::Json, None);
    a.session.start(vec![]);
    for _ in 0..3 {
        hub.publish("r", &Ev("e")).await.unwrap();
    }
    // Seqs 2 and 3 are pending; a client resuming from 1 gets them by replay, once.
    let (epoch, _) = room.position();
    let b = hub.join(
        hub.admit().unwrap(),
        &room,
        None,
        Encoding::Json,
        Some((&epoch, 1)),
    );
    assert!(b.recovered);
    b.session.start(vec![]);
    settle(Duration::from_millis(120)).await;
    assert_eq!(seqs(&drain(&b.session)), [2, 3]);
    assert_eq!(seqs(&drain(&a.session)), [1, 2, 3]);
}
