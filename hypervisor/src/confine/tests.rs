//! Real processes confined by a [`Sandbox`]: they run as the given user,
//! with no capability, under the filter, in namespaces of their own, and
//! die by a call outside the filter. Needs root.

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{NOBODY, Sandbox, VHOST_VSOCK};

fn sandboxed(program: &str, args: &[&str]) -> std::process::Child {
    let mut command = Command::new(program);
    // No locale: with a UTF-8 one coreutils open gconv modules without
    // O_CLOEXEC, outside the filter, and the program would die before
    // the test looks at it (seen when the caller's LANG was C.UTF-8).
    command
        .args(args)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    Sandbox::new("test", NOBODY, &VHOST_VSOCK)
        .expect("filters")
        .apply(&mut command);
    command.spawn().expect("spawn")
}

fn field(pid: u32, name: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no {name}"))
        .trim()
        .to_owned()
}

fn wait(child: &mut std::process::Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        assert!(Instant::now() < deadline, "the child did not end");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_confined_program_runs_as_nobody_with_no_capabilities_under_the_filter() {
    let mut child = sandboxed("/bin/sleep", &["10"]);
    let pid = child.id();
    // Past the exec: the name is sleep's.
    let deadline = Instant::now() + Duration::from_secs(5);
    while field(pid, "Name") != "sleep" {
        assert!(Instant::now() < deadline, "no exec");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(field(pid, "Uid"), "65534\t65534\t65534\t65534");
    assert_eq!(field(pid, "Gid"), "65534\t65534\t65534\t65534");
    assert_eq!(field(pid, "Groups"), "");
    for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(field(pid, set), "0000000000000000", "{set}");
    }
    assert_eq!(field(pid, "NoNewPrivs"), "1");
    assert_eq!(field(pid, "Seccomp"), "2");
    for ns in ["mnt", "net", "ipc", "uts"] {
        let of = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).expect("ns");
        assert_ne!(of(&pid.to_string()), of("self"), "{ns}");
    }
    // Everything above was read from a live process, not a dead one.
    assert!(
        child.try_wait().expect("wait").is_none(),
        "the program died"
    );
    child.kill().expect("kill");
    child.wait().expect("wait");
}

#[test]
fn a_program_within_the_filter_runs_to_its_end() {
    let mut child = sandboxed("/bin/true", &[]);
    let status = wait(&mut child);
    assert!(status.success(), "{status}");
}

#[test]
fn a_call_outside_the_filter_kills_the_program() {
    // mkdir(1) calls statfs(2) and mkdir(2), neither on the list.
    let dir = tempfile::tempdir().expect("dir");
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .expect("chmod");
    let target = dir.path().join("made");
    let mut child = sandboxed("/bin/mkdir", &[target.to_str().expect("utf-8")]);
    let status = wait(&mut child);
    assert_eq!(status.signal(), Some(libc::SIGSYS), "{status}");
    assert!(!target.exists());
}
