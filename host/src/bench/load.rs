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

use anyhow::Context as _;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;

/// More requests than this unanswered at once count as errors of the
/// target without being sent: the generator's memory stays bounded.
const MAX_IN_FLIGHT: u64 = 20_000;

/// How long the generator waits for the last answers after the schedule.
const DRAIN: Duration = Duration::from_secs(15);

/// How long one request may take before it counts as a client timeout.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A run kept up with the rate offered when its schedule, and
/// [`ANSWER_ALLOWANCE`], fill at least this share of the time it took: one
/// that took over about 2 % longer fell behind.
const FELL_BEHIND: f64 = 0.98;

/// Seconds the last request may take beyond the schedule in any run.
const ANSWER_ALLOWANCE: f64 = 0.1;

/// Connections each sender opens to each node before a run, as a client
/// with a warm connection pool would have: more are opened when more
/// requests are in flight at once, up to [`MAX_CONNECTIONS`]. Enough that
/// a short stall does not open many mid-run: connections opened in a burst
/// cost some requests about a second at 30,000 requests/s.
const WARM_CONNECTIONS: usize = 128;

/// Most connections each sender keeps to each node. Requests beyond wait
/// for a free one (their latency still counts from when they were due),
/// as behind any client's connection pool: a stalled target is not hit
/// with a storm of new connections.
const MAX_CONNECTIONS: usize = 256;

/// One request to send, to the node the generator picks for it.
pub struct Shot {
    /// GET or POST.
    pub method: Method,
    /// Path and query.
    pub path: String,
    /// A JSON body, for a POST.
    pub body: Option<String>,
    /// The ledger entry counting this request's acceptances, for a reservation.
    pub pool: Option<usize>,
}

