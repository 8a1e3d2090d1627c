//! `GET /ws/rooms/{room_id}`: the WebSocket endpoint of a room.
//!
//! A connection is authenticated from its `token` query parameter (optional: without it
//! the viewer watches anonymously), admitted by the hub's admission control, and joined
//! to the room. It then receives `session.welcome`, either the missed room events
//! (recovery with `since` and `epoch`) or a `room.snapshot`, then live events. Refusals
//! complete the upgrade and close at once with their code, before any event.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::Stream;
use tracing::Instrument;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use harvest_hub::{Frame, Lane, SocialKind};
use harvest_proto::ws::{self as wire, ClientFrame, Encoding, FrameError, WsErrorCode, close};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::auth::User;
use crate::error::ApiError;
use crate::extract::ApiQuery;
use crate::state::AppState;

/// Query of the WebSocket endpoint.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct WsQuery {
    /// A bearer token; without it the connection watches anonymously.
    pub token: Option<String>,
    /// The last room seq the client saw (resume).
    #[param(value_type = Option<u64>)]
    pub since: Option<String>,
    /// The epoch of `since`.
    pub epoch: Option<String>,
}

/// Longest wait for one frame to be written to a client before it counts as dead.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Open a room's WebSocket (subprotocols `harvest.v1.json`, `harvest.v1.protobuf`).
#[utoipa::path(get, path = "/ws/rooms/{room_id}", tag = "live",
    params(("room_id" = String, Path, description = "room id"), WsQuery),
    responses(
        (status = 101, description = "switching to the WebSocket protocol; see docs/protocol.md"),
        (status = 400, description = "invalid query parameter, or not a WebSocket upgrade", body = harvest_proto::ErrorBody),
    ))]
pub async fn ws_room(
    State(state): State<AppState>,
    Path(room_id): Path<String>,
    ApiQuery(query): ApiQuery<WsQuery>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let upgrade = upgrade.map_err(|_| {
        ApiError::new(
            harvest_proto::ErrorCode::BadRequest,
            "expected a WebSocket upgrade request",
        )
    })?;
    let since = match (&query.since, &query.epoch) {
        (None, _) => None,
        (Some(raw), epoch) => {
            let seq: u64 = raw
                .parse()
                .map_err(|_| ApiError::field("since", "since must be a non-negative integer"))?;
            epoch.clone().map(|e| (e, seq))
        }
    };
    let offered = headers
        .get_all(axum::http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>();
    let negotiated = Encoding::negotiate(offered.iter().copied());
    let encoding = negotiated.unwrap_or(Encoding::Json);
    // Authenticate now; a refusal is delivered as a close code after the upgrade.
    let auth = match &query.token {
        None => Ok(None),
        Some(token) => state.auth.verify(token).map(Some),
    };
    let settings = &state.settings;
    let mut upgrade = upgrade
        .read_buffer_size(settings.ws_read_buffer_bytes)
        .write_buffer_size(settings.ws_write_buffer_bytes)
        .max_write_buffer_size(settings.ws_write_buffer_bytes.max(1) * 4 + 1024 * 1024)
        .max_message_size(1024 * 1024)
        .max_frame_size(1024 * 1024);
    if let Some(enc) = negotiated {
        upgrade = upgrade.protocols([enc.subprotocol()]);
    }
    Ok(upgrade.on_upgrade(move |socket| async move {
        let user = match auth {
            Ok(user) => user,
            Err(_) => return refuse(socket, close::INVALID_TOKEN).await,
        };
        run(socket, state, room_id, user, encoding, since).await;
    }))
}

async fn refuse(mut socket: WebSocket, code: u16) {
    send_close(&mut socket, code).await;
}

/// Sends a close frame with `code` and its reason (waiting at most `WRITE_TIMEOUT`).
async fn send_close(socket: &mut WebSocket, code: u16) {
    let reason = close::reason(code).unwrap_or_default();
    let _ = tokio::time::timeout(
        WRITE_TIMEOUT,
        socket.send(Message::Close(Some(CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        }))),
    )
    .await;
}

