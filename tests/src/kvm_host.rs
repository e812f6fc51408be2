//! The KVM test host: a QEMU-TCG VM with emulated AMD-V (`-cpu max,+svm`),
//! booted from Debian's cloud kernel, in which /dev/kvm works with nested
//! paging. It sees the host's root read-only through virtio-fs (with a tmpfs
//! overlay for writes), runs one script, and reports its output and exit
//! code. `tests/kvm-host/build.sh` builds it; this is where guests boot
//! under real KVM.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hull_hypervisor::process::Helper;

/// What the script printed (stdout and stderr together) and how it ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub output: String,
    pub exit_code: i32,
    /// The whole console, for failure messages.
    pub console: String,
}

/// The test host's kernel and initramfs.
pub fn artifacts() -> (PathBuf, PathBuf) {
    crate::kernel_and_initrd(
        &crate::cache_dir().join("kvm-host/current"),
        "vmlinuz",
        "tests/kvm-host/build.sh",
    )
}

/// Boots the test host, runs `script` (a shell script) in it as root, and
/// returns its outcome. Panics with the console if the host does not finish
/// within `timeout`.
///
/// A test host that hangs (seen about once in ten runs, cause not found
/// yet: its vCPU busy, nothing reaching its virtiofsd) is reported with its
/// console, its CPU's registers and whether its virtiofsd was still alive,
/// and run once more.
pub fn run(script: &str, memory_mib: u32, timeout: Duration) -> Outcome {
    run_with_vcpus(script, memory_mib, 1, timeout)
}

/// [`run`] on a test host with `vcpus` vCPUs (multi-threaded TCG, one host
/// thread each).
pub fn run_with_vcpus(script: &str, memory_mib: u32, vcpus: u32, timeout: Duration) -> Outcome {
    match run_once(script, memory_mib, vcpus, timeout) {
        Ok(outcome) => outcome,
        Err(hung) => {
            report_hang(&hung);
            run_once(script, memory_mib, vcpus, timeout).unwrap_or_else(|hung| panic!("{hung}"))
        }
    }
}

/// Where a hang's report is kept for good: the test that saw it passes on
/// the second run, and libtest drops the captured output of a passing test.
fn report_hang(hung: &str) {
    use std::io::Write;
    let report = format!(
        "{hung}\nrunning the KVM test host once more (this report is appended to {})\n",
        hang_log().display()
    );
    // Straight to the descriptor: eprintln! would be captured with the rest.
    let _ = std::io::stderr().write_all(report.as_bytes());
    let appended = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(hang_log())
        .and_then(|mut log| {
            writeln!(log, "==> {:?}", std::time::SystemTime::now())?;
            log.write_all(report.as_bytes())
        });
    if let Err(err) = appended {
        let _ = writeln!(std::io::stderr(), "writing {}: {err}", hang_log().display());
    }
}

fn hang_log() -> PathBuf {
    crate::cache_dir().join("kvm-host/hangs.log")
}

