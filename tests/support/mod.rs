//! Helpers for the black-box tests: run the real `tenantry` binary and talk to it over HTTP.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// `tenantry` with a clean environment: no inherited TENANTRY_* settings, quiet logs,
/// run from `cwd` (so no repository config/ folder is read unless given).
pub fn tenantry(cwd: &Path, env: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tenantry"));
    for (key, _) in std::env::vars() {
        if key.starts_with("TENANTRY") {
            cmd.env_remove(key);
        }
    }
    cmd.current_dir(cwd)
        .env("TENANTRY_ENV", env)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
    cmd
}

/// A running `tenantry` process, killed when dropped.
pub struct Running {
    pub child: Child,
}

impl Running {
    pub fn spawn(mut cmd: Command) -> Self {
        let child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tenantry");
        Self { child }
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit and returns its status and output.
    pub fn wait(mut self, timeout: Duration) -> (ExitStatus, String, String) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let mut out = String::new();
                let mut err = String::new();
                use std::io::Read;
                if let Some(mut s) = self.child.stdout.take() {
                    let _ = s.read_to_string(&mut out);
                }
                if let Some(mut s) = self.child.stderr.take() {
                    let _ = s.read_to_string(&mut err);
                }
                return (status, out, err);
            }
            assert!(
                Instant::now() < deadline,
                "tenantry did not exit within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `url` until it answers `status` (or the deadline passes); returns the JSON body.
pub async fn wait_for_status(url: &str, status: u16, timeout: Duration) -> serde_json::Value {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(response) = http.get(url).timeout(Duration::from_secs(3)).send().await {
            if response.status().as_u16() == status {
                return response.json().await.unwrap();
            }
        }
        assert!(
            Instant::now() < deadline,
            "{url} did not answer {status} within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether a process runs (a zombie does not count).
pub fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z'))
    })
}

pub fn output(mut cmd: Command) -> Output {
    cmd.output().expect("run tenantry")
}
