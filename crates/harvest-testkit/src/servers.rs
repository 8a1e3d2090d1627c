//! Private Redis and PostgreSQL servers that one test starts, kills and restarts on
//! its own (fault tests), on free ports of 127.0.0.1 inside a temporary folder.
//!
//! Nothing here touches the servers the rest of the suite shares: each server is a
//! child of the test (Redis) or a cluster in the test's own folder (PostgreSQL), found
//! and stopped by its own pid, and removed when its handle is dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::process::free_port;

/// How long a server gets to answer after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A `redis-server` child process with no persistence (`--save '' --appendonly no`):
/// killed, it comes back empty.
pub struct PrivateRedis {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl PrivateRedis {
    /// Starts a private Redis on a free port (trying a few ports if one is taken in
    /// between) and waits until it answers. Panics when `redis-server` cannot run.
    pub async fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("harvest-redis-")
            .tempdir()
            .expect("temp dir for redis");
        let mut redis = Self {
            port: 0,
            dir,
            child: None,
        };
        for attempt in 1..=5 {
            redis.port = free_port();
            match redis.spawn().await {
                Ok(()) => return redis,
                Err(e) if attempt < 5 => {
                    eprintln!(
                        "private redis: port {} failed ({e}); trying another",
                        redis.port
                    )
                }
                Err(e) => panic!("cannot start a private redis-server: {e}"),
            }
        }
        unreachable!()
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the server with SIGKILL (no shutdown, nothing saved) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a fresh, empty server on the same port (after [`PrivateRedis::kill`]) and
    /// waits until it answers. Retries for a while if the port is not free yet.
    pub async fn restart_empty(&mut self) {
        self.kill();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match self.spawn().await {
                Ok(()) => break,
                Err(e) if Instant::now() < deadline => {
                    eprintln!(
                        "private redis: restart on {} failed ({e}); retrying",
                        self.port
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("cannot restart redis-server on port {}: {e}", self.port),
            }
        }
        let size = self.command(&["DBSIZE"]).await;
        assert_eq!(size.as_deref(), Some("0"), "the restarted Redis is empty");
    }

    /// Sends one command and returns its reply as text (integers and statuses as
    /// their text, bulk strings as they are, `None` for errors and no answer).
    pub async fn command(&self, args: &[&str]) -> Option<String> {
        resp_command(self.port, args).await
    }

    /// Runs `redis-server` on `self.port` and waits until this very process answers.
    async fn spawn(&mut self) -> Result<(), String> {
        let log = self.dir.path().join("redis.log");
        let port = self.port.to_string();
        let child = Command::new("redis-server")
            .args(["--port", &port, "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run redis-server (is it installed?): {e}"))?;
        let pid = child.id();
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            // Our own server, not another one that already listened on the port.
            if let Some(info) = self.command(&["INFO", "server"]).await
                && info
                    .lines()
                    .any(|l| l.trim() == format!("process_id:{pid}"))
            {
                return Ok(());
            }
            let exited = self
                .child
                .as_mut()
                .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))));
            if exited || Instant::now() >= deadline {
                self.kill();
                let tail = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = tail.lines().rev().take(5).collect();
                return Err(format!(
                    "redis-server did not come up on port {}: {}",
                    self.port,
                    tail.join(" | ")
                ));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A local Redis Cluster of three masters (no replicas), each a `redis-server
/// --cluster-enabled yes` child on free ports of 127.0.0.1 in a temporary folder, joined
/// with `redis-cli --cluster create`. The servers are stopped when it is dropped.
pub struct PrivateRedisCluster {
    dir: tempfile::TempDir,
    nodes: Vec<(u16, Child)>,
}

impl PrivateRedisCluster {
    /// Starts three masters, creates the cluster (all 16384 slots) and waits until every
    /// node reports `cluster_state:ok`. Panics with the reason when it cannot (for
    /// example `redis-cli` missing: it comes with the `redis-tools` package).
    pub async fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("harvest-redis-cluster-")
            .tempdir()
            .expect("temp dir for the redis cluster");
        let mut cluster = Self {
            dir,
            nodes: Vec::new(),
        };
        while cluster.nodes.len() < 3 {
            let mut last = String::new();
            let mut started = false;
            for _ in 0..5 {
                match cluster.spawn_node().await {
                    Ok(node) => {
                        cluster.nodes.push(node);
                        started = true;
                        break;
                    }
                    Err(e) => last = e,
                }
            }
            assert!(started, "cannot start a cluster redis-server: {last}");
        }
        let mut create = tokio::process::Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for (port, _) in &cluster.nodes {
            create.arg(format!("127.0.0.1:{port}"));
        }
        create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let out = match tokio::time::timeout(START_TIMEOUT, create.output()).await {
            Ok(Ok(out)) => out,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "redis-cli is not installed: the Redis Cluster tests need `redis-cli --cluster \
                 create` (Debian/Ubuntu: apt-get install redis-tools, or redis-server)"
            ),
            Ok(Err(e)) => panic!("cannot run redis-cli --cluster create: {e}"),
            Err(_) => panic!("redis-cli --cluster create did not finish in {START_TIMEOUT:?}"),
        };
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let deadline = Instant::now() + START_TIMEOUT;
        for (port, _) in &cluster.nodes {
            loop {
                let info = resp_command(*port, &["CLUSTER", "INFO"]).await;
                if info
                    .as_deref()
                    .is_some_and(|i| i.lines().any(|l| l.trim() == "cluster_state:ok"))
                {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the Redis Cluster never reported cluster_state:ok on port {port}: {info:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        cluster
    }

    /// The nodes' URLs, comma-separated (`redis://127.0.0.1:P1,redis://127.0.0.1:P2,...`):
    /// what `HARVEST_REDIS_URL` takes for a Redis Cluster.
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(|(port, _)| format!("redis://127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The masters' ports.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|(port, _)| *port).collect()
    }

    /// Sends one command to the node on `port` (see [`PrivateRedis::command`]).
    pub async fn command(&self, port: u16, args: &[&str]) -> Option<String> {
        resp_command(port, args).await
    }

    /// Starts one empty cluster-enabled server on free ports and waits until it answers.
    async fn spawn_node(&self) -> Result<(u16, Child), String> {
        let port = free_port();
        // The cluster bus port (by default port + 10000, which may not exist).
        let bus = loop {
            let p = free_port();
            if p != port {
                break p;
            }
        };
        let dir = self.dir.path();
        let log = dir.join(format!("redis-{port}.log"));
        let mut child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--cluster-enabled",
                "yes",
                "--cluster-port",
                &bus.to_string(),
            ])
            .arg("--cluster-config-file")
            .arg(dir.join(format!("nodes-{port}.conf")))
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir)
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run redis-server (is it installed?): {e}"))?;
        let pid = child.id();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(info) = resp_command(port, &["INFO", "server"]).await
                && info
                    .lines()
                    .any(|l| l.trim() == format!("process_id:{pid}"))
            {
                return Ok((port, child));
            }
            if matches!(child.try_wait(), Ok(Some(_))) || Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                let tail = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = tail.lines().rev().take(5).collect();
                return Err(format!(
                    "redis-server did not come up on port {port}: {}",
                    tail.join(" | ")
                ));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for PrivateRedisCluster {
    fn drop(&mut self) {
        for (_, child) in &mut self.nodes {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One RESP command over a fresh connection, bounded by 2 s.
async fn resp_command(port: u16, args: &[&str]) -> Option<String> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        let mut out = format!("*{}\r\n", args.len());
        for a in args {
            out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        stream.write_all(out.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(reply) = parse_resp(&buf) {
                return reply;
            }
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(2), exchange)
        .await
        .ok()
        .flatten()
}

/// `Some(reply)` once `buf` holds a whole simple, integer, error or bulk reply.
fn parse_resp(buf: &[u8]) -> Option<Option<String>> {
    let end = buf.windows(2).position(|w| w == b"\r\n")?;
    let line = String::from_utf8_lossy(&buf[1..end]).into_owned();
    match buf.first()? {
        b'+' | b':' => Some(Some(line)),
        b'-' => Some(None),
        b'$' => {
            let len: i64 = line.parse().ok()?;
            if len < 0 {
                return Some(None);
            }
            let start = end + 2;
            let stop = start + usize::try_from(len).ok()?;
            if buf.len() < stop + 2 {
                return None;
            }
            Some(Some(
                String::from_utf8_lossy(&buf[start..stop]).into_owned(),
            ))
        }
        _ => Some(None),
    }
}

/// A PostgreSQL cluster of its own (trust auth, user `postgres`), run with the newest
/// server binaries under `/usr/lib/postgresql/*/bin`. As root, it runs as the
/// `postgres` system user (PostgreSQL refuses to run as root).
pub struct PrivatePostgres {
    bin: PathBuf,
    // Dropped after the server is stopped (see Drop).
    dir: tempfile::TempDir,
    port: u16,
    running: bool,
    as_postgres: bool,
}

impl PrivatePostgres {
    /// The newest PostgreSQL server binaries, if any are installed.
    pub fn bin_dir() -> Option<PathBuf> {
        let mut dirs: Vec<(Vec<u64>, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(Result::ok)
            .filter_map(|e| {
                let version = e
                    .file_name()
                    .to_string_lossy()
                    .split('.')
                    .map(|p| p.parse::<u64>().ok())
                    .collect::<Option<Vec<u64>>>()?;
                let bin = e.path().join("bin");
                ["initdb", "pg_ctl", "postgres"]
                    .iter()
                    .all(|b| bin.join(b).is_file())
                    .then_some((version, bin))
            })
            .collect();
        dirs.sort();
        dirs.pop().map(|(_, bin)| bin)
    }

    /// Creates and starts a cluster on a free port. `None` (with a message) when no
    /// PostgreSQL server is installed; panics when one is installed but cannot run.
    pub async fn start() -> Option<Self> {
        let Some(bin) = Self::bin_dir() else {
            eprintln!(
                "no PostgreSQL server under /usr/lib/postgresql/*/bin (install the \
                 `postgresql` package): skipping this test"
            );
            return None;
        };
        let as_postgres = is_root();
        // Short paths: the unix socket path is limited to ~100 bytes.
        let dir = tempfile::Builder::new()
            .prefix("harvest-pg-")
            .tempdir_in("/tmp")
            .expect("temp dir for postgres");
        let mut pg = Self {
            bin,
            dir,
            port: 0,
            running: false,
            as_postgres,
        };
        std::fs::create_dir(pg.data()).expect("create the data folder");
        std::fs::create_dir(pg.socket_dir()).expect("create the socket folder");
        if as_postgres {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(pg.dir.path(), std::fs::Permissions::from_mode(0o755))
                .expect("chmod the temp dir");
            let status = Command::new("chown")
                .arg("postgres:")
                .arg(pg.data())
                .arg(pg.socket_dir())
                .status()
                .expect("run chown");
            assert!(
                status.success(),
                "chown postgres failed (no postgres user?)"
            );
        }
        let out = pg
            .pg_command("initdb")
            .arg("-D")
            .arg(pg.data())
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"])
            .arg("--locale=C")
            .output()
            .await
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        for attempt in 1..=3 {
            pg.port = free_port();
            match pg.pg_ctl_start().await {
                Ok(()) => return Some(pg),
                Err(e) if attempt < 3 => {
                    eprintln!(
                        "private postgres: port {} failed ({e}); trying another",
                        pg.port
                    )
                }
                Err(e) => panic!("cannot start a private PostgreSQL: {e}"),
            }
        }
        unreachable!()
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server at once (`pg_ctl stop -m immediate`: every connection is cut,
    /// no checkpoint; the next start recovers from the WAL).
    pub async fn stop(&mut self) {
        if !self.running {
            return;
        }
        let out = self
            .pg_command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "-t", "30", "stop"])
            .output()
            .await
            .expect("run pg_ctl stop");
        assert!(
            out.status.success(),
            "pg_ctl stop failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.running = false;
    }

    /// Starts the stopped server again on the same port and waits until it accepts
    /// connections.
    pub async fn start_again(&mut self) {
        if self.running {
            return;
        }
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match self.pg_ctl_start().await {
                Ok(()) => return,
                Err(e) if Instant::now() < deadline => {
                    eprintln!(
                        "private postgres: restart on {} failed ({e}); retrying",
                        self.port
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("cannot restart PostgreSQL on port {}: {e}", self.port),
            }
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The server's log, in the data folder (which the server's user may write).
    fn log_file(&self) -> PathBuf {
        self.data().join("server.log")
    }

    fn socket_dir(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    /// A server binary, run as `postgres` when we are root.
    fn pg_command(&self, name: &str) -> tokio::process::Command {
        let program = self.bin.join(name);
        let mut cmd = if self.as_postgres {
            let mut cmd = tokio::process::Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(program);
            cmd
        } else {
            tokio::process::Command::new(program)
        };
        cmd.current_dir("/").stdin(Stdio::null());
        cmd
    }

    async fn pg_ctl_start(&mut self) -> Result<(), String> {
        // Fast but honest: a commit is acknowledged once its WAL is written, so an
        // immediate stop (a process crash, not an OS crash) loses nothing acknowledged;
        // `synchronous_commit=off` would.
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off \
             -c max_connections=100",
            self.port,
            self.socket_dir().display()
        );
        let out = self
            .pg_command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.log_file())
            .args(["-w", "-t", "30", "-o", &options, "start"])
            .output()
            .await
            .map_err(|e| format!("cannot run pg_ctl: {e}"))?;
        if out.status.success() {
            self.running = true;
            return Ok(());
        }
        // Make sure a half-started server does not linger.
        self.kill_postmaster();
        let log = std::fs::read_to_string(self.log_file()).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(5).collect();
        Err(format!(
            "pg_ctl start failed: {} | {}",
            String::from_utf8_lossy(&out.stderr).trim(),
            tail.join(" | ")
        ))
    }

    /// SIGKILL to the postmaster named in this cluster's pid file, if it runs.
    fn kill_postmaster(&self) {
        if let Some(pid) = postmaster_pid(&self.data()) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let program = self.bin.join("pg_ctl");
        let mut cmd = if self.as_postgres {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(program);
            cmd
        } else {
            Command::new(program)
        };
        let _ = cmd
            .current_dir("/")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "-t", "10", "stop"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        self.kill_postmaster();
    }
}

/// The pid in `data/postmaster.pid`, when that process is alive.
fn postmaster_pid(data: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(data.join("postmaster.pid")).ok()?;
    let pid: u32 = text.lines().next()?.trim().parse().ok()?;
    Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .ok()
        .is_some_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}
