//! `hull-vmm --jail DIR` on a tiny 64-bit guest under the host's /dev/kvm:
//! the VMM runs as PID 1 of its own PID namespace, in its own mount
//! namespace rooted at DIR, under its rlimits and still under the seccomp
//! filter; nothing is mounted on the host; the started process (the keeper)
//! ends as the VMM ends, and the VMM cannot outlive it. Needs root.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{NO_CAPS, Vmm, field};
use hull_vmm::RunState;
use hull_vmm::control::Request;

fn same_file(a: impl AsRef<Path>, b: impl AsRef<Path>) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (a, b) = (
        std::fs::metadata(a).expect("stat"),
        std::fs::metadata(b).expect("stat"),
    );
    (a.dev(), a.ino()) == (b.dev(), b.ino())
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| !stat.contains(") Z "))
}

fn wait_gone(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(pid) {
        assert!(Instant::now() < deadline, "pid {pid} is still alive");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn host_mounts_under(dir: &Path) -> Vec<String> {
    let dir = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .filter(|line| line.contains(&dir))
        .map(str::to_owned)
        .collect()
}

/// A line of `/proc/PID/limits`, e.g. "Max open files", as (soft, hard).
fn limit(pid: u32, name: &str) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let line = limits
        .lines()
        .find(|line| line.starts_with(name))
        .unwrap_or_else(|| panic!("no {name} in {limits}"));
    let mut words = line[name.len()..].split_whitespace();
    (
        words.next().expect("soft").to_owned(),
        words.next().expect("hard").to_owned(),
    )
}

#[test]
fn the_jailed_vmm_is_pid_1_of_its_namespace_rooted_in_its_directory() {
    let mut vmm = Vmm::start_jailed(&[]);
    assert_eq!(vmm.control(Request::State).state, RunState::Running);
    vmm.wait_for_output(0);
    let jail = vmm.jail.clone().expect("jailed");
    let keeper = vmm.child.id();
    let jailed = vmm.vmm_pid();
    assert_ne!(jailed, keeper);

    let status = std::fs::read_to_string(format!("/proc/{jailed}/status")).expect("status");
    let nspid: Vec<&str> = field(&status, "NSpid").split_whitespace().collect();
    assert_eq!(nspid, [jailed.to_string().as_str(), "1"], "NSpid");
    let namespace = |pid: &str, ns: &str| {
        std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).expect("namespace")
    };
    assert_ne!(
        namespace(&jailed.to_string(), "mnt"),
        namespace("self", "mnt")
    );
    assert!(same_file(format!("/proc/{jailed}/root"), &jail));
    // Its whole file system: the jail's sockets and files, the kernel, and
    // the mount points of /dev/kvm and /proc.
    let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{jailed}/root"))
        .expect("the jail's root")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    assert_eq!(names, ["api.sock", "console.log", "dev", "kernel", "proc"]);
    let mut dev: Vec<_> = std::fs::read_dir(format!("/proc/{jailed}/root/dev"))
        .expect("/dev")
        .map(|entry| entry.expect("entry").file_name())
        .collect();
    dev.sort();
    assert_eq!(dev, ["kvm", "urandom"]);
    assert_eq!(host_mounts_under(&jail), Vec::<String>::new());

    assert_eq!(
        limit(jailed, "Max open files"),
        ("4096".into(), "4096".into())
    );
    assert_eq!(
        limit(jailed, "Max core file size"),
        ("0".into(), "0".into())
    );
    assert_eq!(limit(jailed, "Max locked memory"), ("0".into(), "0".into()));
    for (thread, status) in &vmm.thread_statuses() {
        assert_eq!(field(status, "Seccomp"), "2", "{thread}");
        assert_eq!(field(status, "CapEff"), NO_CAPS, "{thread}");
    }

    vmm.pause_resume_stop();
    wait_gone(jailed);
    assert_eq!(host_mounts_under(&jail), Vec::<String>::new());
}

#[test]
fn killing_the_keeper_ends_the_jailed_vmm() {
    let mut vmm = Vmm::start_jailed(&[]);
    vmm.control(Request::State);
    vmm.wait_for_output(0);
    let jailed = vmm.vmm_pid();
    vmm.child.kill().expect("kill -9 the keeper");
    let status = vmm.wait_ended();
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    wait_gone(jailed);
}

#[test]
fn killing_the_keeper_ends_the_jailed_vmm_running_as_another_user() {
    // Changing the uid clears the kernel's parent-death signal: the VMM
    // must have armed it again.
    let mut vmm = Vmm::start_jailed(&["--uid", "65534", "--gid", "65534"]);
    vmm.control(Request::State);
    vmm.wait_for_output(0);
    let jailed = vmm.vmm_pid();
    vmm.child.kill().expect("kill -9 the keeper");
    let status = vmm.wait_ended();
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    wait_gone(jailed);
}

#[test]
fn a_sigterm_to_the_keeper_ends_both_and_the_keeper_ends_by_it() {
    let mut vmm = Vmm::start_jailed(&[]);
    vmm.control(Request::State);
    vmm.wait_for_output(0);
    let jailed = vmm.vmm_pid();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(vmm.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM the keeper");
    let status = vmm.wait_ended();
    assert_eq!(status.signal(), Some(libc::SIGTERM), "{status}");
    wait_gone(jailed);
}

#[test]
fn a_call_outside_the_filter_kills_the_jailed_vmm_and_the_keeper_says_so() {
    let mut vmm = Vmm::start_jailed(&[]);
    vmm.control(Request::State);
    vmm.wait_for_output(0);
    let jailed = vmm.vmm_pid();
    common::force_execve_on_main_thread(jailed);
    let status = vmm.wait_ended();
    assert_eq!(status.signal(), Some(libc::SIGSYS), "{status}");
    // The call is named in the VMM's log.
    let expected = format!(
        "hull-vmm: system call {} is not allowed by its seccomp filter",
        libc::SYS_execve
    );
    assert!(vmm.stderr().contains(&expected), "{}", vmm.stderr());
    wait_gone(jailed);
}

#[test]
fn a_socket_or_console_outside_the_jail_is_named() {
    let dir = tempfile::tempdir().expect("dir");
    let jail = dir.path().join("jail");
    std::fs::create_dir(&jail).expect("jail");
    let kernel = common::ticker64(dir.path());
    for (field, outside) in [
        ("--api-socket", dir.path().join("api.sock")),
        ("--console-log", dir.path().join("console.log")),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_hull-vmm"))
            .arg("--jail")
            .arg(&jail)
            .arg("--kernel")
            .arg(&kernel)
            .arg(field)
            .arg(&outside)
            .output()
            .expect("run hull-vmm");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{field}: {stderr}");
        assert!(
            stderr.contains(&format!("{field} {}", outside.display()))
                && stderr.contains("is not inside the jail"),
            "{field}: {stderr}"
        );
    }
    let output = Command::new(env!("CARGO_BIN_EXE_hull-vmm"))
        .arg("--jail")
        .arg(dir.path().join("missing"))
        .arg("--kernel")
        .arg(&kernel)
        .output()
        .expect("run hull-vmm");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("--jail "), "{stderr}");
    // Nothing was created in the jail by the refused starts.
    assert_eq!(std::fs::read_dir(&jail).expect("jail").count(), 0);
}