fn run_once(
    script: &str,
    memory_mib: u32,
    vcpus: u32,
    timeout: Duration,
) -> Result<Outcome, String> {
    let (kernel, initrd) = artifacts();
    // Under /tmp on the host's root, so the test host sees it too.
    let dir = tempfile::Builder::new()
        .prefix("hull-kvm-host-")
        .tempdir_in("/tmp")
        .expect("temp dir");
    let command = dir.path().join("cmd.sh");
    std::fs::write(&command, script).expect("write the script");
    let socket = dir.path().join("fs.sock");
    let monitor = dir.path().join("monitor.sock");

    let mut virtiofsd = Helper::spawn(
        "virtiofsd",
        Command::new("virtiofsd")
            .arg("--socket-path")
            .arg(&socket)
            // `always`: an open keeps the file's cached pages. With `auto`
            // each run of the debug shim binary dropped the running shim's
            // code pages, and the test host's one vCPU spent seconds
            // faulting them back in (tests/kvm-host/README.md).
            .args(["--shared-dir", "/", "--readonly", "--cache", "always"])
            // overlayfs refuses a lower layer that announces submounts.
            .arg("--no-announce-submounts")
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .expect("start virtiofsd");
    wait_for(&socket, &mut virtiofsd);

    let memory = format!("{memory_mib}M");
    let mut qemu = Helper::spawn(
        "qemu",
        Command::new("qemu-system-x86_64")
            .args([
                "-accel",
                "tcg",
                "-cpu",
                "max,+svm",
                "-smp",
                &vcpus.to_string(),
            ])
            .args(["-machine", "q35,memory-backend=mem", "-m", &memory])
            .arg("-object")
            .arg(format!(
                "memory-backend-memfd,id=mem,size={memory},share=on"
            ))
            .args([
                "-nodefaults",
                "-display",
                "none",
                "-serial",
                "stdio",
                "-no-reboot",
            ])
            // For a hang's report: where the test host's CPU is.
            .arg("-monitor")
            .arg(format!("unix:{},server=on,wait=off", monitor.display()))
            .arg("-kernel")
            .arg(&kernel)
            .arg("-initrd")
            .arg(&initrd)
            .arg("-append")
            .arg(format!(
                "console=ttyS0 panic=-1 quiet loglevel=1 hull.cmd={}",
                command.display()
            ))
            .arg("-chardev")
            .arg(format!("socket,id=fs0,path={}", socket.display()))
            .args(["-device", "vhost-user-fs-pci,chardev=fs0,tag=hostroot"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    )
    .expect("start the KVM test host");
    let mut stdout = qemu.child().stdout.take().expect("console pipe");
    let reader = std::thread::spawn(move || {
        let mut console = Vec::new();
        // A live copy, to watch a long run or one that hangs.
        let mut live = std::env::var_os("HULL_KVM_HOST_CONSOLE")
            .and_then(|path| std::fs::File::create(path).ok());
        let mut chunk = [0u8; 4096];
        loop {
            let read = match stdout.read(&mut chunk) {
                Ok(0) => break,
                Ok(read) => read,
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            console.extend_from_slice(&chunk[..read]);
            if let Some(file) = live.as_mut() {
                let _ = std::io::Write::write_all(file, &chunk[..read]);
            }
        }
        String::from_utf8_lossy(&console).into_owned()
    });
    let finished = qemu.wait_timeout(timeout);
    let cpu = if finished.is_none() {
        cpu_state(&monitor)
    } else {
        String::new()
    };
    let virtiofsd_exit = virtiofsd.exited();
    qemu.kill();
    virtiofsd.kill();
    let console = reader.join().expect("console reader");
    if finished.is_none() {
        return Err(format!(
            "the KVM test host did not finish in {timeout:?} (its virtiofsd: {}); its CPU:\n{cpu}\nconsole:\n{console}",
            virtiofsd_exit.map_or("running".to_owned(), |status| format!("ended, {status}"))
        ));
    }
    Ok(parse(&console).unwrap_or_else(|| panic!("no HULL-END on the console:\n{console}")))
}

/// The registers of the test host's CPU, sampled a few times through the
/// QEMU monitor: whether a hung test host spins in its kernel (and where)
/// or in user space, and whether it is inside a nested guest.
fn cpu_state(monitor: &Path) -> String {
    use std::io::Write;
    use std::os::unix::net::UnixStream;
    let mut report = String::new();
    for _ in 0..3 {
        let Ok(mut stream) = UnixStream::connect(monitor) else {
            return format!("(no QEMU monitor at {})", monitor.display());
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = stream.write_all(b"info registers\n");
        let mut reply = Vec::new();
        let mut chunk = [0u8; 4096];
        // The reply ends when the monitor goes quiet.
        while let Ok(read) = stream.read(&mut chunk) {
            if read == 0 {
                break;
            }
            reply.extend_from_slice(&chunk[..read]);
        }
        let reply = String::from_utf8_lossy(&reply);
        let interesting: Vec<&str> = reply
            .lines()
            .filter(|line| {
                ["RIP=", "EIP=", "CS =", "CR0=", "EFER="]
                    .iter()
                    .any(|key| line.trim_start().starts_with(key))
            })
            .collect();
        report.push_str(&interesting.join("\n"));
        report.push('\n');
        std::thread::sleep(Duration::from_millis(500));
    }
    report
}

/// How a test binary re-runs some of its own tests in the test host.
#[derive(Debug, Clone, Copy)]
pub struct Rerun<'a> {
    /// Exact test names; all of them must run and pass.
    pub tests: &'a [&'a str],
    /// `NAME=value` words put before the command, telling the inner tests
    /// where they run.
    pub env: &'a str,
    /// The inner tests are `#[ignore]`d ones that only run there.
    pub include_ignored: bool,
    /// A tmpfs on /tmp: containerd's overlay snapshots cannot sit on the
    /// test host's overlay root.
    pub tmpfs_tmp: bool,
    pub memory_mib: u32,
    pub vcpus: u32,
    pub timeout: Duration,
}

/// Set in the test host by [`rerun_under_hull_vmm`]: the VMM every pod
/// there must run under.
pub const EXPECT_BACKEND: &str = "HULL_EXPECT_BACKEND";

/// Re-runs `tests` of the calling test binary in the test host, where the
/// default backend is hull-vmm, with [`EXPECT_BACKEND`] saying so; see
/// [`rerun_tests`]. Inside the test host, where the same test runs again,
/// it does nothing.
pub fn rerun_under_hull_vmm(tests: &[&str], timeout: Duration) {
    rerun_under_hull_vmm_with_vcpus(tests, 1, timeout);
}

/// [`rerun_under_hull_vmm`] on a test host with `vcpus` vCPUs.
pub fn rerun_under_hull_vmm_with_vcpus(tests: &[&str], vcpus: u32, timeout: Duration) {
    if std::env::var_os(EXPECT_BACKEND).is_some() {
        return;
    }
    rerun_tests(Rerun {
        tests,
        env: &format!("{EXPECT_BACKEND}=hull-vmm"),
        include_ignored: false,
        tmpfs_tmp: true,
        memory_mib: 3072,
        vcpus,
        timeout,
    });
}

/// Boots the test host and runs `rerun.tests` of the calling test binary in
/// it, one process per test; panics with the output and console unless
/// every one of them passed. The guest image directory (`HULL_GUEST_DIR`)
/// goes along when set. Returns the output for further checks.
///
/// Each test gets half of `rerun.timeout`: one that runs longer is dumped
/// (processes, kernel and user stacks, containerd's logs) and killed, so a
/// test that hangs in the test host is reported as itself, with where it
/// waits, rather than as a test host that never finished.
pub fn rerun_tests(rerun: Rerun<'_>) -> String {
    let exe = std::env::current_exe().expect("test binary");
    let script = rerun_script(&rerun, &exe);
    let mut outcome = run_with_vcpus(&script, rerun.memory_mib, rerun.vcpus, rerun.timeout);
    if outcome.output.contains(TEST_TIMEOUT_MARK) {
        // As rare as the test host's own hangs, and handled as they are.
        report_hang(&format!(
            "a test in the KVM test host hung:\n{}",
            outcome.output
        ));
        outcome = run_with_vcpus(&script, rerun.memory_mib, rerun.vcpus, rerun.timeout);
    }
    println!("{}", outcome.output);
    assert_eq!(
        outcome.exit_code, 0,
        "output:\n{}\nconsole:\n{}",
        outcome.output, outcome.console
    );
    // The inner tests ran, rather than being filtered out.
    let passed = outcome.output.matches("test result: ok. 1 passed").count();
    assert_eq!(passed, rerun.tests.len(), "{}", outcome.output);
    outcome.output
}

/// What a test that outlives its time shows before it is killed.
pub const TEST_TIMEOUT_MARK: &str = "HULL-TEST-TIMEOUT";

/// The test host's script for [`rerun_tests`].
fn rerun_script(rerun: &Rerun<'_>, exe: &Path) -> String {
    let mut script =
        String::from("export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n");
    if rerun.tmpfs_tmp {
        script.push_str("mount -t tmpfs tmpfs /tmp\n");
    }
    if let Ok(dir) = std::env::var("HULL_GUEST_DIR") {
        script.push_str(&format!("export HULL_GUEST_DIR={dir}\n"));
    }
    script.push_str(&format!(
        "limit={}\nmark={TEST_TIMEOUT_MARK}\nexe={}\nignored={}\n",
        (rerun.timeout / 2).as_secs(),
        exe.display(),
        if rerun.include_ignored {
            "--include-ignored"
        } else {
            ""
        },
    ));
    script.push_str(&format!("run_test() {{\n  {} RUST_BACKTRACE=1 \"$exe\" --exact --nocapture --test-threads 1 $ignored \"$1\" &\n", rerun.env));
    script.push_str(WATCHDOG);
    script.push_str("status=0\n");
    for test in rerun.tests {
        script.push_str(&format!("run_test {test} || status=1\n"));
    }
    script.push_str("exit $status\n");
    script
}

/// The rest of `run_test`: the test runs in the background as `$!`; a
/// watchdog dumps and kills it after `$limit` seconds.
const WATCHDOG: &str = r#"  test=$!
  (
    # Killed at the test's end, it takes its sleep along.
    sleep "$limit" &
    sleeper=$!
    trap 'kill $sleeper; exit 0' TERM
    wait $sleeper
    echo "$mark $1 still runs after ${limit}s; processes:"
    ps -eo pid,ppid,stat,etimes,wchan:24,args --forest | cut -c1-240
    for pid in $test $(pgrep containerd-shim) $(pgrep -x containerd); do
      echo "--- kernel stacks of $pid ($(cat /proc/$pid/comm 2>/dev/null))"
      for task in /proc/$pid/task/*; do
        echo "$task: $(cat $task/comm 2>/dev/null) $(cat $task/wchan 2>/dev/null)"
        cat $task/stack 2>/dev/null | head -n 8
      done
    done
    echo "--- threads of the test"
    gdb -p $test -batch -ex 'thread apply all bt 20' 2>&1 | grep '^#\|^Thread' | head -n 200
    for log in $(find /tmp -maxdepth 5 -name containerd.log 2>/dev/null); do
      echo "--- $log"
      tail -n 80 "$log"
    done
    kill -9 $test
  ) &
  watchdog=$!
  wait $test
  code=$?
  kill $watchdog 2>/dev/null
  wait $watchdog 2>/dev/null
  return $code
}
"#;

fn wait_for(socket: &Path, helper: &mut Helper) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(helper.exited().is_none(), "{} exited", helper.name);
        assert!(
            Instant::now() < deadline,
            "{} did not appear",
            socket.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The script's output lies between `HULL-BEGIN` and `HULL-END <code>`.
fn parse(console: &str) -> Option<Outcome> {
    let console = console.replace("\r\n", "\n");
    let end = console.rfind("HULL-END ")?;
    let exit_code = console[end + "HULL-END ".len()..]
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()?;
    let output = match console[..end].rfind("HULL-BEGIN\n") {
        Some(begin) => console[begin + "HULL-BEGIN\n".len()..end].to_owned(),
        None => String::new(),
    };
    Some(Outcome {
        output,
        exit_code,
        console: console.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_output_and_exit_code() {
        let outcome = parse("firmware noise\r\nHULL-BEGIN\r\nline one\r\nline two\r\nHULL-END 3\r\n[ 10.7] reboot: Power down\r\n")
            .expect("parsed");
        assert_eq!(outcome.output, "line one\nline two\n");
        assert_eq!(outcome.exit_code, 3);
        assert!(parse("HULL-BEGIN\nno end").is_none());
    }

    #[test]
    fn a_hung_test_hosts_registers_are_read_through_its_monitor() {
        let dir = tempfile::tempdir().expect("dir");
        let monitor = dir.path().join("monitor.sock");
        // No kernel and no disk: the firmware finds nothing to boot and
        // stays there, as good as a hang.
        let mut qemu = Command::new("qemu-system-x86_64")
            .args([
                "-accel",
                "tcg",
                "-nodefaults",
                "-display",
                "none",
                "-m",
                "64M",
            ])
            .arg("-monitor")
            .arg(format!("unix:{},server=on,wait=off", monitor.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("qemu");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !monitor.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let state = cpu_state(&monitor);
        let _ = qemu.kill();
        let _ = qemu.wait();
        assert_eq!(state.matches("IP=").count(), 3, "{state}");
        assert_eq!(state.matches("EFER=").count(), 3, "{state}");
        assert!(cpu_state(&monitor).starts_with("(no QEMU monitor at"));
    }

    #[test]
    fn a_test_that_outlives_its_time_is_dumped_and_killed_and_the_others_still_run() {
        let dir = tempfile::tempdir().expect("dir");
        // Stands in for the test binary: its last argument is the test.
        let exe = dir.path().join("fake-tests");
        std::fs::write(
            &exe,
            "#!/bin/sh\necho \"ran $FLAG $*\"\ncase \"$5\" in hangs) exec sleep 600;; fails) exit 3;; esac\necho 'test result: ok. 1 passed'\n",
        )
        .expect("write");
        std::fs::set_permissions(&exe, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
        let rerun = Rerun {
            tests: &["first", "hangs", "fails", "last"],
            env: "FLAG=set",
            include_ignored: false,
            tmpfs_tmp: false,
            memory_mib: 0,
            vcpus: 1,
            timeout: Duration::from_secs(4),
        };
        let started = Instant::now();
        // A file, as in the test host: `ps` must not show the script.
        let script = dir.path().join("cmd.sh");
        std::fs::write(&script, rerun_script(&rerun, &exe)).expect("write");
        let output = Command::new("sh").arg(&script).output().expect("sh");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert_eq!(output.status.code(), Some(1), "{stdout}");
        for test in rerun.tests {
            assert!(
                stdout.contains(&format!(
                    "ran set --exact --nocapture --test-threads 1 {test}"
                )),
                "{stdout}"
            );
        }
        assert!(
            stdout.contains(&format!("{TEST_TIMEOUT_MARK} hangs still runs after 2s")),
            "{stdout}"
        );
        assert_eq!(stdout.matches(TEST_TIMEOUT_MARK).count(), 1, "{stdout}");
        assert_eq!(stdout.matches("test result: ok. 1 passed").count(), 2);
        assert!(stdout.contains("--- kernel stacks of"), "{stdout}");
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the hung test was not killed"
        );
    }
}
