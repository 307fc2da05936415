//! The commands that talk to a running node's API.
//!
//! Answers are printed as JSON on stdout (the grid as a table); a refusal is
//! printed as its problem on stderr and makes the command fail, so scripts
//! can branch on the exit status.

use std::path::Path;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use super::Remote;

#[derive(Subcommand)]
pub(super) enum PoolsCommand {
    /// Create a pool (planners and operators).
    Create {
        /// The pool's id.
        id: String,
        /// Its capacity type.
        #[arg(short = 't', long = "type")]
        capacity_type: String,
        /// Its config: JSON, or @FILE.
        #[arg(short, long)]
        config: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Show a pool's current state (read through its entity).
    Show {
        /// The pool's id.
        id: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Show a pool's history: events, who caused them, which plugin decided.
    History {
        /// The pool's id.
        id: String,
        /// Events after this sequence number.
        #[arg(long, default_value_t = 0)]
        after: i64,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: i64,
        #[command(flatten)]
        remote: Remote,
    },
    /// Show a pool's state as of an event or a time.
    State {
        /// The pool's id.
        id: String,
        /// Right after this event.
        #[arg(long, conflicts_with = "at", required_unless_present = "at")]
        seq: Option<i64>,
        /// As of this time (RFC 3339).
        #[arg(long)]
        at: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Args)]
pub(super) struct CommandArgs {
    /// The pool's id.
    pool: String,
    /// The command's name (`add_van`, `set_capacity`, …).
    name: String,
    /// Its arguments: JSON, or @FILE.
    #[arg(default_value = "{}")]
    payload: String,
    /// An idempotency key: the command takes effect once however often it is sent.
    #[arg(long)]
    key: Option<String>,
    #[command(flatten)]
    remote: Remote,
}

#[derive(Args)]
pub(super) struct ReserveArgs {
    /// The pool's id.
    pool: String,
    /// Your reservation id; send it again to retry safely.
    reservation: String,
    /// What to reserve, in the capacity type's terms: JSON, or @FILE.
    request: String,
    #[command(flatten)]
    remote: Remote,
}

#[derive(Args)]
pub(super) struct ReservationArgs {
    /// The pool's id.
    pool: String,
    /// The reservation id.
    reservation: String,
    #[command(flatten)]
    remote: Remote,
}

#[derive(Args)]
pub(super) struct GridArgs {
    /// Only pools of this capacity type.
    #[arg(short = 't', long = "type")]
    capacity_type: Option<String>,
    /// Only pools whose id starts with this.
    #[arg(short, long)]
    prefix: Option<String>,
    /// Only cells ending after this time (RFC 3339).
    #[arg(long)]
    from: Option<String>,
    /// Only cells starting before this time (RFC 3339).
    #[arg(long)]
    to: Option<String>,
    /// At most this many pools.
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// Start after this pool id (the previous page's last).
    #[arg(long)]
    after: Option<String>,
    /// Print the JSON answer instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    remote: Remote,
}

/// A client of one node.
pub(super) struct Client {
    http: reqwest::Client,
    remote: Remote,
}

/// What a node answered: a success body, or the problem of a refusal.
pub(super) enum Answer {
    Ok(Value),
    Problem(StatusCode, Value),
}

impl Client {
    pub(super) fn new(remote: Remote) -> Self {
        Self {
            http: reqwest::Client::new(),
            remote,
        }
    }

    /// Uploads bytes as `application/wasm`.
    pub(super) async fn upload(&self, path: &str, bytes: Vec<u8>) -> anyhow::Result<Answer> {
        let request = self
            .request(Method::POST, path)
            .header("content-type", "application/wasm")
            .body(bytes);
        self.answer(request).await
    }

    /// A request to the node, with the token if there is one.
    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let url = format!("{}{path}", self.remote.url.trim_end_matches('/'));
        let request = self.http.request(method, url);
        match &self.remote.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    pub(super) async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Answer> {
        let mut request = self.request(method, path);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        self.answer(request).await
    }

    async fn answer(&self, request: reqwest::RequestBuilder) -> anyhow::Result<Answer> {
        let response = request.send().await.with_context(|| {
            format!(
                "cannot reach {}: is a node running there? (`allot dev` starts one)",
                self.remote.url
            )
        })?;
        let status = response.status();
        let text = response.text().await?;
        let value: Value = serde_json::from_str(&text).with_context(|| {
            format!("the node answered {status} with something that is not JSON")
        })?;
        Ok(if status.is_success() {
            Answer::Ok(value)
        } else {
            Answer::Problem(status, value)
        })
    }
}

/// Prints an answer: JSON on stdout, or the problem on stderr.
pub(super) fn print(answer: Answer) -> anyhow::Result<bool> {
    match answer {
        Answer::Ok(value) => {
            use std::io::Write as _;
            let text = serde_json::to_string_pretty(&value)?;
            match writeln!(std::io::stdout().lock(), "{text}") {
                // The reader went away (`allot … | head`): not a failure.
                Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => {}
                written => written?,
            }
            Ok(true)
        }
        Answer::Problem(status, problem) => {
            report(status, &problem);
            Ok(false)
        }
    }
}

fn report(status: StatusCode, problem: &Value) {
    let text = |field: &str| problem[field].as_str().unwrap_or("").to_owned();
    eprintln!(
        "refused ({} {}): {}: {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        text("code"),
        text("detail")
    );
    if status == StatusCode::UNAUTHORIZED {
        eprintln!("give a token with --token or ALLOT_TOKEN (`allot dev` prints some)");
    }
    if problem["retryable"].as_bool() == Some(true) {
        eprintln!("this is temporary: send the same command again shortly");
    }
}

/// A JSON argument: inline, or `@file`.
fn json_arg(what: &str, arg: &str) -> anyhow::Result<Value> {
    let text = match arg.strip_prefix('@') {
        Some(file) => std::fs::read_to_string(Path::new(file))
            .with_context(|| format!("cannot read the {what} from {file}"))?,
        None => arg.to_owned(),
    };
    serde_json::from_str(&text).with_context(|| format!("the {what} is not valid JSON"))
}

/// A path segment: ids may hold `/`, which must not split the path.
pub(super) fn segment(id: &str) -> String {
    utf8_percent_encode(id, NON_ALPHANUMERIC).to_string()
}

pub(super) async fn pools(command: PoolsCommand) -> anyhow::Result<bool> {
    match command {
        PoolsCommand::Create {
            id,
            capacity_type,
            config,
            remote,
        } => {
            let body = json!({
                "id": id,
                "capacity_type": capacity_type,
                "config": json_arg("config", &config)?,
            });
            print(
                Client::new(remote)
                    .call(Method::POST, "/v1/pools", Some(body), &[])
                    .await?,
            )
        }
        PoolsCommand::Show { id, remote } => {
            let path = format!("/v1/pools/{}", segment(&id));
            print(
                Client::new(remote)
                    .call(Method::GET, &path, None, &[])
                    .await?,
            )
        }
        PoolsCommand::History {
            id,
            after,
            limit,
            remote,
        } => {
            let path = format!(
                "/v1/pools/{}/events?after={after}&limit={limit}",
                segment(&id)
            );
            print(
                Client::new(remote)
                    .call(Method::GET, &path, None, &[])
                    .await?,
            )
        }
        PoolsCommand::State {
            id,
            seq,
            at,
            remote,
        } => {
            let point = match (seq, at) {
                (Some(seq), _) => format!("seq={seq}"),
                (None, Some(at)) => format!("at={}", segment(&at)),
                (None, None) => bail!("give --seq or --at"),
            };
            let path = format!("/v1/pools/{}/state?{point}", segment(&id));
            print(
                Client::new(remote)
                    .call(Method::GET, &path, None, &[])
                    .await?,
            )
        }
    }
}

pub(super) async fn command(args: CommandArgs) -> anyhow::Result<bool> {
    let body = json!({ "name": args.name, "payload": json_arg("payload", &args.payload)? });
    let path = format!("/v1/pools/{}/commands", segment(&args.pool));
    let headers: Vec<(&str, &str)> = args
        .key
        .as_deref()
        .map(|key| ("idempotency-key", key))
        .into_iter()
        .collect();
    print(
        Client::new(args.remote)
            .call(Method::POST, &path, Some(body), &headers)
            .await?,
    )
}

pub(super) async fn reserve(args: ReserveArgs) -> anyhow::Result<bool> {
    let body = json!({ "id": args.reservation, "request": json_arg("request", &args.request)? });
    let path = format!("/v1/pools/{}/reservations", segment(&args.pool));
    print(
        Client::new(args.remote)
            .call(Method::POST, &path, Some(body), &[])
            .await?,
    )
}

pub(super) async fn reservation_verb(verb: &str, args: ReservationArgs) -> anyhow::Result<bool> {
    let path = format!(
        "/v1/pools/{}/reservations/{}/{verb}",
        segment(&args.pool),
        segment(&args.reservation)
    );
    print(
        Client::new(args.remote)
            .call(Method::POST, &path, None, &[])
            .await?,
    )
}

pub(super) async fn reservation(args: ReservationArgs) -> anyhow::Result<bool> {
    let path = format!(
        "/v1/pools/{}/reservations/{}",
        segment(&args.pool),
        segment(&args.reservation)
    );
    print(
        Client::new(args.remote)
            .call(Method::GET, &path, None, &[])
            .await?,
    )
}

pub(super) async fn grid(args: GridArgs) -> anyhow::Result<bool> {
    let mut query = vec![format!("limit={}", args.limit)];
    for (name, value) in [
        ("capacity_type", &args.capacity_type),
        ("prefix", &args.prefix),
        ("from", &args.from),
        ("to", &args.to),
        ("after", &args.after),
    ] {
        if let Some(value) = value {
            query.push(format!("{name}={}", segment(value)));
        }
    }
    let path = format!("/v1/grid?{}", query.join("&"));
    let answer = Client::new(args.remote)
        .call(Method::GET, &path, None, &[])
        .await?;
    match answer {
        Answer::Ok(grid) if !args.json => {
            print!("{}", table(&grid));
            Ok(true)
        }
        answer => print(answer),
    }
}

/// The grid as a table, one line per cell.
fn table(grid: &Value) -> String {
    let header = [
        "POOL",
        "CELL",
        "TIME (UTC)",
        "UNIT",
        "CAPACITY",
        "USED",
        "HELD",
        "FREE",
        "",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for pool in grid["pools"].as_array().into_iter().flatten() {
        let id = pool["pool"].as_str().unwrap_or("");
        for cell in pool["cells"].as_array().into_iter().flatten() {
            let number = |field: &str| cell[field].as_u64().unwrap_or(0);
            let (capacity, used, held) = (number("capacity"), number("used"), number("held"));
            let note = if used.saturating_add(held) > capacity {
                "OVERBOOKED"
            } else if cell["open"].as_bool() == Some(false) {
                "closed"
            } else if number("free") == 0 {
                "full"
            } else {
                ""
            };
            rows.push(vec![
                id.to_owned(),
                cell["key"].as_str().unwrap_or("").to_owned(),
                span(cell["start_ms"].as_i64(), cell["end_ms"].as_i64()),
                cell["unit"].as_str().unwrap_or("").to_owned(),
                capacity.to_string(),
                used.to_string(),
                held.to_string(),
                number("free").to_string(),
                note.to_owned(),
            ]);
        }
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (text, width))| {
                // Numbers right-aligned, text left-aligned.
                if (4..8).contains(&i) {
                    format!("{text:>width$}")
                } else {
                    format!("{text:<width$}")
                }
            })
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    let pools = grid["pools"].as_array().map_or(0, Vec::len);
    out.push_str(&format!(
        "{pools} pool{}; read model {} ms behind{}\n",
        if pools == 1 { "" } else { "s" },
        grid["read_model"]["lag_ms"].as_u64().unwrap_or(0),
        match grid["next"].as_str() {
            Some(next) => format!("; more with --after {next}"),
            None => String::new(),
        }
    ));
    out
}

/// A time range in UTC, `2026-11-24 08:00–10:00`.
fn span(start: Option<i64>, end: Option<i64>) -> String {
    let format = |ms: i64| {
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
            .ok()
            .map(|t| {
                format!(
                    "{:04}-{:02}-{:02} {:02}:{:02}",
                    t.year(),
                    u8::from(t.month()),
                    t.day(),
                    t.hour(),
                    t.minute()
                )
            })
            .unwrap_or_default()
    };
    match (start, end) {
        (Some(start), Some(end)) => {
            let (from, to) = (format(start), format(end));
            if from.get(..10) == to.get(..10) {
                format!("{from}–{}", to.get(11..).unwrap_or(""))
            } else {
                format!("{from} – {to}")
            }
        }
        (Some(start), None) => format!("from {}", format(start)),
        (None, Some(end)) => format!("until {}", format(end)),
        (None, None) => String::new(),
    }
}