/// What to send: `rate` requests a second for `duration`, the `i`-th made
/// by `shot(i)` and sent to node `i % nodes`.
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
    /// For the requests around the load (making pools, probes).
    pub client: reqwest::Client,
    /// The base URLs of the target's nodes (`http://host:port`).
    pub nodes: Arc<[String]>,
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
    /// Cores the load generator kept busy, on average.
    pub generator_cpu: Option<f64>,
    /// Cores the target kept busy, on average, when it runs here.
    pub target_cpu: Option<f64>,
    /// The disk probe's flushes during the run.
    pub disk: Option<super::disk::DiskFigures>,
    /// Bytes of write-ahead log the target's PostgreSQL wrote during the run.
    pub wal_bytes: Option<u64>,
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
            generator_cpu: None,
            target_cpu: None,
            disk: None,
            wal_bytes: None,
        }
    }

    /// Answered requests (successes and refusals) per second.
    pub fn achieved(&self) -> f64 {
        let answered = self.ok + self.rejected.values().sum::<u64>();
        answered as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Whether the target fell behind the rate offered: it took over 2 %
    /// longer than the schedule to answer what the run sent, so what it
    /// answered late waited in a queue that grew as long as the run lasted.
    pub fn fell_behind(&self, scheduled: Duration) -> bool {
        self.elapsed.as_secs_f64() * FELL_BEHIND > scheduled.as_secs_f64() + ANSWER_ALLOWANCE
    }

    /// Errors (not refusals) among the requests sent.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Latency at a quantile, in ms.
    pub fn ms(&self, quantile: f64) -> f64 {
        self.latency.value_at_quantile(quantile) as f64 / 1e3
    }

    /// Write-ahead log per answered request, in bytes.
    pub fn wal_per_request(&self) -> Option<f64> {
        let answered = self.ok + self.rejected.values().sum::<u64>();
        Some(self.wal_bytes? as f64 / answered.max(1) as f64)
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
///
/// The requests are dealt to `threads` sender threads in turn. Each sender
/// runs a single-threaded runtime that wakes when its next request is due,
/// with its own keep-alive HTTP/1.1 connections, so a request is scheduled,
/// written, answered and recorded on one thread: the generator costs the
/// machine little besides the syscalls, and leaves the cores to the
/// systems it measures.
pub async fn run(
    caller: &Caller,
    plan: Plan,
    threads: usize,
    mut interval: impl AsyncFnMut(&mut Report),
) -> anyhow::Result<Report> {
    let total = (plan.rate * plan.duration.as_secs_f64()).round() as u64;
    let reports = Reports {
        whole: Arc::new(Mutex::new(Report::new(plan.rate))),
        recent: plan
            .report_every
            .map(|_| Arc::new(Mutex::new(Report::new(plan.rate)))),
    };
    let in_flight = Arc::new(AtomicU64::new(0));
    let cpu_before = cpu_seconds(std::process::id());
    let senders = (0..threads.max(1))
        .map(|_| Sender::start(caller, reports.clone(), in_flight.clone()))
        .collect::<anyhow::Result<Vec<_>>>()?;
    for sender in &senders {
        sender.warm_up().await?;
    }
    let start = Instant::now() + Duration::from_millis(5);
    let schedule = Arc::new(Schedule {
        start,
        rate: plan.rate,
        total,
        every: senders.len() as u64,
        nodes: caller.nodes.len() as u64,
        shot: plan.shot.clone(),
    });
    let mut pacers: Vec<_> = senders
        .iter()
        .enumerate()
        .map(|(k, sender)| {
            let (schedule, shared) = (schedule.clone(), sender.shared.clone());
            sender.runtime.spawn(pace(schedule, k as u64, shared))
        })
        .collect();

    let paced = async {
        for pacer in &mut pacers {
            pacer.await??;
        }
        anyhow::Ok(())
    };
    let mut interval_start = start;
    // The figures since the last interval's, as an interval of their own.
    let mut take_interval = |now: Instant| {
        let recent = reports.recent.as_ref()?;
        let mut figures = std::mem::replace(&mut *recent.lock().unwrap(), Report::new(plan.rate));
        figures.elapsed = now.saturating_duration_since(interval_start);
        interval_start = now;
        Some(figures)
    };
    match plan.report_every {
        Some(every) => {
            let mut tick =
                tokio::time::interval_at(tokio::time::Instant::from_std(start) + every, every);
            tokio::pin!(paced);
            loop {
                tokio::select! {
                    paced = &mut paced => break paced?,
                    now = tick.tick() => {
                        if let Some(mut figures) = take_interval(now.into_std()) {
                            interval(&mut figures).await;
                        }
                    }
                }
            }
        }
        None => paced.await?,
    }
    let drained_by = Instant::now() + DRAIN;
    while in_flight.load(Ordering::Relaxed) > 0 && Instant::now() < drained_by {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The run ends with its last answer, not with the next interval. What
    // came after the last interval is one of its own, unless it is only
    // the last answers of one that ended as the run did.
    let elapsed = start.elapsed();
    if let (Some(every), Some(mut figures)) = (plan.report_every, take_interval(Instant::now()))
        && figures.elapsed >= every / 10
    {
        interval(&mut figures).await;
    }
    let unanswered = in_flight.load(Ordering::Relaxed);
    // What is still in flight is dropped with the senders' runtimes.
    let stopped = tokio::task::spawn_blocking(move || senders.into_iter().for_each(Sender::stop));
    let _ = stopped.await;
    let mut report = std::mem::replace(&mut *reports.whole.lock().unwrap(), Report::new(plan.rate));
    if unanswered > 0 {
        *report.errors.entry("unanswered".into()).or_default() += unanswered;
    }
    report.sent = total;
    report.elapsed = elapsed;
    report.generator_cpu = cores(cpu_before, std::process::id(), elapsed);
    Ok(report)
}

/// When each request is due, and what it is.
struct Schedule {
    start: Instant,
    rate: f64,
    total: u64,
    /// Sender `k` sends requests `k`, `k + every`, `k + 2 every`, ….
    every: u64,
    nodes: u64,
    shot: Arc<dyn Fn(u64) -> Shot + Send + Sync>,
}

impl Schedule {
    fn due(&self, i: u64) -> Instant {
        self.start + Duration::from_secs_f64(i as f64 / self.rate)
    }
}

/// Most requests sent in one go before the answers get a turn.
const BURST: usize = 64;

/// Sends sender `k`'s share of the schedule, each request when it is due,
/// whether or not earlier ones were answered.
async fn pace(schedule: Arc<Schedule>, k: u64, shared: Arc<Shared>) -> anyhow::Result<()> {
    let mut alarm = Alarm::new()?;
    let mut i = k;
    while i < schedule.total {
        let now = Instant::now();
        let due = schedule.due(i);
        if due > now {
            alarm.sleep(due - now).await?;
            continue;
        }
        // Everything due by now goes out at once, a burst at a time.
        let mut sent = 0;
        while i < schedule.total && sent < BURST {
            let due = schedule.due(i);
            if due > now {
                break;
            }
            let shot = (schedule.shot)(i);
            if shared.in_flight.load(Ordering::Relaxed) >= MAX_IN_FLIGHT {
                let answer = Answer::Error(format!("not sent: {MAX_IN_FLIGHT} in flight"));
                shared.reports.whole.lock().unwrap().record(0, answer);
            } else {
                shared.in_flight.fetch_add(1, Ordering::Relaxed);
                let node = (i % schedule.nodes) as usize;
                tokio::spawn(fire(shared.clone(), node, shot, due));
            }
            i += schedule.every;
            sent += 1;
        }
        tokio::task::yield_now().await;
    }
    Ok(())
}

/// Wakes its thread's runtime after a delay, to the microsecond on Linux:
/// tokio's own timers tick in milliseconds, which would send a
/// millisecond's requests in one burst and count the wait against the target.
#[cfg(target_os = "linux")]
struct Alarm(tokio::io::unix::AsyncFd<timerfd::TimerFd>);

#[cfg(target_os = "linux")]
impl Alarm {
    fn new() -> std::io::Result<Self> {
        use timerfd::{ClockId, TimerFd};
        let timer = TimerFd::new_custom(ClockId::Monotonic, true, true)?;
        // Sound, which the deprecation cannot know: the descriptor is owned
        // by the TimerFd, which the AsyncFd owns until both are dropped.
        #[allow(deprecated)]
        let registered =
            tokio::io::unix::AsyncFd::with_interest(timer, tokio::io::Interest::READABLE)?;
        Ok(Self(registered))
    }

    async fn sleep(&mut self, delay: Duration) -> std::io::Result<()> {
        use timerfd::{SetTimeFlags, TimerState};
        self.0
            .get_mut()
            .set_state(TimerState::Oneshot(delay), SetTimeFlags::Default);
        loop {
            let mut ready = self.0.readable_mut().await?;
            if ready.get_inner().read() > 0 {
                return Ok(());
            }
            ready.clear_ready();
        }
    }
}

/// Elsewhere, tokio's millisecond timer: requests go out in bursts, and the
/// figures carry up to a millisecond of the generator's own lateness.
#[cfg(not(target_os = "linux"))]
struct Alarm;

#[cfg(not(target_os = "linux"))]
impl Alarm {
    fn new() -> std::io::Result<Self> {
        Ok(Self)
    }

    async fn sleep(&mut self, delay: Duration) -> std::io::Result<()> {
        tokio::time::sleep(delay).await;
        Ok(())
    }
}

/// Where answers are recorded: the whole run, and the current interval.
#[derive(Clone)]
struct Reports {
    whole: Arc<Mutex<Report>>,
    recent: Option<Arc<Mutex<Report>>>,
}

/// A sender thread: a single-threaded runtime that writes requests and
/// reads their answers.
struct Sender {
    runtime: tokio::runtime::Handle,
    shared: Arc<Shared>,
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

/// What a sender's requests share.
struct Shared {
    nodes: Vec<Node>,
    auth: HeaderValue,
    ledger: Arc<Ledger>,
    reports: Reports,
    in_flight: Arc<AtomicU64>,
}

/// One node of the target, with this sender's idle connections to it.
struct Node {
    authority: String,
    host: HeaderValue,
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
    /// A permit per connection that may be in use.
    slots: tokio::sync::Semaphore,
}

impl Sender {
    fn start(caller: &Caller, reports: Reports, in_flight: Arc<AtomicU64>) -> anyhow::Result<Self> {
        let nodes = caller
            .nodes
            .iter()
            .map(|url| {
                let authority = url
                    .strip_prefix("http://")
                    .ok_or_else(|| {
                        anyhow::anyhow!("the load generator speaks plain HTTP: `{url}`")
                    })?
                    .trim_end_matches('/');
                Ok(Node {
                    authority: authority.to_owned(),
                    host: HeaderValue::from_str(authority)?,
                    idle: Mutex::new(Vec::new()),
                    slots: tokio::sync::Semaphore::new(MAX_CONNECTIONS),
                })
            })
            .collect::<anyhow::Result<_>>()?;
        let shared = Arc::new(Shared {
            nodes,
            auth: HeaderValue::from_str(&format!("Bearer {}", caller.token))?,
            ledger: caller.ledger.clone(),
            reports,
            in_flight,
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("bench-send".into())
            .spawn(move || {
                let _ = runtime.block_on(stopped);
            })?;
        Ok(Self {
            runtime: handle,
            shared,
            stop,
            thread,
        })
    }

    /// Opens the warm connections.
    async fn warm_up(&self) -> anyhow::Result<()> {
        let shared = self.shared.clone();
        let warm = self.runtime.spawn(async move {
            for node in &shared.nodes {
                for _ in 0..WARM_CONNECTIONS {
                    let connection = connect(&node.authority)
                        .await
                        .with_context(|| format!("connecting to {}", node.authority))?;
                    node.idle.lock().unwrap().push(connection);
                }
            }
            anyhow::Ok(())
        });
        warm.await?
    }

    fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

/// Sends one request, records its answer, and keeps the connection for
/// the next one when it is still good.
async fn fire(shared: Arc<Shared>, node: usize, shot: Shot, due: Instant) {
    let pool = shot.pool;
    let sent = async {
        let slot = shared.nodes[node].slots.acquire().await;
        let answer = send(&shared, node, shot).await;
        (slot, answer)
    };
    let (slot, answer) = match tokio::time::timeout(REQUEST_TIMEOUT, sent).await {
        Ok((slot, answer)) => (slot.ok(), Ok(answer)),
        Err(elapsed) => (None, Err(elapsed)),
    };
    let (answer, connection) = match answer {
        Ok(Ok((status, body, connection))) => {
            let answer = if status.is_success() {
                if let Some(pool) = pool {
                    shared.ledger.accept(pool);
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
            };
            (answer, Some(connection))
        }
        Ok(Err(what)) => (Answer::Error(what.into()), None),
        Err(_) => (Answer::Error("client timeout".into()), None),
    };
    let micros = due.elapsed().as_micros() as u64;
    if let Some(recent) = &shared.reports.recent {
        recent.lock().unwrap().record(micros, answer.clone());
    }
    shared.reports.whole.lock().unwrap().record(micros, answer);
    shared.in_flight.fetch_sub(1, Ordering::Relaxed);
    if let Some(mut connection) = connection
        && connection.ready().await.is_ok()
    {
        shared.nodes[node].idle.lock().unwrap().push(connection);
    }
    drop(slot);
}

/// Writes a request on an idle connection to the node, or a new one, and
/// reads the whole answer: its status, and a problem's body.
async fn send(
    shared: &Shared,
    node: usize,
    shot: Shot,
) -> Result<(StatusCode, Bytes, SendRequest<Full<Bytes>>), &'static str> {
    let node = &shared.nodes[node];
    let idle = loop {
        match node.idle.lock().unwrap().pop() {
            Some(connection) if connection.is_closed() => continue,
            found => break found,
        }
    };
    let mut connection = match idle {
        Some(connection) => connection,
        None => connect(&node.authority)
            .await
            .map_err(|_| "cannot connect")?,
    };
    let mut request = Request::builder()
        .method(shot.method)
        .uri(shot.path)
        .header(HOST, node.host.clone())
        .header(AUTHORIZATION, shared.auth.clone());
    if shot.body.is_some() {
        request = request.header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    let request = request
        .body(Full::new(shot.body.map(Bytes::from).unwrap_or_default()))
        .map_err(|_| "bad request")?;
    let response = connection
        .send_request(request)
        .await
        .map_err(|_| "transport")?;
    let status = response.status();
    let mut body = response.into_body();
    // Only a problem's body is read: a success's is let go frame by frame,
    // rather than copied together.
    let body = if status.is_success() {
        while let Some(frame) = body.frame().await {
            frame.map_err(|_| "transport")?;
        }
        Bytes::new()
    } else {
        body.collect().await.map_err(|_| "transport")?.to_bytes()
    };
    Ok((status, body, connection))
}

/// Opens a keep-alive connection; its I/O runs as a task of this sender.
async fn connect(authority: &str) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(authority).await?;
    stream.set_nodelay(true)?;
    let (connection, io) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(io);
    Ok(connection)
}

/// CPU time a process has used so far, in seconds, from `/proc`.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name (which may hold spaces): user
    // and system time are the 12th and 13th, in ticks of 1/100 s.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// Cores a process kept busy since it had used `before` seconds of CPU.
pub fn cores(before: Option<f64>, pid: u32, elapsed: Duration) -> Option<f64> {
    Some((cpu_seconds(pid)? - before?) / elapsed.as_secs_f64().max(1e-9))
}

/// A well-spread pseudo-random number from `i` (splitmix64), to pick pools
/// without a shared random generator.
pub fn spread(i: u64) -> u64 {
    let mut z = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn took(seconds: f64) -> Report {
        let mut report = Report::new(10_000.0);
        report.elapsed = Duration::from_secs_f64(seconds);
        report
    }

    /// A run that ends with its schedule, or a slow last answer after it,
    /// kept up; one stretched by a queue did not.
    #[test]
    fn a_run_fell_behind_when_its_answers_took_longer_than_its_schedule() {
        let ten = Duration::from_secs(10);
        assert!(!took(10.005).fell_behind(ten));
        assert!(!took(10.25).fell_behind(ten));
        assert!(took(10.4).fell_behind(ten));
        assert!(took(10.8).fell_behind(ten));
        // A one-second run may end with one answer a tenth of a second late.
        assert!(!took(1.1).fell_behind(Duration::from_secs(1)));
        assert!(took(1.2).fell_behind(Duration::from_secs(1)));
    }
}
