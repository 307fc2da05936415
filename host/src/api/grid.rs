//! The capacity grid: many pools at once, from this node's read model,
//! without asking any entity.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderValue;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};

use super::auth::ANYONE;
use super::{ApiError, AppState, Caller, ProblemBody, Query};
use crate::ids::{PoolId, SeqNr};
use crate::sandbox::Cell;
use crate::view::{Filter, Kept, PoolView};

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

/// How fresh the grid is.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReadModelStatus {
    /// Whether this node is receiving change notifications.
    pub listening: bool,
    /// How far behind the journal this node's read model is believed to be,
    /// in milliseconds.
    pub lag_ms: u64,
}

/// A page of the grid, as [`PageJson`] writes it.
#[derive(Debug, Serialize, ToSchema)]
pub struct Grid {
    /// The pools, in id order.
    pub pools: Vec<GridPool>,
    /// Pass as `after` for the next page; absent at the end. A page may
    /// hold fewer pools than asked for, even none, and still have a next:
    /// one page looks at no more than 10,000 pools.
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
) -> Result<Response, ApiError> {
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
    let (json, next) = state.read_model.read_page(&filter, |page| {
        let kept_bytes = page
            .pools
            .iter()
            .filter_map(|(pool, kept)| match kept {
                Kept::All => pool.encoded.get(),
                Kept::Some(_) => None,
            })
            .map(|raw| raw.get().len() + 1)
            .sum();
        let mut json = PageJson::with_capacity(kept_bytes);
        for (pool, kept) in page.pools {
            match (kept, pool.encoded.get()) {
                (Kept::All, Some(raw)) => json.push_raw(raw),
                (Kept::All, None) => json.push_later(Later::Whole(pool.clone())),
                (Kept::Some(cells), _) => json.push_later(Later::Part(pool.clone(), cells)),
            }
        }
        (json, page.next.cloned())
    });
    let freshness = state.read_model.freshness();
    Ok(json.finish(
        next.as_ref().map(PoolId::as_str),
        &ReadModelStatus {
            listening: freshness.listening,
            lag_ms: freshness.lag.as_millis() as u64,
        },
    ))
}

/// A page of the grid written as JSON, byte for byte as [`Grid`] serializes.
/// The entries kept encoded with their views are copied in while the read
/// model is held; the others are encoded once it is let go, and put in
/// their places.
pub(crate) struct PageJson {
    /// `{"pools":[` and the entries so far, each after the first led by a
    /// comma.
    body: Vec<u8>,
    /// Entries to encode at the end, each with where it goes in `body`.
    later: Vec<(usize, Later)>,
    /// Entries so far.
    pools: usize,
}

/// An entry of a page to encode once the read model is let go.
pub(crate) enum Later {
    /// Every cell of a pool: its encoding is made once, kept with the view.
    Whole(Arc<PoolView>),
    /// Some of a pool's cells, by index.
    Part(Arc<PoolView>, Vec<usize>),
}

/// How a page starts.
const HEAD: &[u8] = b"{\"pools\":[";

/// Room for an entry not encoded yet (a pool of one cell takes about 250
/// bytes), and for how a page ends.
const ENTRY_ROOM: usize = 320;

impl PageJson {
    /// A page with room for `bytes` of entries.
    fn with_capacity(bytes: usize) -> Self {
        let mut body = Vec::with_capacity(HEAD.len() + bytes + ENTRY_ROOM);
        body.extend_from_slice(HEAD);
        Self {
            body,
            later: Vec::new(),
            pools: 0,
        }
    }

    /// A page with room for `entries` entries not encoded yet.
    pub(crate) fn for_entries(entries: usize) -> Self {
        Self::with_capacity(entries * ENTRY_ROOM)
    }

    fn next_entry(&mut self) {
        if self.pools > 0 {
            self.body.push(b',');
        }
        self.pools += 1;
    }

    /// Adds an entry encoded before.
    fn push_raw(&mut self, raw: &RawValue) {
        self.next_entry();
        self.body.extend_from_slice(raw.get().as_bytes());
    }

    /// Adds an entry, encoding it now.
    pub(crate) fn push(&mut self, pool: &GridPool) {
        self.next_entry();
        serde_json::to_writer(&mut self.body, pool).expect("a grid pool encodes as JSON");
    }

    /// Adds an entry to encode at the end.
    pub(crate) fn push_later(&mut self, pool: Later) {
        self.next_entry();
        self.later.push((self.body.len(), pool));
    }

