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
fn up_refuses_a_state_directory_that_cannot_go_into_a_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("quote\"d");
    let (code, stderr) = portico(&["up", "--state-dir", state.to_str().unwrap(), dir.path().to_str().unwrap()]);
    assert_eq!(code, 69, "{stderr}");
    assert!(stderr.contains("must be an absolute path of plain characters"), "{stderr}");
}
