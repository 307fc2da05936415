//! The embedded PostgreSQL: a private server started from the machine's own
//! binaries when no database URL is configured.
//!
//! It lives in a data folder of ours, is initialised once and reused on every
//! later start, listens on loopback only, and stops with the host. PostgreSQL
//! refuses to run as root, so under root it runs as the `postgres` user (or
//! `nobody`), which then owns the folder.

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// How long the server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// What can go wrong starting the embedded PostgreSQL.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No server binaries on this machine.
    #[error(
        "no PostgreSQL server binaries found (looked for `postgres` and `initdb` via `pg_config --bindir` \
         and in /usr/lib/postgresql/*/bin); install the PostgreSQL server package, or give a database URL"
    )]
    NoBinaries,
    /// The binaries named exist but lack a tool.
    #[error("{0} has no `{1}`: is the PostgreSQL server package installed?")]
    MissingTool(PathBuf, &'static str),
    /// The data folder cannot be used.
    #[error("data folder {path}: {reason}")]
    DataDir {
        /// The folder.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A PostgreSQL tool failed.
    #[error("`{tool}` failed: {output}")]
    Tool {
        /// The tool.
        tool: String,
        /// What it said.
        output: String,
    },
    /// The server did not come up.
    #[error("PostgreSQL did not start: {0}")]
    Start(String),
}

/// Results of the launcher.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A running private PostgreSQL. Stops (fast shutdown) when dropped, and also
/// when this process dies without dropping it.
pub struct EmbeddedPostgres {
    child: Child,
    /// Closing this tells the server's guard shell to stop the server.
    guard: Option<ChildStdin>,
    port: u16,
    dir: PathBuf,
    /// Where its binaries are, and the settings of this start, for a
    /// restart.
    bin_dir: PathBuf,
    settings: Vec<(String, String)>,
}

impl EmbeddedPostgres {
    /// Starts PostgreSQL with its data in `dir` (created and initialised on
    /// first use), using the binaries found on this machine.
    pub fn start(dir: &Path) -> Result<Self> {
        Self::start_with(dir, &find_binaries()?)
    }

    /// Starts PostgreSQL as [`start`](Self::start) does, with server
    /// settings (name, value) on top of its own for this start only.
    pub fn start_with_settings(dir: &Path, settings: &[(String, String)]) -> Result<Self> {
        Self::launch(dir, &find_binaries()?, settings, None)
    }

    /// Starts PostgreSQL from the binaries in `bin_dir`.
    pub fn start_with(dir: &Path, bin_dir: &Path) -> Result<Self> {
        Self::launch(dir, bin_dir, &[], None)
    }

    /// Stops the server with a fast shutdown (every connection ended, open
    /// transactions rolled back) and starts it again on the same port, data
    /// and settings, as an operator's restart does.
    pub fn restart(&mut self) -> Result<()> {
        drop(self.guard.take());
        let _ = self.child.wait();
        let fresh = Self::launch(&self.dir, &self.bin_dir, &self.settings, Some(self.port))?;
        // The stopped server's drop only finds it stopped.
        drop(std::mem::replace(self, fresh));
        Ok(())
    }

    fn launch(
        dir: &Path,
        bin_dir: &Path,
        settings: &[(String, String)],
        port: Option<u16>,
    ) -> Result<Self> {
        for tool in ["postgres", "initdb"] {
            if !bin_dir.join(tool).is_file() {
                return Err(Error::MissingTool(bin_dir.to_owned(), tool));
            }
        }
        // The server runs in its data folder: a relative path would no
        // longer lead there.
        let dir = &std::path::absolute(dir).map_err(|e| data_dir_error(dir, e.to_string()))?;
        let user = RunAs::current();
        let data = dir.join("data");
        let sockets = dir.join("run");
        for path in [dir, &sockets] {
            fs::create_dir_all(path).map_err(|e| data_dir_error(path, e.to_string()))?;
            user.hand_over(path)?;
        }
        if !data.join("PG_VERSION").is_file() {
            tracing::info!(path = %data.display(), "initialising the embedded PostgreSQL");
            user.run(
                Command::new(bin_dir.join("initdb"))
                    .arg("--pgdata")
                    .arg(&data)
                    .args([
                        "--username",
                        "allot",
                        "--auth",
                        "trust",
                        "--encoding",
                        "UTF8",
                        "--no-instructions",
                    ]),
            )?;
        }
        wait_for_previous_server(&data)?;
        let port = match port {
            Some(port) => port,
            None => free_port()?,
        };
        let log_path = dir.join("postgres.log");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| data_dir_error(&log_path, e.to_string()))?;
        let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);

        // A guard shell starts the server and watches its own standard input:
        // when we close it, or die, it asks the server for a fast shutdown. So
        // no server outlives the host, however the host ends.
        // The shell itself waits on the server, so it exits when the server
        // does. Background jobs of a script read /dev/null unless told
        // otherwise, hence the watcher's explicit copy of standard input.
        let script = r#"exec 3<&0
pg="$1"; shift
"$pg" "$@" </dev/null 3<&- & pid=$!
(read -r _ <&3; kill -INT "$pid" 2>/dev/null) &
exec 3<&-
wait "$pid""#;
        let mut command = user.command("sh");
        command
            .args(["-c", script, "allot-postgres"])
            .arg(bin_dir.join("postgres"))
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", sockets.display()))
            .args(["-c", "max_connections=200"]);
        for (name, value) in settings {
            command.arg("-c").arg(format!("{name}={value}"));
        }
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(log)
            // Its own process group: a Ctrl-C at the terminal reaches the
            // host, which then stops in order, and not the server under it.
            .process_group(0);
        let mut child = command
            .spawn()
            .map_err(|e| Error::Start(format!("cannot run the server: {e}")))?;
        let guard = child.stdin.take();
        let mut server = Self {
            child,
            guard,
            port,
            dir: dir.to_owned(),
            bin_dir: bin_dir.to_owned(),
            settings: settings.to_vec(),
        };
        server.wait_until_ready(&log_path, log_start)?;
        tracing::info!(port, path = %dir.display(), "embedded PostgreSQL is up");
        Ok(server)
    }

    /// The loopback port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of a database on this server.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://allot@127.0.0.1:{}/{database}", self.port)
    }

    /// The data folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn wait_until_ready(&mut self, log_path: &Path, log_start: u64) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if log_says_ready(log_path, log_start)
                && std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            {
                return Ok(());
            }
            let exited = matches!(self.child.try_wait(), Ok(Some(_)));
            if exited || Instant::now() > deadline {
                let why = if exited {
                    "it exited"
                } else {
                    "it is not accepting connections"
                };
                return Err(Error::Start(format!(
                    "{why} (port {}); its log says:\n{}",
                    self.port,
                    log_tail(log_path, log_start)
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for EmbeddedPostgres {
    fn drop(&mut self) {
        drop(self.guard.take());
        match self.child.wait() {
            Ok(_) => tracing::info!(port = self.port, "embedded PostgreSQL stopped"),
            Err(e) => tracing::warn!(port = self.port, "waiting for the embedded PostgreSQL: {e}"),
        }
    }
}

/// A server of an earlier run on the same folder may still be shutting
/// down (its checkpoint takes a moment); give it time to finish. One that
/// keeps running belongs to someone else.
fn wait_for_previous_server(data: &Path) -> Result<()> {
    let pid_file = data.join("postmaster.pid");
    let Some(pid) = fs::read_to_string(&pid_file)
        .ok()
        .and_then(|text| text.lines().next()?.trim().parse::<u32>().ok())
    else {
        return Ok(());
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while Path::new(&format!("/proc/{pid}")).exists() && pid_file.exists() {
        if Instant::now() > deadline {
            return Err(data_dir_error(
                data,
                format!(
                    "another PostgreSQL (pid {pid}) is running on it; stop it or use another folder"
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Finds the directory of the server binaries.
pub fn find_binaries() -> Result<PathBuf> {
    if let Ok(output) = Command::new("pg_config").arg("--bindir").output()
        && output.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        if dir.join("postgres").is_file() {
            return Ok(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("postgres").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).ok_or(Error::NoBinaries)
}

/// Who the server runs as: ourselves, or an unprivileged user when we are root.
enum RunAs {
    Me,
    User(String, u32, u32),
}

impl RunAs {
    fn current() -> Self {
        let root = fs::metadata("/proc/self")
            .map(|m| m.uid() == 0)
            .unwrap_or(false);
        if !root {
            return RunAs::Me;
        }
        for name in ["postgres", "nobody"] {
            if let Some((uid, gid)) = lookup_user(name) {
                return RunAs::User(name.into(), uid, gid);
            }
        }
        RunAs::Me
    }

    fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        match self {
            RunAs::Me => Command::new(program),
            RunAs::User(name, ..) => {
                let mut command = Command::new("runuser");
                command.args(["-u", name, "--"]).arg(program);
                command
            }
        }
    }

    fn run(&self, command: &mut Command) -> Result<()> {
        let mut full = self.command(command.get_program());
        full.args(command.get_args());
        let tool = command.get_program().to_string_lossy().into_owned();
        let output = full
            .stdin(Stdio::null())
            .output()
            .map_err(|e| Error::Tool {
                tool: tool.clone(),
                output: e.to_string(),
            })?;
        if output.status.success() {
            Ok(())
        } else {
            Err(Error::Tool {
                tool,
                output: String::from_utf8_lossy(&output.stderr).into_owned(),
            })
        }
    }

    /// Gives a folder we created to the server's user.
    fn hand_over(&self, path: &Path) -> Result<()> {
        if let RunAs::User(name, uid, gid) = self {
            std::os::unix::fs::chown(path, Some(*uid), Some(*gid))
                .map_err(|e| data_dir_error(path, format!("cannot hand it to user {name}: {e}")))?;
            let reachable = self
                .command("test")
                .args(["-w"])
                .arg(path)
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if !reachable {
                return Err(data_dir_error(
                    path,
                    format!(
                        "PostgreSQL runs as user {name}, who cannot reach it; choose a folder outside private home directories"
                    ),
                ));
            }
        }
        Ok(())
    }
}

fn lookup_user(name: &str) -> Option<(u32, u32)> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.first() == Some(&name) && fields.len() > 3)
            .then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
            .flatten()
    })
}

fn free_port() -> Result<u16> {
    TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| Error::Start(format!("no free loopback port: {e}")))
}

fn data_dir_error(path: &Path, reason: String) -> Error {
    Error::DataDir {
        path: path.to_owned(),
        reason,
    }
}

fn log_since(path: &Path, start: u64) -> String {
    let mut text = String::new();
    if let Ok(mut file) = fs::File::open(path)
        && file.seek(SeekFrom::Start(start)).is_ok()
    {
        let _ = file.read_to_string(&mut text);
    }
    text
}

fn log_says_ready(path: &Path, start: u64) -> bool {
    log_since(path, start).contains("ready to accept connections")
}

fn log_tail(path: &Path, start: u64) -> String {
    let text = log_since(path, start);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
