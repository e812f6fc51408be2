//! The real `hull-vmm` binary, running a tiny 64-bit guest under the host's
//! /dev/kvm, is confined while the guest runs: every thread under the
//! seccomp filter (`Seccomp: 2`) with no capabilities, and the guest and the
//! control channel still work, and a system call outside the filter, forced
//! on its main thread with ptrace, kills it; so does a `clone` into new
//! namespaces. Jailed with `--uid`/`--gid`, it runs as that user in a
//! network namespace of its own. Needs root.

mod common;

use std::time::{Duration, Instant};

use common::{NO_CAPS, Vmm, field, may_drop_bounding_set};
use hull_vmm::RunState;
use hull_vmm::control::Request;

#[test]
fn every_thread_runs_under_the_filter_with_no_capabilities_and_the_guest_works() {
    let mut vmm = Vmm::start(&[]);
    assert_eq!(vmm.control(Request::State).state, RunState::Running);
    vmm.wait_for_output(0);
    let statuses = vmm.thread_statuses();
    // The main thread, the control channel's and the vCPU's at least.
    assert!(statuses.len() >= 3, "{} threads", statuses.len());
    for (thread, status) in &statuses {
        assert_eq!(field(status, "Seccomp"), "2", "{thread}");
        assert_eq!(field(status, "NoNewPrivs"), "1", "{thread}");
        for set in ["CapInh", "CapPrm", "CapEff", "CapAmb"] {
            assert_eq!(field(status, set), NO_CAPS, "{thread} {set}");
        }
        if may_drop_bounding_set() {
            assert_eq!(field(status, "CapBnd"), NO_CAPS, "{thread} CapBnd");
        }
    }
    vmm.pause_resume_stop();
}

#[test]
fn no_seccomp_leaves_the_filter_off_but_still_drops_the_capabilities() {
    let mut vmm = Vmm::start(&["--no-seccomp"]);
    vmm.control(Request::State);
    vmm.wait_for_output(0);
    for (thread, status) in &vmm.thread_statuses() {
        assert_eq!(field(status, "Seccomp"), "0", "{thread}");
        assert_eq!(field(status, "CapEff"), NO_CAPS, "{thread}");
    }
    vmm.pause_resume_stop();
}

#[test]
fn a_system_call_outside_the_filter_kills_the_vmm() {
    use std::os::unix::process::ExitStatusExt;

    let mut vmm = Vmm::start(&[]);
    vmm.control(Request::State);
    vmm.wait_for_output(0);
    common::force_execve_on_main_thread(vmm.vmm_pid());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = vmm.child.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "hull-vmm survived an execve");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.signal(), Some(libc::SIGSYS), "hull-vmm: {status}");
    // The call is named in the VMM's log.
    let expected = format!(
        "hull-vmm: system call {} is not allowed by its seccomp filter",
        libc::SYS_execve
    );
    assert!(vmm.stderr().contains(&expected), "{}", vmm.stderr());
    // Killed, it could not remove its socket; the owner (the shim) does.
    let _ = std::fs::remove_file(&vmm.socket);
}

#[test]
fn without_the_filter_the_same_forced_call_fails_and_the_vmm_runs_on() {
    let mut vmm = Vmm::start(&["--no-seccomp"]);
    vmm.control(Request::State);
    let len = vmm.wait_for_output(0);
    common::force_execve_on_main_thread(vmm.vmm_pid());
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(vmm.child.try_wait().expect("wait"), None, "hull-vmm died");
    vmm.wait_for_output(len);
    vmm.pause_resume_stop();
}

/// Waits, boundedly, for the VMM to die; returns how.
fn wait_killed(vmm: &mut Vmm, what: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = vmm.child.try_wait().expect("wait") {
            return status;
        }
        assert!(Instant::now() < deadline, "hull-vmm survived {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_clone_into_new_namespaces_kills_the_vmm() {
    use std::os::unix::process::ExitStatusExt;

    let mut vmm = Vmm::start(&[]);
    vmm.control(Request::State);
    vmm.wait_for_output(0);
    let flags = libc::CLONE_NEWNS | libc::CLONE_NEWNET | libc::CLONE_NEWPID | libc::SIGCHLD;
    common::force_clone_on_main_thread(vmm.vmm_pid(), flags as u64);
    let status = wait_killed(&mut vmm, "a clone(CLONE_NEWNS|CLONE_NEWNET|CLONE_NEWPID)");
    assert_eq!(status.signal(), Some(libc::SIGSYS), "hull-vmm: {status}");
    let expected = format!(
        "hull-vmm: system call {} is not allowed by its seccomp filter",
        libc::SYS_clone
    );
    assert!(vmm.stderr().contains(&expected), "{}", vmm.stderr());
    let _ = std::fs::remove_file(&vmm.socket);
}

#[test]
fn a_fork_kills_the_vmm() {
    use std::os::unix::process::ExitStatusExt;

    let mut vmm = Vmm::start(&[]);
    vmm.control(Request::State);
    vmm.wait_for_output(0);
    common::force_clone_on_main_thread(vmm.vmm_pid(), libc::SIGCHLD as u64);
    let status = wait_killed(&mut vmm, "a fork");
    assert_eq!(status.signal(), Some(libc::SIGSYS), "hull-vmm: {status}");
    let _ = std::fs::remove_file(&vmm.socket);
}

const NOBODY: u32 = 65534;

#[test]
fn jailed_with_a_uid_the_vmm_is_that_user_in_its_own_network_namespace() {
    let mut vmm = Vmm::start_jailed(&["--uid", &NOBODY.to_string(), "--gid", &NOBODY.to_string()]);
    assert_eq!(vmm.control(Request::State).state, RunState::Running);
    vmm.wait_for_output(0);
    let jailed = vmm.vmm_pid();
    let net = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/net")).expect("net ns");
    assert_ne!(
        net(&jailed.to_string()),
        net("self"),
        "the host's network namespace"
    );
    let statuses = vmm.thread_statuses();
    assert!(statuses.len() >= 3, "{} threads", statuses.len());
    let nobody = format!("{NOBODY}\t{NOBODY}\t{NOBODY}\t{NOBODY}");
    for (thread, status) in &statuses {
        assert_eq!(field(status, "Uid"), nobody, "{thread} Uid");
        assert_eq!(field(status, "Gid"), nobody, "{thread} Gid");
        assert_eq!(field(status, "Groups"), "", "{thread} Groups");
        assert_eq!(field(status, "Seccomp"), "2", "{thread}");
        assert_eq!(field(status, "CapEff"), NO_CAPS, "{thread}");
    }
    // It still removes its sockets when it ends, and still dies with its
    // keeper (the uid change cleared the death signal it armed first).
    vmm.pause_resume_stop();
}

#[test]
fn a_uid_of_0_is_refused() {
    let mut vmm = Vmm::start_jailed(&["--uid", "0", "--gid", "0"]);
    let status = vmm.wait_ended();
    assert!(!status.success(), "hull-vmm ran as root: {status}");
    assert!(vmm.stderr().contains("0 is root"), "{}", vmm.stderr());
}
