//! The seam between a node's rooms and the network.

use std::sync::Arc;

use async_trait::async_trait;

use crate::room::{Fanout, RoomChannel};
use crate::{Encode, Encoded, SocialKind};

/// Why the bus could not take an event.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The shared log or transport is unreachable; the event was not appended.
    #[error("bus unavailable: {0}")]
    Unavailable(String),
}

/// Carries events between rooms and the network: a room event gets its `seq` where the
/// bus appends it, and reaches the sessions of every node serving the room.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Appends a room event to the room's log, assigning the next `seq`, and delivers it
    /// to the room's sessions (on every node). Returns the epoch it was appended in and
    /// the encoded event.
    async fn append(
        &self,
        room: &Arc<RoomChannel>,
        event: &dyn Encode,
    ) -> Result<(String, Arc<Encoded>), BusError>;

    /// Delivers a social event (chat, likes, viewer counts) to the room's sessions on
    /// every node; social events are best-effort and carry no `seq`.
    fn social(&self, room: &Arc<RoomChannel>, kind: SocialKind, event: &dyn Encode);
}

/// The single-node bus: the room's in-memory log on this node assigns the `seq`, and
/// delivery is to this node's sessions.
#[derive(Debug, Default, Clone, Copy)]
pub struct LocalBus;

#[async_trait]
impl Bus for LocalBus {
    async fn append(
        &self,
        room: &Arc<RoomChannel>,
        event: &dyn Encode,
    ) -> Result<(String, Arc<Encoded>), BusError> {
        let (epoch, encoded, fanout) = room.publish(event);
        crate::hub::record(crate::Lane::Room, 1, fanout);
        Ok((epoch, encoded))
    }

    fn social(&self, room: &Arc<RoomChannel>, kind: SocialKind, event: &dyn Encode) {
        match room.social(kind, event) {
            Some(fanout) => crate::hub::record(crate::Lane::Social, 1, fanout),
            None => crate::hub::record(
                crate::Lane::Social,
                1,
                Fanout {
                    dropped: room.viewers() as u64,
                    ..Fanout::default()
                },
            ),
        }
    }
}
