//! `allot bench` as a smoke test: every scenario, briefly and at low rates,
//! against both targets started by the benchmark itself. Timings are not
//! checked here (that is what the benchmark is for); that it runs, prints
//! its table and passes its own correctness check is.

use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Benchmarks started by these tests share one PostgreSQL folder, so they
/// run one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

#[test]
fn the_benchmark_runs_every_scenario_on_both_targets_and_checks_them() {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let output = Command::new(env!("CARGO_BIN_EXE_allot"))
        .args([
            "bench",
            "--duration",
            "1s",
            "--step",
            "1s",
            "--steps",
            "2",
            "--pools",
            "20",
            "--write-rate",
            "100",
            "--read-rate",
            "300",
            // Grid reads of one pool, and of pages of pools, which page
            // through the ids.
            "--grid-pools",
            "1,5",
            "--mixed-rate",
            "200",
            "--churn",
            "20",
            "--report-every",
            "500ms",
        ])
        // Empty counts as unset: the benchmark starts its own PostgreSQL.
        .env("DATABASE_URL", "")
        .output()
        .expect("allot bench runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "allot bench failed:\n{stdout}\n{stderr}"
    );
    for scenario in ["spread", "hot", "grid ", "grid×5 ", "mixed", "sellout"] {
        for target in ["allot", "baseline"] {
            assert!(
                stdout
                    .lines()
                    .any(|l| l.starts_with(scenario) && l.contains(target)),
                "no {scenario} row for {target}:\n{stdout}"
            );
        }
    }
    for row in [
        "spread rate, p99",
        "hot rate, p99",
        "grid rate, p99",
        "grid×5 rate, p99",
        "mixed rate, p99",
    ] {
        assert!(stdout.contains(row), "no `{row}` comparison:\n{stdout}");
    }
    // Interval rows (`spread …`) have figures of their own, WAL among them.
    let wal_column = |line: &str| line.split_whitespace().nth(13)?.parse::<u64>().ok();
    for target in ["allot", "baseline"] {
        assert!(
            stdout
                .lines()
                .filter(|l| l.starts_with("spread …") && l.contains(target))
                .any(|l| wal_column(l).is_some_and(|bytes| bytes > 0)),
            "no interval row of {target} with the WAL it wrote:\n{stdout}"
        );
    }
    // What each design wrote: every load that reserves writes some WAL.
    for load in ["spread", "hot", "mixed"] {
        let row = format!("{load} WAL per request");
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&row))
            .unwrap_or_else(|| panic!("no `{row}` comparison:\n{stdout}"));
        let figures: Vec<u64> = line[row.len()..]
            .split(" B")
            .filter_map(|f| f.trim().replace(',', "").parse().ok())
            .collect();
        assert!(
            figures.len() == 2 && figures.iter().all(|&bytes| bytes > 0),
            "{line}"
        );
    }
    let flushes: u64 = stdout
        .split_once("disk, during the runs: ")
        .and_then(|(_, rest)| rest.split_once(" flushes"))
        .and_then(|(count, _)| count.parse().ok())
        .unwrap_or_else(|| panic!("no figures of the disk probe:\n{stdout}"));
    assert!(flushes > 0, "{stdout}");
    for target in ["allot", "baseline"] {
        assert!(
            stdout.contains(&format!("{target}: checked")),
            "{target} was not checked:\n{stdout}"
        );
    }
    assert!(!stdout.contains("FAILED"), "{stdout}");
    // Two steps cannot close in on a rate, and the table says so.
    assert!(
        stdout.contains("the sweep of grid×5 on baseline ran out of steps (--steps 2)"),
        "{stdout}"
    );
}