    /// The page as a response, with where the next one starts and how fresh
    /// it is.
    pub(crate) fn finish(mut self, next: Option<&str>, read_model: &ReadModelStatus) -> Response {
        if !self.later.is_empty() {
            let mut body =
                Vec::with_capacity(self.body.len() + (self.later.len() + 1) * ENTRY_ROOM);
            let mut copied = 0;
            for (at, pool) in self.later {
                body.extend_from_slice(&self.body[copied..at]);
                copied = at;
                match pool {
                    Later::Whole(pool) => body.extend_from_slice(encoded(&pool).get().as_bytes()),
                    Later::Part(pool, cells) => serde_json::to_writer(
                        &mut body,
                        &GridPool::of(&pool, cells.iter().map(|&i| &pool.view.cells[i])),
                    )
                    .expect("a grid pool encodes as JSON"),
                }
            }
            body.extend_from_slice(&self.body[copied..]);
            self.body = body;
        }
        self.body.extend_from_slice(b"],\"next\":");
        serde_json::to_writer(&mut self.body, &next).expect("a pool id encodes as JSON");
        self.body.extend_from_slice(b",\"read_model\":");
        serde_json::to_writer(&mut self.body, read_model).expect("a status encodes as JSON");
        self.body.push(b'}');
        (
            [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
            self.body,
        )
            .into_response()
    }
}

/// A pool's whole entry, encoded at its first read and kept with its view.
fn encoded(pool: &PoolView) -> &RawValue {
    pool.encoded.get_or_init(|| {
        serde_json::value::to_raw_value(&GridPool::of(pool, pool.view.cells.iter()))
            .expect("a grid pool encodes as JSON")
    })
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

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use super::*;
    use crate::sandbox::View;

    fn pool(id: &str, cells: usize) -> Arc<PoolView> {
        Arc::new(PoolView {
            pool: PoolId::new(id).unwrap(),
            capacity_type: "slots".into(),
            seq_nr: SeqNr(7),
            updated_at: OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap(),
            view: View {
                cells: (0..cells)
                    .map(|i| Cell {
                        key: format!("slot-{i}"),
                        labels: [("zone".to_owned(), "north \"1\"".to_owned())].into(),
                        start_ms: Some(i as i64 * 1000),
                        end_ms: (i % 2 == 0).then_some(i as i64 * 1000 + 500),
                        unit: "stops".into(),
                        capacity: 10,
                        used: i as u64,
                        held: 12,
                        open: i != 1,
                    })
                    .collect(),
                details: RawValue::from_string("{}".into()).unwrap(),
            },
            encoded: OnceLock::new(),
        })
    }

    async fn written(json: PageJson, next: Option<&str>) -> (String, String) {
        let status = ReadModelStatus {
            listening: false,
            lag_ms: 1234,
        };
        let response = json.finish(next, &status);
        let content_type = response.headers()[CONTENT_TYPE]
            .to_str()
            .unwrap()
            .to_owned();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (content_type, String::from_utf8(body.to_vec()).unwrap())
    }

    fn as_serde_writes(pools: Vec<GridPool>, next: Option<&str>) -> String {
        serde_json::to_string(&Grid {
            pools,
            next: next.map(str::to_owned),
            read_model: ReadModelStatus {
                listening: false,
                lag_ms: 1234,
            },
        })
        .unwrap()
    }

    /// Entries copied from their kept encoding, encoded at the end (whole or
    /// in part), and encoded at once come out in order, exactly as serde
    /// writes the page.
    #[tokio::test]
    async fn a_page_is_written_as_serde_writes_it() {
        let (a, b, c, d, e) = (
            pool("a", 3),
            pool("b", 2),
            pool("c", 4),
            pool("d", 0),
            pool("e", 1),
        );
        encoded(&b);
        encoded(&d);
        let whole = |p: &Arc<PoolView>| GridPool::of(p, p.view.cells.iter());
        let part = |p: &Arc<PoolView>, cells: &[usize]| {
            GridPool::of(p, cells.iter().map(|&i| &p.view.cells[i]))
        };

        let mut json = PageJson::with_capacity(16);
        json.push_later(Later::Part(a.clone(), vec![0, 2]));
        json.push_raw(b.encoded.get().unwrap());
        json.push_later(Later::Whole(c.clone()));
        json.push_raw(d.encoded.get().unwrap());
        json.push(&whole(&e));
        json.push_later(Later::Part(e.clone(), vec![]));
        let expected = as_serde_writes(
            vec![
                part(&a, &[0, 2]),
                whole(&b),
                whole(&c),
                whole(&d),
                whole(&e),
                part(&e, &[]),
            ],
            Some("e"),
        );
        let (content_type, body) = written(json, Some("e")).await;
        assert_eq!(content_type, "application/json");
        assert_eq!(body, expected);
        // The whole pool encoded at the end is kept for its next read.
        assert_eq!(
            c.encoded.get().unwrap().get(),
            serde_json::to_string(&whole(&c)).unwrap()
        );

        let mut json = PageJson::for_entries(1);
        json.push_raw(b.encoded.get().unwrap());
        json.push_later(Later::Whole(a.clone()));
        let expected = as_serde_writes(vec![whole(&b), whole(&a)], None);
        assert_eq!(written(json, None).await.1, expected);

        let json = PageJson::for_entries(0);
        assert_eq!(written(json, None).await.1, as_serde_writes(vec![], None));
    }
}
