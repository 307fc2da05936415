//! An open-loop load generator over HTTP.
//!
//! Requests are sent on a fixed schedule by a thread of their own, whether
//! or not earlier ones were answered, and each latency is measured from
//! when its request was due: a target that falls behind shows its queue in
//! the figures instead of slowing the generator down (coordinated omission).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use reqwest::{Client, Method, StatusCode};

/// More requests than this unanswered at once count as errors of the
/// target without being sent: the generator's memory stays bounded.
const MAX_IN_FLIGHT: u64 = 20_000;

/// How long the generator waits for the last answers after the schedule.
const DRAIN: Duration = Duration::from_secs(15);

/// One request to send.
pub struct Shot {
    /// GET or POST.
    pub method: Method,
    /// The whole URL.
    pub url: String,
    /// A JSON body, for a POST.
    pub body: Option<String>,
    /// The ledger entry counting this request's acceptances, for a reservation.
    pub pool: Option<usize>,
}

/// What to send: `rate` requests a second for `duration`, the `i`-th made
/// by `shot(i)`.
pub struct Plan {
    /// Requests per second.
    pub rate: f64,
    /// For how long.
    pub duration: Duration,
    /// Makes the i-th request.
    pub shot: Arc<dyn Fn(u64) -> Shot + Send + Sync>,
    /// Print a line of figures this often, for long runs.
    pub report_every: Option<Duration>,
}

/// Acceptances per pool, as the clients saw them, for the check against
/// what the target recorded.
#[derive(Default)]
pub struct Ledger {
    accepted: Vec<AtomicU64>,
}

