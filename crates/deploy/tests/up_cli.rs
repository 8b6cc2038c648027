//! `portico up` and `portico status` fail clearly, before starting anything, when they
//! cannot work. (The running stack is covered by crates/e2e/tests/stack.rs.)

use std::process::Command;

fn portico(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_portico")).args(args).output().expect("run portico");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn status_without_a_running_stack_says_what_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let (code, stderr) = portico(&["status", "--state-dir", dir.path().to_str().unwrap()]);
    assert_eq!(code, 69, "{stderr}");
    assert!(stderr.contains("is `portico up` running with --state-dir"), "{stderr}");
}

#[test]
fn up_refuses_a_port_in_use_and_names_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let state = dir.path().join("state");
    let (code, stderr) =
        portico(&["up", "--state-dir", state.to_str().unwrap(), "--nats-port", &port, dir.path().to_str().unwrap()]);
    assert_eq!(code, 69, "{stderr}");
    assert!(stderr.contains(&format!("NATS's port 127.0.0.1:{port} is in use")), "{stderr}");
    assert!(stderr.contains("--nats-port"), "{stderr}");
    assert!(!state.join("nats").exists(), "nothing was written or started");
}

#[test]
fn up_refuses_a_nats_cluster_it_cannot_run() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    for size in ["0", "6"] {
        let (code, stderr) = portico(&["up", "--state-dir", state.to_str().unwrap(), "--nats-cluster", size]);
        assert_eq!(code, 2, "{stderr}");
        assert!(stderr.contains("--nats-cluster") && stderr.contains("1..=5"), "{stderr}");
    }
    assert!(!state.exists(), "nothing was written or started");
}

#[test]
fn up_refuses_a_state_directory_that_cannot_go_into_a_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("quote\"d");
    let (code, stderr) = portico(&["up", "--state-dir", state.to_str().unwrap(), dir.path().to_str().unwrap()]);
    assert_eq!(code, 69, "{stderr}");
    assert!(stderr.contains("must be an absolute path of plain characters"), "{stderr}");
    // A space too: the ADS certificates' paths go into Envoy's bootstrap.
    let spaced = dir.path().join("with space");
    let (code, stderr) = portico(&["up", "--state-dir", spaced.to_str().unwrap(), dir.path().to_str().unwrap()]);
    assert_eq!(code, 69, "{stderr}");
    assert!(stderr.contains("--state-dir"), "the message says how to choose another: {stderr}");
}

/// The processes whose command line or environment mentions `needle` (the state directory
/// is in the arguments of nats-server, HAProxy, Envoy and the HAProxy renderer; the NATS
/// URL with its port, which is this stack's own, is in every service's environment).
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        if pid == std::process::id() {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
        if cmdline.contains(needle) || String::from_utf8_lossy(&environ).contains(needle) {
            found.push(format!("{pid}: {cmdline}"));
        }
    }
    found
}

#[test]
fn ctrl_c_during_start_up_stops_everything_started_so_far() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let manifests = dir.path().join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    std::fs::write(manifests.join("empty.yaml"), "").unwrap();
    let port = |addresses: &[std::net::IpAddr]| portico_deploy::up::pick_port(addresses).unwrap().to_string();
    let loopback = [std::net::IpAddr::from([127, 0, 0, 1])];
    let both = [std::net::IpAddr::from([127, 0, 0, 1]), std::net::IpAddr::from([127, 0, 0, 2])];
    let nats_port = port(&loopback);
    let mut up = Command::new(env!("CARGO_BIN_EXE_portico"))
        .args(["up", "--state-dir", state.to_str().unwrap()])
        .args(["--http-port", &port(&both), "--nats-port", &nats_port, "--ads-port", &port(&loopback)])
        .args(["--envoy-admin-port", &port(&loopback)])
        .arg(&manifests)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Interrupt once the services are being started, before "Portico is up".
    let started = std::time::Instant::now();
    while !state.join("logs/watcher.log").exists() {
        assert!(started.elapsed() < std::time::Duration::from_secs(30), "portico up never started the watcher");
        assert!(up.try_wait().unwrap().is_none(), "portico up exited early");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(!processes_mentioning(state.to_str().unwrap()).is_empty(), "some parts run now");
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(up.id() as libc::pid_t, libc::SIGINT) };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(status) = up.try_wait().unwrap() {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "portico up did not stop within 30 s of SIGINT");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(up.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    let mut left = processes_mentioning(state.to_str().unwrap());
    left.extend(processes_mentioning(&format!("nats://127.0.0.1:{nats_port}")));
    assert!(left.is_empty(), "processes left behind:\n{}\n{stderr}", left.join("\n"));
}
