//! Shared state of a running server: cheap-to-clone handles to every component.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use harvest_store::Store;

use crate::auth::Authenticator;
use crate::config::Settings;
use crate::redis_check::RedisCheck;

/// Everything a handler may need. Clone is one reference-count bump: axum clones the
/// state for every extractor of every request.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Components>,
}

impl std::ops::Deref for AppState {
    type Target = Components;

    fn deref(&self) -> &Components {
        &self.inner
    }
}

/// The started components of a server, shared by every request.
pub struct Components {
    pub settings: Arc<Settings>,
    pub store: Store,
    pub auth: Authenticator,
    pub redis: Option<RedisCheck>,
    pub metrics: crate::metrics::Metrics,
    pub live: crate::live::Live,
    pub flash: crate::flash::FlashSales,
    pub payments: crate::payments::Payments,
    pub contests: crate::contests::Contests,
    shutting_down: AtomicBool,
    /// The demo identities the console offers; set only by `harvest demo`.
    demo_identities: OnceLock<serde_json::Value>,
}

impl AppState {
    /// Assembles the state from its started components.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        settings: Arc<Settings>,
        store: Store,
        auth: Authenticator,
        redis: Option<RedisCheck>,
        metrics: crate::metrics::Metrics,
        live: crate::live::Live,
        flash: crate::flash::FlashSales,
        payments: crate::payments::Payments,
        contests: crate::contests::Contests,
    ) -> Self {
        let components = Components {
            settings,
            store,
            auth,
            redis,
            metrics,
            live,
            flash,
            payments,
            contests,
            shutting_down: AtomicBool::new(false),
            demo_identities: OnceLock::new(),
        };
        Self {
            inner: Arc::new(components),
        }
    }

    /// Marks the node as shutting down: `/readyz` answers 503 from now on.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// Hands the console its one-click demo identities (tokens included). Only
    /// `harvest demo` calls this; a plain `serve` never exposes any.
    pub fn set_demo_identities(&self, identities: serde_json::Value) {
        let _ = self.demo_identities.set(identities);
    }

    /// The demo identities, when this server runs as `harvest demo`.
    pub fn demo_identities(&self) -> Option<&serde_json::Value> {
        self.demo_identities.get()
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.settings.request_timeout_s.max(1))
    }
}
