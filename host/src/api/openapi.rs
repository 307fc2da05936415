//! The OpenAPI document, generated from the handlers' annotations so that it
//! cannot drift from the routes.

use axum::response::IntoResponse;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{checkout, grid, node, plugins, pools};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Allot",
        description = "Capacity pools: reserve capacity without ever overbooking, shape it, see it.\n\n\
            Every error is an `application/problem+json` document with a stable `code`. \
            Authenticate with `Authorization: Bearer <token>`; a token has the role \
            `checkout`, `planner` or `operator`.",
    ),
    paths(
        checkout::reserve,
        checkout::release,
        checkout::confirm,
        checkout::reservation,
        pools::create,
        pools::show,
        pools::command,
        pools::events,
        pools::state_at,
        grid::grid,
        node::health,
        node::ready,
        node::metrics,
        node::capacity_types,
        node::cluster,
        plugins::versions,
        plugins::upload,
        plugins::activate,
        plugins::rollback,
        plugins::check,
        plugins::start_shadow,
        plugins::shadow_report,
        plugins::stop_shadow,
        serve,
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "checkout", description = "Reserve and release capacity"),
        (name = "planning", description = "Create pools, shape capacity, read history"),
        (name = "grid", description = "Many pools at a glance, from the read model"),
        (name = "node", description = "Health, metrics and what the node runs"),
        (name = "plugins", description = "The plugin registry: upload, activate, roll back (operators)"),
    )
)]
struct Document;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The API's OpenAPI document.
pub fn document() -> utoipa::openapi::OpenApi {
    Document::openapi()
}

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "node",
    responses((status = 200, description = "The OpenAPI document of this API", body = Object))
)]
pub async fn serve() -> impl IntoResponse {
    axum::Json(document())
}
