//! The real `harvest` binary as a child process, for tests of signals and the CLI.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A `harvest serve` child process listening on a free port.
pub struct HarvestProcess {
    pub child: Child,
    pub addr: String,
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

impl HarvestProcess {
    /// Starts `bin serve` in `dir` with `env` and waits (up to 20 s) until `/healthz`
    /// answers.
    pub async fn start(bin: &Path, dir: &Path, env: &[(&str, &str)]) -> Self {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .current_dir(dir)
            .env("HARVEST_LISTEN", &addr)
            // Warnings, plus the shutdown steps (info): a node that was told to stop
            // (a signal from outside the test) says so in the test's output.
            .env("RUST_LOG", "warn,harvest_server::app=info")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn harvest");
        let mut process = Self { child, addr };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if process.healthz().await == Some(200) {
                break;
            }
            if let Ok(Some(status)) = process.child.try_wait() {
                panic!("harvest exited early with {status}");
            }
            assert!(Instant::now() < deadline, "harvest did not become healthy");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        process
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The status of `GET /healthz`, or `None` if nothing answers.
    pub async fn healthz(&self) -> Option<u16> {
        reqwest::Client::new()
            .get(self.url("/healthz"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()
            .map(|r| r.status().as_u16())
    }

    /// Sends a signal (e.g. `"TERM"`) to the process.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits up to `timeout` for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for HarvestProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
