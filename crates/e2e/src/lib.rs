//! Support for end-to-end tests with real parts: a test PKI (rcgen), TLS backends (rustls
//! and hyper) that answer with what they saw of the connection, the real proxies as child
//! processes, and a minimal HTTP/1.1 client.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use portico_deploy::demo::{Backend, BackendKind, Issued, TestCa};

// ---------------------------------------------------------------- proxies and the client

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// A proxy process, killed when dropped.
pub struct Proxy {
    pub name: &'static str,
    pub port: u16,
    child: Child,
    log: tempfile::NamedTempFile,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proxy {
    /// HAProxy in the foreground on a config `portico translate` wrote.
    pub fn haproxy(config: &Path, port: u16) -> Proxy {
        Proxy::spawn("haproxy", Command::new("haproxy").arg("-db").arg("-f").arg(config), port)
    }

    /// Envoy on a bootstrap `portico translate` wrote.
    pub fn envoy(bootstrap: &Path, port: u16) -> Proxy {
        let mut command = Command::new("envoy");
        command.arg("-c").arg(bootstrap).args(["--use-dynamic-base-id", "--log-level", "warning"]);
        Proxy::spawn("envoy", &mut command, port)
    }

    fn spawn(name: &'static str, command: &mut Command, port: u16) -> Proxy {
        let log = tempfile::NamedTempFile::new().expect("a log file");
        let child = command
            .stdin(Stdio::null())
            .stdout(log.reopen().expect("log"))
            .stderr(log.reopen().expect("log"))
            .spawn()
            .unwrap_or_else(|e| panic!("{name} must be installed (scripts/setup.sh installs it): {e}"));
        let mut proxy = Proxy { name, port, child, log };
        proxy.wait_ready();
        proxy
    }

    /// Wait until the listener answers HTTP (or fail with the proxy's log).
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{} exited with {status}:\n{}", self.name, self.log());
            }
            if get(self.port, "ready.invalid", "/").is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("{} did not answer on port {} within 30 s:\n{}", self.name, self.port, self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// GET through this proxy.
    pub fn get(&self, host: &str, path: &str) -> (u16, String) {
        get(self.port, host, path).unwrap_or_else(|e| panic!("{} on {}: {e}\n{}", self.name, self.port, self.log()))
    }
}

pub use portico_testkit::http_get as get;
