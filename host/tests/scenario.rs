//! The examples as a new user runs them: `allot serve` from a config file,
//! driven by `examples/scenario.sh` through the `allot` CLI.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A free loopback port (bound and released; the node takes it right after).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The scenario script runs end to end against a node started with `allot serve`, which stops cleanly on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_script_runs_against_allot_serve() {
    let database = common::database().await;
    let plugin = common::component("allot-logistics");
    let dir = std::env::temp_dir().join(format!("allot-scenario-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let config = dir.join("allot.toml");
    let mut file = std::fs::File::create(&config).unwrap();
    write!(
        file,
        r#"
listen = "127.0.0.1:{port}"
database_url = "{database}"
plugins = ["{plugin}"]

[[tokens]]
name = "shop"
role = "checkout"
token = "scenario-checkout-token"

[[tokens]]
name = "planning"
role = "planner"
token = "scenario-planner-token"
"#,
        plugin = plugin.display()
    )
    .unwrap();
    drop(file);

    let allot = env!("CARGO_BIN_EXE_allot");
    let mut node = Command::new(allot)
        .args(["serve", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .spawn()
        .expect("allot serve starts");
    let url = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    loop {
        let ready = reqwest::get(format!("{url}/readyz")).await;
        if ready.is_ok_and(|r| r.status().is_success()) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "allot serve did not become ready"
        );
        assert!(node.try_wait().unwrap().is_none(), "allot serve exited");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let script = allot_host::dev::workspace_root().join("examples/scenario.sh");
    let output = Command::new("bash")
        .arg(&script)
        .env("ALLOT", allot)
        .env("ALLOT_URL", &url)
        .env("ALLOT_CHECKOUT_TOKEN", "scenario-checkout-token")
        .env("ALLOT_PLANNER_TOKEN", "scenario-planner-token")
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("\"status\": \"reserved\""), "{stdout}");
    assert!(stdout.contains("Scenario done"), "{stdout}");
    assert!(stderr.contains("slot_full"), "{stderr}");
    assert!(stderr.contains("403 Forbidden"), "{stderr}");
    assert!(
        stdout.contains("\"actor\": \"planning (planner)\""),
        "{stdout}"
    );

    let killed = Command::new("kill")
        .args(["-TERM", &node.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = node.wait().unwrap();
    assert!(status.success(), "allot serve exited with {status}");
    std::fs::remove_dir_all(&dir).ok();
}

/// `ALLOT_DATABASE_URL=` (set, but empty) means no URL, as a shell means it:
/// the node names what is missing instead of failing to parse "".
#[test]
fn an_empty_database_url_in_the_environment_counts_as_unset() {
    let output = Command::new(env!("CARGO_BIN_EXE_allot"))
        .arg("serve")
        .env("ALLOT_DATABASE_URL", "")
        .current_dir(std::env::temp_dir())
        .output()
        .expect("allot serve runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "started without a database");
    assert!(
        stderr.contains("no database: set `database_url`"),
        "unexpected error:\n{stderr}"
    );
}