fn hub_encoding(e: Encoding) -> harvest_hub::Encoding {
    match e {
        Encoding::Json => harvest_hub::Encoding::Json,
        Encoding::Protobuf => harvest_hub::Encoding::Protobuf,
    }
}

/// Sets the connection up on the HTTP runtime, then runs its session as a task of its
/// own on the session runtime. The setup's futures (SQL reads, the snapshot) are large
/// and done before the first frame, so the task that lives as long as the connection
/// holds only the session loop.
#[tracing::instrument(skip_all, fields(room_id = %room_id, user_id = user.as_ref().map(|u| u.id.as_str())))]
async fn run(
    socket: WebSocket,
    state: AppState,
    room_id: String,
    user: Option<User>,
    encoding: Encoding,
    since: Option<(String, u64)>,
) {
    match join(&state, &room_id, user.as_ref(), encoding, since).await {
        Ok(joined) => {
            let sessions = state.live.sessions.clone();
            let span = tracing::Span::current();
            sessions.spawn(
                serve_session(socket, state, room_id, user, encoding, joined).instrument(span),
            );
        }
        Err(code) => refuse(socket, code).await,
    }
}

/// Checks bans, admits the connection, joins the room and queues the welcome and the
/// missed events or a snapshot. `Err`: the close code refusing the connection.
async fn join(
    state: &AppState,
    room_id: &str,
    user: Option<&User>,
    encoding: Encoding,
    since: Option<(String, u64)>,
) -> Result<harvest_hub::Joined, u16> {
    let live = &state.live;
    if let Some(user) = user {
        match live.is_banned(room_id, &user.id).await {
            Ok(false) => {}
            Ok(true) => return Err(close::BANNED),
            Err(e) => {
                tracing::warn!(error = %e, "cannot check bans");
                return Err(close::TRY_LATER);
            }
        }
    }
    let room = match state.store.room(room_id).await {
        Ok(room) => room,
        Err(harvest_store::StoreError::NotFound) => return Err(close::ROOM_NOT_FOUND),
        Err(e) => {
            tracing::warn!(error = %e, "cannot load the room for a websocket");
            return Err(close::TRY_LATER);
        }
    };
    let admission = live.hub.admit().map_err(|_| close::TRY_LATER)?;
    let channel = match live.open_room(room_id).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "cannot open the room's log");
            return Err(close::TRY_LATER);
        }
    };
    let joined = live.hub.join(
        admission,
        &channel,
        user.map(|u| u.id.clone()),
        hub_encoding(encoding),
        since.as_ref().map(|(e, s)| (e.as_str(), *s)),
    );
    let welcome = live.once(
        Lane::Private,
        wire::SessionWelcome {
            session_id: joined.session.key.clone(),
            room_id: room_id.to_owned(),
            user_id: user.map(|u| u.id.clone()),
            epoch: joined.epoch.clone(),
            last_seq: joined.last_seq,
            recovered: joined.recovered,
        },
    );
    let mut first = vec![welcome];
    if !joined.recovered {
        match crate::routes::live::snapshot(state, room, &channel).await {
            Ok(snapshot) => first.push(live.once(Lane::Private, snapshot)),
            Err(e) => {
                tracing::warn!(error = ?e.message, "cannot build the room snapshot");
                return Err(close::TRY_LATER);
            }
        }
    }
    joined.session.start(first);
    Ok(joined)
}