/// Stopped by SIGTERM (as `timeout` or a CI job would stop it), the
/// benchmark takes the servers it started down with it.
#[test]
fn a_signal_stops_the_benchmark_and_the_servers_it_started() {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut bench = Running::start(&[
        "--scenarios",
        "spread",
        "--duration",
        "10m",
        "--pools",
        "20",
        "--write-rate",
        "50",
    ]);
    let deadline = Instant::now() + Duration::from_secs(300);
    let servers = loop {
        let servers = servers_started_by(bench.child.id());
        if servers.len() == 2 {
            break servers;
        }
        assert!(
            Instant::now() < deadline && bench.child.try_wait().unwrap().is_none(),
            "the benchmark did not start its two servers:\n{}",
            bench.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    };

    signal("TERM", bench.child.id());
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = bench.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the benchmark did not stop:\n{}",
            bench.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    // Killed as the benchmark let go of them; their parent gone, they may
    // linger as zombies where nothing reaps orphans.
    let deadline = Instant::now() + Duration::from_secs(10);
    while servers.iter().any(|&pid| runs(pid)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let left: Vec<u32> = servers.into_iter().filter(|&pid| runs(pid)).collect();
    for &pid in &left {
        signal("KILL", pid);
    }
    assert!(left.is_empty(), "servers left running: {left:?}");
    assert!(!status.success());
    let stderr = bench.stderr();
    assert!(stderr.contains("stopped by a signal"), "{stderr}");
}

/// `allot bench` running, its standard error in a file. A test that ends
/// while it runs stops it (TERM, then KILL) and kills its servers.
struct Running {
    child: std::process::Child,
    stderr: std::path::PathBuf,
}

impl Running {
    fn start(args: &[&str]) -> Self {
        let stderr =
            std::env::temp_dir().join(format!("allot-bench-{}.stderr", std::process::id()));
        let child = Command::new(env!("CARGO_BIN_EXE_allot"))
            .arg("bench")
            .args(args)
            .env("DATABASE_URL", "")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("allot bench runs");
        Self { child, stderr }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let servers = servers_started_by(self.child.id());
            signal("TERM", self.child.id());
            let deadline = Instant::now() + Duration::from_secs(10);
            while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
            for pid in servers {
                signal("KILL", pid);
            }
        }
        let _ = std::fs::remove_file(&self.stderr);
    }
}

fn signal(name: &str, pid: u32) {
    let _ = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// The `allot serve` processes whose parent is `parent`.
fn servers_started_by(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            stat(pid).is_some_and(|(_, ppid)| ppid == parent)
                && std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|line| line.split(|&b| b == 0).any(|arg| arg == b"serve"))
        })
        .collect()
}

/// Whether the process exists and is not a zombie.
fn runs(pid: u32) -> bool {
    stat(pid).is_some_and(|(state, _)| state != 'Z')
}

/// A process's state and parent, from `/proc/<pid>/stat`.
fn stat(pid: u32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold anything.
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = fields.next()?.chars().next()?;
    Some((state, fields.next()?.parse().ok()?))
}

#[test]
fn bad_benchmark_arguments_are_refused_before_anything_starts() {
    for (args, expected) in [
        (
            &["--write-rate", "0"][..],
            "--write-rate must be a positive",
        ),
        (&["--duration", "soon"][..], "is not a duration"),
        (&["--grid-pools", "0"][..], "0 is not in 1..=1000"),
        (
            &["--view-row-interval", "2.5ms"][..],
            "finer than the whole milliseconds",
        ),
        (&["--scenarios", "everything"][..], "invalid value"),
        (
            &["--postgres-setting", "shared_buffers"][..],
            "is not NAME=VALUE",
        ),
        (
            &["--postgres-setting", "shared buffers=1GB"][..],
            "is not the name of a PostgreSQL setting",
        ),
        (
            &["--postgres-setting", "synchronous_commit=off"][..],
            "the benchmark measures durable commits",
        ),
        (
            &["--postgres-setting", "port=5432"][..],
            "the benchmark sets it to reach its PostgreSQL",
        ),
        (
            &[
                "--database-url",
                "postgres://127.0.0.1:1/none",
                "--postgres-setting",
                "shared_buffers=1GB",
            ][..],
            "is for the embedded PostgreSQL",
        ),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_allot"))
            .arg("bench")
            .args(args)
            .output()
            .expect("allot bench runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} was accepted");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}
