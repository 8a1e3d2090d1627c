//! The OpenAPI 3.1 document's frame: info, security scheme and shared schemas. Paths
//! come from the handlers' `#[utoipa::path]` attributes as the router registers them.

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Harvest",
        description = "Live-stream shopping backend: rooms, flash sales that never oversell, \
                       orders, and livestream PK contests. Errors are \
                       `{\"error\": {\"code\", \"message\", \"details\"}}`.",
        license(name = "Apache-2.0"),
    ),
    modifiers(&BearerAuth),
    components(schemas(harvest_proto::ErrorBody, harvest_proto::ErrorObject, harvest_proto::ErrorCode)),
    tags(
        (name = "operations", description = "health, readiness, metrics"),
        (name = "products", description = "the catalogue"),
        (name = "rooms", description = "live-stream rooms, their product bag and pin"),
        (name = "contests", description = "livestream PK contests: matches, judges, standings, settlement, audit"),
        (name = "live", description = "the room event log, stats, moderation and the WebSocket"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                Http::builder()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}