/// Writes the session's queue to the socket and acts on the client's frames until
/// either side closes.
async fn serve_session(
    mut socket: WebSocket,
    state: AppState,
    room_id: String,
    user: Option<User>,
    encoding: Encoding,
    joined: harvest_hub::Joined,
) {
    let live = &state.live;
    let session = &joined.session;
    let likes_limiter: DefaultDirectRateLimiter = RateLimiter::direct(Quota::per_second(
        std::num::NonZeroU32::new(live.limits.likes_per_connection_per_s)
            .unwrap_or(std::num::NonZeroU32::MIN),
    ));
    let mut bad = BadFrames::default();
    let reader = ReadWaker::new();
    // Frames written in a row while the client's side had something to read.
    let mut written = 0u32;
    loop {
        // Writing comes first, but after READ_EVERY frames in a row what the client sent
        // is read first, so a busy room never starves it. The client's side is only
        // polled when its socket said it has something (see `ReadWaker`).
        let step = if written < READ_EVERY {
            tokio::select! {
                biased;
                frame = session.next_frame() => Step::Send(frame),
                incoming = reader.recv(&mut socket) => Step::Received(incoming),
            }
        } else {
            tokio::select! {
                biased;
                incoming = reader.recv(&mut socket) => Step::Received(incoming),
                frame = session.next_frame() => Step::Send(frame),
            }
        };
        if matches!(step, Step::Received(_)) || !reader.is_ready() {
            written = 0;
        }
        match step {
            Step::Send(Frame::Data { bytes, counts }) => {
                let message = match encoding {
                    Encoding::Json => match Utf8Bytes::try_from(bytes) {
                        Ok(text) => Message::Text(text),
                        Err(_) => continue,
                    },
                    Encoding::Protobuf => Message::Binary(bytes),
                };
                match tokio::time::timeout(WRITE_TIMEOUT, socket.send(message)).await {
                    Ok(Ok(())) => crate::metrics::delivered::add(counts),
                    _ => break,
                }
                written += 1;
            }
            Step::Send(Frame::Close(code)) => {
                send_close(&mut socket, code).await;
                break;
            }
            Step::Received(incoming) => {
                let Some(Ok(message)) = incoming else { break };
                let outcome = match message {
                    Message::Text(text) => handle_bytes(
                        &state,
                        &room_id,
                        user.as_ref(),
                        encoding,
                        text.as_bytes(),
                        true,
                        &likes_limiter,
                        session,
                    ),
                    Message::Binary(data) => handle_bytes(
                        &state,
                        &room_id,
                        user.as_ref(),
                        encoding,
                        &data,
                        false,
                        &likes_limiter,
                        session,
                    ),
                    Message::Close(_) => break,
                    Message::Ping(_) | Message::Pong(_) => Ok(()),
                };
                if let Err(error) = outcome {
                    let too_many = error.counts_as_bad() && bad.hit(live.limits.bad_frame_limit);
                    if too_many {
                        // The earlier answers still go out; this frame closes.
                        session.finish(close::POLICY);
                    } else {
                        session.push(live.once(Lane::Private, error.to_event()));
                    }
                }
            }
        }
    }
    drop(joined);
}

/// Counts bad frames in a sliding window of 10 s.
#[derive(Default)]
struct BadFrames {
    times: std::collections::VecDeque<Instant>,
}

impl BadFrames {
    /// Records one; `true` when it is one too many.
    fn hit(&mut self, limit: u32) -> bool {
        let now = Instant::now();
        let window = Duration::from_secs(wire::BAD_FRAME_WINDOW_S);
        while self
            .times
            .front()
            .is_some_and(|t| now.duration_since(*t) > window)
        {
            self.times.pop_front();
        }
        self.times.push_back(now);
        self.times.len() > limit as usize
    }
}

/// Frames a session writes before it looks at what the client sent, when frames keep
/// coming.
const READ_EVERY: u32 = 32;

/// Polls a connection's incoming side only when its socket signalled something to
/// read. A session loop waits on its queue and its socket at once, and would otherwise
/// poll the socket, find nothing and re-register interest with every frame it writes.
struct ReadWaker {
    flag: Arc<ReadFlag>,
}

struct ReadFlag {
    /// The socket may have something to read (initially: nothing was polled yet).
    ready: AtomicBool,
    /// The session task, woken when the socket is.
    task: futures::task::AtomicWaker,
}

impl futures::task::ArcWake for ReadFlag {
    fn wake_by_ref(flag: &Arc<Self>) {
        flag.ready.store(true, Ordering::Release);
        flag.task.wake();
    }
}

impl ReadWaker {
    fn new() -> Self {
        Self {
            flag: Arc::new(ReadFlag {
                ready: AtomicBool::new(true),
                task: futures::task::AtomicWaker::new(),
            }),
        }
    }

    /// Whether the socket may have something to read.
    fn is_ready(&self) -> bool {
        self.flag.ready.load(Ordering::Acquire)
    }