impl Ledger {
    /// A ledger of `pools` entries.
    pub fn new(pools: usize) -> Self {
        Self {
            accepted: (0..pools).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Reservations accepted in pool `i`.
    pub fn accepted(&self, i: usize) -> u64 {
        self.accepted[i].load(Ordering::Relaxed)
    }

    fn accept(&self, i: usize) {
        self.accepted[i].fetch_add(1, Ordering::Relaxed);
    }
}

/// Where to send, as whom.
#[derive(Clone)]
pub struct Caller {
    /// The HTTP client (its connection pool is shared by all requests).
    pub client: Client,
    /// The bearer token.
    pub token: Arc<str>,
    /// Counts acceptances.
    pub ledger: Arc<Ledger>,
}

/// The figures of a run.
pub struct Report {
    /// Requests per second asked for.
    pub offered: f64,
    /// Requests sent (or refused for too many in flight).
    pub sent: u64,
    /// From the first request's due time to the last answer.
    pub elapsed: Duration,
    /// Latencies in µs of every answered request.
    pub latency: Histogram<u64>,
    /// Requests answered with success.
    pub ok: u64,
    /// Requests refused by the rules (409), by code: business answers.
    pub rejected: BTreeMap<String, u64>,
    /// Everything else, by status and code, or by transport failure.
    pub errors: BTreeMap<String, u64>,
}

impl Report {
    fn new(offered: f64) -> Self {
        Self {
            offered,
            sent: 0,
            elapsed: Duration::ZERO,
            latency: histogram(),
            ok: 0,
            rejected: BTreeMap::new(),
            errors: BTreeMap::new(),
        }
    }

    /// Answered requests (successes and refusals) per second.
    pub fn achieved(&self) -> f64 {
        let answered = self.ok + self.rejected.values().sum::<u64>();
        answered as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Errors (not refusals) among the requests sent.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Latency at a quantile, in ms.
    pub fn ms(&self, quantile: f64) -> f64 {
        self.latency.value_at_quantile(quantile) as f64 / 1e3
    }

    /// The slowest latency, in ms.
    pub fn max_ms(&self) -> f64 {
        self.latency.max() as f64 / 1e3
    }

    fn record(&mut self, micros: u64, answer: Answer) {
        self.latency.saturating_record(micros.max(1));
        match answer {
            Answer::Ok => self.ok += 1,
            Answer::Rejected(code) => *self.rejected.entry(code).or_default() += 1,
            Answer::Error(what) => *self.errors.entry(what).or_default() += 1,
        }
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid histogram bounds")
}

#[derive(Clone)]
enum Answer {
    Ok,
    Rejected(String),
    Error(String),
}

/// Runs a plan against a target and reports. `interval` is called with
/// each interval's figures when the plan asks for them.
pub async fn run(caller: &Caller, plan: Plan, mut interval: impl FnMut(&Report)) -> Report {
    let total = (plan.rate * plan.duration.as_secs_f64()).round() as u64;
    let whole = Arc::new(Mutex::new(Report::new(plan.rate)));
    let recent = plan
        .report_every
        .map(|_| Arc::new(Mutex::new(Report::new(plan.rate))));
    let in_flight = Arc::new(AtomicU64::new(0));
    let start = Instant::now() + Duration::from_millis(5);

    let scheduler = {
        let (caller, whole, recent, in_flight) = (
            caller.clone(),
            whole.clone(),
            recent.clone(),
            in_flight.clone(),
        );
        let runtime = tokio::runtime::Handle::current();
        let (rate, shot) = (plan.rate, plan.shot.clone());
        std::thread::spawn(move || {
            let due = |i: u64| start + Duration::from_secs_f64(i as f64 / rate);
            let mut i = 0;
            while i < total {
                let now = Instant::now();
                if due(i) > now {
                    std::thread::sleep(due(i) - now);
                    continue;
                }
                // Everything due by now goes out at once.
                while i < total && due(i) <= now {
                    let shot = shot(i);
                    if in_flight.load(Ordering::Relaxed) >= MAX_IN_FLIGHT {
                        let answer = Answer::Error(format!("not sent: {MAX_IN_FLIGHT} in flight"));
                        whole.lock().unwrap().record(0, answer);
                    } else {
                        in_flight.fetch_add(1, Ordering::Relaxed);
                        runtime.spawn(fire(
                            caller.clone(),
                            shot,
                            due(i),
                            (whole.clone(), recent.clone()),
                            in_flight.clone(),
                        ));
                    }
                    i += 1;
                }
            }
        })
    };

    if let (Some(every), Some(recent)) = (plan.report_every, &recent) {
        let mut tick =
            tokio::time::interval_at(tokio::time::Instant::from_std(start) + every, every);
        while !scheduler.is_finished() {
            tick.tick().await;
            let mut figures =
                std::mem::replace(&mut *recent.lock().unwrap(), Report::new(plan.rate));
            figures.elapsed = every;
            interval(&figures);
        }
    }
    let _ = tokio::task::spawn_blocking(move || scheduler.join()).await;
    let drained_by = Instant::now() + DRAIN;
    while in_flight.load(Ordering::Relaxed) > 0 && Instant::now() < drained_by {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut report = std::mem::replace(&mut *whole.lock().unwrap(), Report::new(plan.rate));
    let unanswered = in_flight.load(Ordering::Relaxed);
    if unanswered > 0 {
        *report.errors.entry("unanswered".into()).or_default() += unanswered;
    }
    report.sent = total;
    report.elapsed = start.elapsed();
    report
}

/// Sends one request and records its answer in each report.
async fn fire(
    caller: Caller,
    shot: Shot,
    due: Instant,
    reports: (Arc<Mutex<Report>>, Option<Arc<Mutex<Report>>>),
    in_flight: Arc<AtomicU64>,
) {
    let mut request = caller
        .client
        .request(shot.method, &shot.url)
        .bearer_auth(&*caller.token);
    if let Some(body) = shot.body {
        request = request
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
    }
    let answer = match request.send().await {
        Ok(response) => {
            let status = response.status();
            // Read to the end, so that the connection is reused.
            let body = response.bytes().await.unwrap_or_default();
            if status.is_success() {
                if let Some(pool) = shot.pool {
                    caller.ledger.accept(pool);
                }
                Answer::Ok
            } else {
                let code = serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|p| p["code"].as_str().map(str::to_owned))
                    .unwrap_or_default();
                if status == StatusCode::CONFLICT {
                    Answer::Rejected(code)
                } else {
                    Answer::Error(format!("{} {code}", status.as_u16()))
                }
            }
        }
        Err(e) if e.is_timeout() => Answer::Error("client timeout".into()),
        Err(e) if e.is_connect() => Answer::Error("cannot connect".into()),
        Err(_) => Answer::Error("transport".into()),
    };
    let micros = due.elapsed().as_micros() as u64;
    let (whole, recent) = reports;
    if let Some(recent) = recent {
        recent.lock().unwrap().record(micros, answer.clone());
    }
    whole.lock().unwrap().record(micros, answer);
    in_flight.fetch_sub(1, Ordering::Relaxed);
}

/// A well-spread pseudo-random number from `i` (splitmix64), to pick pools
/// without a shared random generator.
pub fn spread(i: u64) -> u64 {
    let mut z = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
