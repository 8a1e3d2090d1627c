//! A real WebSocket client for tests: connects to a room, reads events (single or
//! batched, JSON or protobuf) one at a time, and reports close codes.

use std::collections::VecDeque;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use harvest_proto::ws as wire;
use serde_json::Value;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Bytes, Message};

type Stream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// What the next read found.
#[derive(Debug, Clone, PartialEq)]
pub enum WsItem {
    Event(Value),
    Closed(Option<u16>),
}

/// A connected test client.
pub struct WsClient {
    stream: Stream,
    pending: VecDeque<Value>,
    protobuf: bool,
    /// The subprotocol the server selected, if any.
    pub protocol: Option<String>,
    /// Frames received that held more than one event.
    pub batches: usize,
}

impl WsClient {
    /// Connects to `ws://addr/ws/rooms/{room}?{query}` offering `protocol`.
    pub async fn connect(base_url: &str, room: &str, query: &str, protocol: Option<&str>) -> Self {
        let url = format!(
            "{}/ws/rooms/{room}{}{query}",
            base_url.replacen("http://", "ws://", 1),
            if query.is_empty() { "" } else { "?" }
        );
        let mut request = url.into_client_request().expect("ws request");
        if let Some(p) = protocol {
            request
                .headers_mut()
                .insert("sec-websocket-protocol", p.parse().unwrap());
        }
        let (stream, response) = tokio_tungstenite::connect_async(request)
            .await
            .expect("websocket connects");
        let selected = response
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Self {
            protobuf: selected.as_deref() == Some(wire::SUBPROTOCOL_PROTOBUF),
            stream,
            pending: VecDeque::new(),
            protocol: selected,
            batches: 0,
        }
    }

    /// The next event or the close, waiting at most `timeout`; panics on timeout.
    pub async fn next(&mut self, timeout: Duration) -> WsItem {
        match self.try_next(timeout).await {
            Some(item) => item,
            None => panic!("no websocket event within {timeout:?}"),
        }
    }

    /// The next event or the close, or `None` after `timeout`.
    pub async fn try_next(&mut self, timeout: Duration) -> Option<WsItem> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(v) = self.pending.pop_front() {
                return Some(WsItem::Event(v));
            }
            let msg = match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Err(_) => return None,
                Ok(None) => return Some(WsItem::Closed(None)),
                Ok(Some(Err(_))) => return Some(WsItem::Closed(None)),
                Ok(Some(Ok(msg))) => msg,
            };
            match msg {
                Message::Text(text) => {
                    let value: Value =
                        serde_json::from_str(text.as_str()).expect("server frames are JSON");
                    match value {
                        Value::Array(items) => {
                            self.batches += 1;
                            self.pending.extend(items);
                        }
                        other => self.pending.push_back(other),
                    }
                }
                Message::Binary(bytes) => {
                    let events = wire::decode_proto_frame(&bytes).expect("server frames decode");
                    if events.len() > 1 {
                        self.batches += 1;
                    }
                    for e in events {
                        // Re-express as JSON so tests read both encodings alike.
                        let json = wire::encode_json(&e);
                        self.pending
                            .push_back(serde_json::from_slice(&json).expect("json"));
                    }
                }
                Message::Close(frame) => {
                    return Some(WsItem::Closed(frame.map(|f| u16::from(f.code))));
                }
                _ => {}
            }
        }
    }

    /// The next event, panicking on a close.
    pub async fn event(&mut self) -> Value {
        match self.next(Duration::from_secs(10)).await {
            WsItem::Event(v) => v,
            WsItem::Closed(code) => panic!("closed with {code:?} while waiting for an event"),
        }
    }

    /// Skips events until one of type `ty` arrives.
    pub async fn event_of(&mut self, ty: &str) -> Value {
        loop {
            let e = self.event().await;
            if e["type"] == ty {
                return e;
            }
        }
    }

    /// Reads until the connection closes; returns its close code.
    pub async fn closed(&mut self) -> Option<u16> {
        loop {
            match self.next(Duration::from_secs(15)).await {
                WsItem::Closed(code) => return code,
                WsItem::Event(_) => {}
            }
        }
    }

    /// Sends a JSON text frame.
    pub async fn send_json(&mut self, value: &Value) {
        self.send_text(&value.to_string()).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        self.stream
            .send(Message::Text(text.into()))
            .await
            .expect("send text");
    }

    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        self.stream
            .send(Message::Binary(Bytes::from(bytes)))
            .await
            .expect("send binary");
    }

    /// Whether frames are protobuf.
    pub fn is_protobuf(&self) -> bool {
        self.protobuf
    }

    /// Closes from the client side.
    pub async fn close(mut self) {
        let _ = self
            .stream
            .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            }))
            .await;
    }
}