    /// The next message from the client; pending (without touching the socket) until
    /// the socket signals something.
    fn recv<'a>(
        &'a self,
        socket: &'a mut WebSocket,
    ) -> impl Future<Output = Option<Result<Message, axum::Error>>> + 'a {
        std::future::poll_fn(move |cx| {
            self.flag.task.register(cx.waker());
            if !self.flag.ready.swap(false, Ordering::AcqRel) {
                return Poll::Pending;
            }
            let waker = futures::task::waker_ref(&self.flag);
            let mut read_cx = Context::from_waker(&waker);
            match Pin::new(&mut *socket).poll_next(&mut read_cx) {
                Poll::Ready(message) => {
                    // More may be buffered already: look again next time.
                    self.flag.ready.store(true, Ordering::Release);
                    Poll::Ready(message)
                }
                // The socket now holds the flag's waker.
                Poll::Pending => Poll::Pending,
            }
        })
    }
}

/// What a session's loop does next.
enum Step {
    Send(Frame),
    Received(Option<Result<Message, axum::Error>>),
}

/// Decodes and acts on one client frame.
#[allow(clippy::too_many_arguments)]
fn handle_bytes(
    state: &AppState,
    room_id: &str,
    user: Option<&User>,
    encoding: Encoding,
    bytes: &[u8],
    is_text: bool,
    likes_limiter: &DefaultDirectRateLimiter,
    session: &harvest_hub::Session,
) -> Result<(), FrameError> {
    if bytes.len() > wire::MAX_CLIENT_FRAME_BYTES {
        return Err(FrameError::new(
            WsErrorCode::TooLarge,
            format!(
                "client frames are limited to {} bytes",
                wire::MAX_CLIENT_FRAME_BYTES
            ),
        ));
    }
    let frame = match (encoding, is_text) {
        (Encoding::Json, true) => wire::decode_client_json(bytes)?,
        (Encoding::Json, false) => return Err(FrameError::binary_in_json_session()),
        (Encoding::Protobuf, false) => wire::decode_client_proto(bytes)?,
        (Encoding::Protobuf, true) => return Err(FrameError::text_in_protobuf_session()),
    };
    let live = &state.live;
    let r#ref = frame.ref_id().map(str::to_owned);
    let fail = |code: WsErrorCode, message: &str| {
        Err(FrameError::new(code, message).with_ref(r#ref.clone()))
    };
    match frame {
        ClientFrame::Ping(ping) => {
            session.push(live.once(Lane::Private, wire::Pong { nonce: ping.nonce }));
            Ok(())
        }
        ClientFrame::Like(like) => {
            let Some(_user) = user else {
                return fail(WsErrorCode::Unauthorized, "liking needs a token");
            };
            if likes_limiter.check().is_err() {
                return fail(WsErrorCode::RateLimited, "too many likes; slow down");
            }
            if let Some(room) = live.hub.existing_room(room_id) {
                room.add_likes(u64::from(like.count));
            }
            state.contests.like(room_id, u64::from(like.count));
            Ok(())
        }
        ClientFrame::ChatSend(chat) => {
            let Some(user) = user else {
                return fail(WsErrorCode::Unauthorized, "chat needs a token");
            };
            if live.is_muted(room_id, &user.id) {
                return fail(WsErrorCode::Muted, "you are muted in this room");
            }
            let text = chat.text.trim();
            if text.is_empty() {
                return fail(WsErrorCode::EmptyText, "the message is empty");
            }
            if text.chars().count() > live.limits.chat_max_chars {
                return fail(WsErrorCode::TextTooLong, "the message is too long");
            }
            if !live.chat_allowed(&user.id) {
                return fail(WsErrorCode::RateLimited, "too many messages; slow down");
            }
            let message = wire::ChatMessage {
                id: uuid::Uuid::now_v7().to_string(),
                user_id: user.id.clone(),
                name: user.name.clone(),
                text: live.mask(text),
            };
            live.remember_chat(room_id, message.clone());
            live.social(room_id, SocialKind::Chat, message);
            Ok(())
        }
    }
}
