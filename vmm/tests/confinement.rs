//! The real `hull-vmm` binary, running a tiny 64-bit guest under the host's
//! /dev/kvm, is confined while the guest runs: every thread under the
//! seccomp filter (`Seccomp: 2`) with no capabilities, and the guest and the
//! control channel still work, and a system call outside the filter, forced
//! on its main thread with ptrace, kills it. Needs root.

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
