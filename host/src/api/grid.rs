//! The capacity grid: many pools at once, from this node's read model,
//! without asking any entity.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};

use super::auth::ANYONE;
use super::{ApiError, AppState, Caller, ProblemBody, Query};
use crate::ids::{PoolId, SeqNr};
use crate::sandbox::Cell;
use crate::view::{Filter, PoolView};

/// Most pools per page.
const MAX_PAGE: usize = 1_000;

/// One cell of the grid.
#[derive(Debug, Serialize, ToSchema)]
pub struct CellOut {
    /// Unique within the pool.
    pub key: String,
    /// What the cell is (`slot`, `van`, …), as the capacity type labels it.
    pub labels: BTreeMap<String, String>,
    /// Start of its time range, ms since the Unix epoch.
    pub start_ms: Option<i64>,
    /// End of its time range, ms since the Unix epoch.
    pub end_ms: Option<i64>,
    /// Unit of the amounts (`stops`, `items`, `kg`, …).
    pub unit: String,
    /// Total capacity.
    pub capacity: u64,
    /// Taken by reservations.
    pub used: u64,
    /// Taken by holds not yet confirmed.
    pub held: u64,
    /// What is left: capacity − used − held, never below 0.
    pub free: u64,
    /// Whether it takes reservations.
    pub open: bool,
}

impl From<&Cell> for CellOut {
    fn from(cell: &Cell) -> Self {
        Self {
            key: cell.key.clone(),
            labels: cell.labels.clone(),
            start_ms: cell.start_ms,
            end_ms: cell.end_ms,
            unit: cell.unit.clone(),
            capacity: cell.capacity,
            used: cell.used,
            held: cell.held,
            free: cell
                .capacity
                .saturating_sub(cell.used)
                .saturating_sub(cell.held),
            open: cell.open,
        }
    }
}

/// What to show.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct GridQuery {
    /// Only pools of this capacity type.
    pub(crate) capacity_type: Option<String>,
    /// Only pools whose id starts with this.
    pub(crate) prefix: Option<String>,
    /// Only cells that end after this time (RFC 3339, or ms since the epoch).
    pub(crate) from: Option<String>,
    /// Only cells that start before this time (RFC 3339, or ms since the epoch).
    pub(crate) to: Option<String>,
    /// At most this many pools (default 100, at most 1000).
    #[param(minimum = 1, maximum = 1000)]
    pub(crate) limit: Option<usize>,
    /// The `next` of the previous page.
    #[param(pattern = "^[A-Za-z0-9._:/-]{1,128}$")]
    pub(crate) after: Option<String>,
}

impl GridQuery {
    /// The page size asked for, checked.
    pub(crate) fn page_size(&self) -> Result<usize, ApiError> {
        let limit = self.limit.unwrap_or(100);
        if !(1..=MAX_PAGE).contains(&limit) {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("`limit` must be 1 to {MAX_PAGE}"),
            ));
        }
        Ok(limit)
    }
}

/// One pool of the grid.
#[derive(Debug, Serialize, ToSchema)]
pub struct GridPool {
    /// The pool.
    #[schema(value_type = String)]
    pub pool: PoolId,
    /// Its capacity type.
    pub capacity_type: String,
    /// The view is as of this event.
    #[schema(value_type = i64)]
    pub seq_nr: SeqNr,
    /// When the view was written.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: OffsetDateTime,
    /// The cells the filter keeps.
    pub cells: Vec<CellOut>,
}

impl GridPool {
    /// A pool of the read model with some of its cells.
    fn of<'a>(pool: &PoolView, cells: impl Iterator<Item = &'a Cell>) -> Self {
        Self {
            pool: pool.pool.clone(),
            capacity_type: pool.capacity_type.clone(),
            seq_nr: pool.seq_nr,
            updated_at: pool.updated_at,
            cells: cells.map(CellOut::from).collect(),
        }
    }
}

/// One pool of a page as it goes out.
#[derive(Debug)]
pub enum PagePool {
    /// Every cell of a pool of the read model: its encoding is kept with
    /// the view, made at its first read.
    Whole(Arc<PoolView>),
    /// The cells a filter kept.
    Part(GridPool),
}

impl Serialize for PagePool {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Part(pool) => pool.serialize(serializer),
            Self::Whole(pool) => pool
                .encoded
                .get_or_init(|| {
                    serde_json::value::to_raw_value(&GridPool::of(pool, pool.view.cells.iter()))
                        .expect("a grid pool encodes as JSON")
                })
                .serialize(serializer),
        }
    }
}

/// How fresh the grid is.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReadModelStatus {
    /// Whether this node is receiving change notifications.
    pub listening: bool,
    /// How far behind the journal this node's read model is believed to be,
    /// in milliseconds.
    pub lag_ms: u64,
}

/// A page of the grid.
#[derive(Debug, Serialize, ToSchema)]
pub struct Grid {
    /// The pools, in id order.
    #[schema(value_type = Vec<GridPool>)]
    pub pools: Vec<PagePool>,
    /// Pass as `after` for the next page; absent at the end.
    pub next: Option<String>,
    /// How fresh the answer is.
    pub read_model: ReadModelStatus,
}

/// Show the capacity grid of many pools, from the read model.
#[utoipa::path(
    get,
    path = "/v1/grid",
    tag = "grid",
    params(GridQuery),
    responses(
        (status = 200, description = "A page of the grid", body = Grid),
        (status = 400, description = "A bad filter", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn grid(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<GridQuery>,
) -> Result<axum::Json<Grid>, ApiError> {
    caller.require(ANYONE)?;
    let limit = query.page_size()?;
    let filter = Filter {
        capacity_type: query.capacity_type,
        prefix: query.prefix,
        from_ms: query
            .from
            .as_deref()
            .map(|t| time_ms("from", t))
            .transpose()?,
        to_ms: query.to.as_deref().map(|t| time_ms("to", t)).transpose()?,
        after: query.after.as_deref().map(PoolId::new).transpose()?,
        limit,
    };
    let page = state.read_model.query(&filter);
    let freshness = state.read_model.freshness();
    Ok(axum::Json(Grid {
        pools: page
            .pools
            .into_iter()
            .map(|(pool, cells)| {
                if cells.len() == pool.view.cells.len() {
                    PagePool::Whole(pool)
                } else {
                    PagePool::Part(GridPool::of(
                        &pool,
                        cells.iter().map(|&i| &pool.view.cells[i]),
                    ))
                }
            })
            .collect(),
        next: page.next.map(String::from),
        read_model: ReadModelStatus {
            listening: freshness.listening,
            lag_ms: freshness.lag.as_millis() as u64,
        },
    }))
}

/// A time given as RFC 3339 or as ms since the epoch.
pub(crate) fn time_ms(name: &str, value: &str) -> Result<i64, ApiError> {
    if let Ok(ms) = value.parse::<i64>() {
        return Ok(ms);
    }
    OffsetDateTime::parse(value, &time::format_description::well_known::Rfc3339)
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
        .map_err(|_| {
            ApiError::bad_request(
                "invalid_query",
                format!("`{name}` must be an RFC 3339 time or ms since the epoch"),
            )
        })
}
