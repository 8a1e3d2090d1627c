//! The [`StockEngine`] trait every inventory backend implements.

use async_trait::async_trait;

use crate::StockError;
use crate::types::{
    Hold, ReserveOutcome, ReserveRequest, SaleCounts, SaleInfo, SaleRecord, SaleSpec,
};

/// A flash-sale inventory engine. Object safe: held as `Arc<dyn StockEngine>`.
///
/// Engines never read a clock: every time-dependent call takes the caller's `now_ms`
/// (ms since the Unix epoch), so behaviour is deterministic and testable.
#[async_trait]
pub trait StockEngine: Send + Sync {
    /// Creates a sale with all its stock remaining. Idempotent: creating the same spec
    /// again returns the current counts; a different spec under the same id answers
    /// [`StockError::SaleConflict`]. Only for new sales: a sale whose state was lost is
    /// rebuilt with [`StockEngine::restore_sale`] (creating it again would forget the
    /// units already held and sold).
    async fn create_sale(&self, spec: &SaleSpec) -> Result<SaleCounts, StockError>;

    /// Ends a sale early: no new reservations (they answer `SaleEnded`); outstanding holds
    /// stay payable until they expire. Idempotent.
    async fn end_sale(&self, sale_id: &str, now_ms: i64) -> Result<SaleCounts, StockError>;

    /// The sale's spec, early-end flag and counts.
    async fn sale(&self, sale_id: &str) -> Result<SaleInfo, StockError>;

    /// Reserves units for one buyer: replays the key's first outcome, or runs the checks
    /// (not started, ended, sold out, limit, insufficient stock) and makes a hold at the
    /// next position. Atomic: concurrent calls never oversell or pass a buyer's limit.
    async fn reserve(&self, req: ReserveRequest) -> Result<ReserveOutcome, StockError>;

    /// Reserves several requests in one call, admitted in the vector's order (which is
    /// the allocation order). Answers one result per request, in the same order.
    async fn reserve_batch(
        &self,
        reqs: Vec<ReserveRequest>,
    ) -> Vec<Result<ReserveOutcome, StockError>>;

    /// The buyer cancels a hold: its units go back to `remaining` exactly once.
    /// Errors: [`StockError::HoldNotFound`] (unknown, or another buyer's),
    /// [`StockError::HoldPaid`], [`StockError::HoldExpired`] (also when its time ran out
    /// and the sweeper has not yet expired it), [`StockError::HoldReleased`].
    async fn release(&self, hold_id: &str, user_id: &str, now_ms: i64) -> Result<Hold, StockError>;

    /// A payment succeeded: `held -= q`, `sold += q`, the hold becomes `Paid`. Paying a
    /// paid hold returns it unchanged. A hold that was released, expired or whose time
    /// ran out answers [`StockError::LateHold`] and takes no stock.
    async fn confirm_paid(&self, hold_id: &str, now_ms: i64) -> Result<Hold, StockError>;

    /// Expires up to `max` holds whose `expires_at_ms <= now_ms`, returning their units,
    /// and returns them (status `Expired`) so the caller can tell buyers and rooms. Each
    /// hold is expired exactly once, even with several sweepers running concurrently.
    async fn expire_due(&self, now_ms: i64, max: usize) -> Result<Vec<Hold>, StockError>;

    /// The sale's counts.
    async fn counts(&self, sale_id: &str) -> Result<SaleCounts, StockError>;

    /// A hold in its current status.
    async fn hold(&self, hold_id: &str) -> Result<Hold, StockError>;

    /// Successful holds of a sale in position order, those with `position > after_position`,
    /// at most `limit` of them.
    async fn allocations(
        &self,
        sale_id: &str,
        after_position: u64,
        limit: usize,
    ) -> Result<Vec<Hold>, StockError>;

    /// Replaces the sale's state with one rebuilt from the system of record (after a
    /// backend lost it): counts become `stock − sold − held` with `held` summed over
    /// the record's `Held` holds, per-buyer usage becomes held plus bought, and the next
    /// position follows the highest recorded one. Idempotency records are not rebuilt.
    async fn restore_sale(&self, record: SaleRecord) -> Result<SaleCounts, StockError>;

    /// Like [`StockEngine::restore_sale`], but only when the engine does not have the
    /// sale: `None` when it did (nothing changed). Engines shared by several nodes check
    /// and rebuild atomically, so two nodes rebuilding one lost sale cannot overwrite
    /// holds the first one already handed out.
    async fn restore_sale_if_missing(
        &self,
        record: SaleRecord,
    ) -> Result<Option<SaleCounts>, StockError> {
        match self.sale(&record.spec.sale_id).await {
            Ok(_) => Ok(None),
            Err(StockError::SaleStateLost { .. } | StockError::SaleNotFound(_)) => {
                self.restore_sale(record).await.map(Some)
            }
            Err(e) => Err(e),
        }
    }

    /// Checks the backend answers (for readiness probes).
    async fn ping(&self) -> Result<(), StockError>;
}
