//! `allot bench` as a smoke test: every scenario, briefly and at low rates,
//! against both targets started by the benchmark itself. Timings are not
//! checked here (that is what the benchmark is for); that it runs, prints
//! its table and passes its own correctness check is.

use std::process::Command;

#[test]
fn the_benchmark_runs_every_scenario_on_both_targets_and_checks_them() {
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
