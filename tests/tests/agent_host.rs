//! The guest agent on the host: a real `hull-agent` over a Unix socket, real
//! libcontainer containers on a busybox root filesystem. Needs root.

use hull_proto::v1 as api;
use hull_tests::agent::{AgentUnderTest, TestAgent, pipes, process_ref};
use hull_tests::{spec, unique_id};

#[tokio::test]
async fn exit_codes_and_separate_streams() {
    let mut agent = TestAgent::start().await;

    let hi = agent.run(&["echo", "hi"]).await;
    assert_eq!(hi.stdout, b"hi\n", "agent log:\n{}", agent.log());
    assert_eq!(hi.wait.exit_status, 0);

    let seven = agent.run(&["sh", "-c", "exit 7"]).await;
    assert_eq!(seven.wait.exit_status, 7);

    let both = agent.run(&["sh", "-c", "echo out; echo err >&2"]).await;
    assert_eq!(both.stdout, b"out\n");
    assert_eq!(both.stderr, b"err\n");
    assert_eq!((both.wait.stdout_bytes, both.wait.stderr_bytes), (4, 4));
}

fn sha256(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    format!("{:x}", Sha256::digest(bytes))
}

#[tokio::test]
async fn ten_mib_of_stdout_arrive_byte_exact_before_wait_returns() {
    const SIZE: usize = 10 * 1024 * 1024;
    let mut agent = TestAgent::start().await;
    let id = unique_id("bulk");
    // The container keeps a copy of what it writes, so the bytes can be
    // compared with what it really produced, not with a pattern.
    let script = format!("head -c {SIZE} /dev/urandom > /data/sent; cat /data/sent");
    let finished = agent
        .run_container(&id, &spec::simple(&["sh", "-c", &script]))
        .await;
    assert_eq!(finished.wait.exit_status, 0, "agent log:\n{}", agent.log());
    // The agent counted every byte into the stream before it answered Wait.
    assert_eq!(finished.wait.stdout_bytes, SIZE as u64);
    let sent = std::fs::read(agent.dir.path().join("rootfs").join(&id).join("data/sent"))
        .expect("the container's copy");
    assert_eq!(finished.stdout.len(), SIZE);
    assert_eq!(sha256(&finished.stdout), sha256(&sent));
    agent.remove(&id, false).await.expect("remove");
}

#[tokio::test]
async fn output_is_complete_when_removed_right_after_wait() {
    let mut agent = TestAgent::start().await;
    let id = unique_id("drain");
    let rootfs = agent.rootfs(&id);
    // The last 64 KiB still sit in the pipe when the process exits (it may
    // exit once they fit in the pipe's buffer): they are read after the exit.
    // (A child cannot write after the exit: the init's exit takes the rest of
    // the container along, as with runc.)
    let script = "echo early; exec head -c 65536 /dev/zero";
    let spec = spec::container(&["sh", "-c", script], "", &[spec::Namespace::new("mount")]);
    let stdout_only = Some(api::Stdio {
        stdout: true,
        ..Default::default()
    });
    agent
        .create(&id, &spec, &rootfs, stdout_only)
        .await
        .expect("create");
    let stdout = agent.read_output(&id, "", api::OutputStream::Stdout).await;
    agent.start_container(&id).await.expect("start");
    let wait = agent.wait(&id, "").await;
    agent.remove(&id, true).await.expect("remove");
    let output = stdout.await.expect("reader");
    assert_eq!(output.len(), 6 + 65536);
    assert!(output.starts_with(b"early\n"));
    assert_eq!(wait.stdout_bytes, 6 + 65536);
}

#[tokio::test]
async fn stdin_is_echoed_and_close_stdin_ends_it() {
    const SIZE: usize = 1024 * 1024;
    let mut agent = TestAgent::start().await;
    let id = unique_id("cat");
    let rootfs = agent.rootfs(&id);
    agent
        .create(&id, &spec::simple(&["cat"]), &rootfs, pipes(true))
        .await
        .expect("create");
    let stdout = agent.read_output(&id, "", api::OutputStream::Stdout).await;
    agent.start_container(&id).await.expect("start");

    let input: Vec<u8> = (0..SIZE).map(|i| (i * 7 + i / 4096) as u8).collect();
    let chunks: Vec<api::StdinChunk> = input
        .chunks(32 * 1024)
        .enumerate()
        .map(|(index, data)| api::StdinChunk {
            process: if index == 0 {
                process_ref(&id, "")
            } else {
                None
            },
            data: data.to_vec(),
        })
        .collect();
    let written = agent
        .client
        .write_stdin(futures::stream::iter(chunks))
        .await
        .expect("write stdin")
        .into_inner();
    assert_eq!(written.bytes_written, SIZE as u64);
    agent
        .client
        .close_stdin(api::CloseStdinRequest {
            process: process_ref(&id, ""),
        })
        .await
        .expect("close stdin");
    let wait = agent.wait(&id, "").await;
    assert_eq!(wait.exit_status, 0);
    let echoed = stdout.await.expect("reader");
    assert_eq!(echoed.len(), SIZE);
    assert_eq!(sha256(&echoed), sha256(&input));
    agent.remove(&id, false).await.expect("remove");
}

#[tokio::test]
async fn tty_size_follows_resize() {
    let mut agent = TestAgent::start().await;
    let id = unique_id("tty");
    let rootfs = agent.rootfs(&id);
    let stdio = Some(api::Stdio {
        stdin: true,
        stdout: true,
        stderr: false,
        terminal: true,
    });
    agent
        .create(&id, &spec::simple(&["stty", "size"]), &rootfs, stdio)
        .await
        .unwrap_or_else(|err| panic!("create: {err}\nagent log:\n{}", agent.log()));
    agent
        .client
        .resize_tty(api::ResizeTtyRequest {
            process: process_ref(&id, ""),
            rows: 33,
            cols: 111,
        })
        .await
        .expect("resize");
    let stdout = agent.read_output(&id, "", api::OutputStream::Stdout).await;
    agent.start_container(&id).await.expect("start");
    let wait = agent.wait(&id, "").await;
    assert_eq!(wait.exit_status, 0);
    // A tty turns "\n" into "\r\n".
    assert_eq!(
        String::from_utf8_lossy(&stdout.await.expect("reader")),
        "33 111\r\n"
    );

    // Resizing a process without a tty names it.
    let plain = unique_id("notty");
    let rootfs = agent.rootfs(&plain);
    agent
        .create(&plain, &spec::simple(&["true"]), &rootfs, pipes(false))
        .await
        .expect("create");
    let err = agent
        .client
        .resize_tty(api::ResizeTtyRequest {
            process: process_ref(&plain, ""),
            rows: 1,
            cols: 1,
        })
        .await
        .expect_err("no tty");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(err.message().contains(&plain), "{}", err.message());
    agent.remove(&id, false).await.expect("remove");
    agent.remove(&plain, true).await.expect("remove");
}

#[tokio::test]
async fn exec_sees_the_container_pid_namespace_and_files() {
    let mut agent = TestAgent::start().await;
    let id = unique_id("exec");
    let rootfs = agent.rootfs(&id);
    let init_pid = agent
        .create(
            &id,
            &spec::simple(&["sh", "-c", "echo marker > /tmp/m; exec sleep 1000"]),
            &rootfs,
            pipes(false),
        )
        .await
        .expect("create");
    agent.start_container(&id).await.expect("start");
    // Wait until the init has written its file and become `sleep`.
    let mut seen = String::new();
    // Up to ten seconds: the machine may be busy with other suites.
    for _ in 0..200 {
        seen = agent
            .exec(
                &id,
                &unique_id("probe"),
                &["sh", "-c", "cat /tmp/m; cat /proc/1/comm"],
            )
            .await
            .stdout_text();
        if seen == "marker\nsleep\n" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(seen, "marker\nsleep\n");

    let ns = agent
        .exec(
            &id,
            "ns",
            &[
                "sh",
                "-c",
                "readlink /proc/self/ns/pid; readlink /proc/self/ns/mnt",
            ],
        )
        .await;
    let expected = format!(
        "{}\n{}\n",
        std::fs::read_link(format!("/proc/{init_pid}/ns/pid"))
            .expect("ns")
            .display(),
        std::fs::read_link(format!("/proc/{init_pid}/ns/mnt"))
            .expect("ns")
            .display()
    );
    assert_eq!(ns.stdout_text(), expected);
    assert_eq!(ns.wait.exit_status, 0);
    agent.remove(&id, true).await.expect("remove");
}

#[tokio::test]
async fn sigterm_and_sigkill() {
    let mut agent = TestAgent::start().await;
    let id = unique_id("sig");
    let rootfs = agent.rootfs(&id);
    agent
        .create(&id, &spec::simple(&["sleep", "1000"]), &rootfs, None)
        .await
        .expect("create");
    agent.start_container(&id).await.expect("start");

    // The init of a PID namespace ignores SIGTERM without a handler, as in
    // any container runtime; an exec'd `sleep` does not.
    agent
        .client
        .exec_process(api::ExecProcessRequest {
            container_id: id.clone(),
            exec_id: "sleeper".into(),
            process_json: serde_json::to_vec(&spec::process(&["sleep", "1000"])).expect("json"),
            stdio: None,
        })
        .await
        .expect("exec");
    let signal = |exec_id: &str, signal: u32| api::SignalProcessRequest {
        process: process_ref(&id, exec_id),
        signal,
        all: false,
    };
    agent
        .client
        .signal_process(signal("sleeper", 15))
        .await
        .expect("SIGTERM");
    assert_eq!(agent.wait(&id, "sleeper").await.exit_status, 143);

    agent
        .client
        .signal_process(signal("", 9))
        .await
        .expect("SIGKILL");
    assert_eq!(agent.wait(&id, "").await.exit_status, 137);
    agent.remove(&id, false).await.expect("remove");
}

#[tokio::test]
async fn containers_share_the_namespaces_their_specs_name() {
    let mut agent = TestAgent::start().await;
    let first = unique_id("pod-a");
    let rootfs = agent.rootfs(&first);
    let first_pid = agent
        .create(
            &first,
            &spec::container(&["sleep", "1000"], "pod-a", &spec::own_namespaces()),
            &rootfs,
            None,
        )
        .await
        .expect("create first");
    agent.start_container(&first).await.expect("start first");

    let second = unique_id("pod-b");
    let joined = [
        spec::Namespace::join("uts", first_pid),
        spec::Namespace::join("ipc", first_pid),
        spec::Namespace::join("network", first_pid),
        spec::Namespace::new("pid"),
        spec::Namespace::new("mount"),
    ];
    let script = "hostname; for ns in uts ipc net mnt; do readlink /proc/self/ns/$ns; done";
    let second_spec = spec::container(&["sh", "-c", script], "", &joined);
    let finished = agent.run_container(&second, &second_spec).await;
    assert_eq!(
        finished.wait.exit_status,
        0,
        "{}",
        String::from_utf8_lossy(&finished.stderr)
    );

    let link = |ns: &str| {
        std::fs::read_link(format!("/proc/{first_pid}/ns/{ns}"))
            .expect("ns link")
            .display()
            .to_string()
    };
    let lines: Vec<String> = finished.stdout_text().lines().map(str::to_owned).collect();
    assert_eq!(lines[0], "pod-a");
    assert_eq!(lines[1], link("uts"));
    assert_eq!(lines[2], link("ipc"));
    assert_eq!(lines[3], link("net"));
    assert_ne!(lines[4], link("mnt"), "the mount namespace was not shared");
    agent.remove(&second, false).await.expect("remove");
    agent.remove(&first, true).await.expect("remove");
}

#[tokio::test]
async fn the_spec_sets_user_env_cwd_rlimits_capabilities_and_seccomp() {
    let mut agent = TestAgent::start().await;
    let id = unique_id("spec");
    let script = "id -u; id -g; pwd; echo $GREETING; ulimit -n; \
                  grep CapEff /proc/self/status | tr -d '\\t'; \
                  mkdir /tmp/blocked 2>/dev/null && echo mkdir-allowed || echo mkdir-denied";
    let mut container = spec::simple(&["sh", "-c", script]);
    let process = &mut container["process"];
    process["user"] = serde_json::json!({ "uid": 1000, "gid": 1000 });
    process["cwd"] = serde_json::json!("/tmp");
    process["env"]
        .as_array_mut()
        .expect("env")
        .push(serde_json::json!("GREETING=hello"));
    process["rlimits"] = serde_json::json!([{ "type": "RLIMIT_NOFILE", "hard": 512, "soft": 256 }]);
    process["capabilities"] = serde_json::json!({
        "bounding": ["CAP_KILL"], "effective": [], "permitted": ["CAP_KILL"],
    });
    container["linux"]["seccomp"] = serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [{ "names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO" }],
    });
    let finished = agent.run_container(&id, &container).await;
    assert_eq!(
        finished.stdout_text(),
        "1000\n1000\n/tmp\nhello\n256\nCapEff:0000000000000000\nmkdir-denied\n",
        "stderr: {}",
        String::from_utf8_lossy(&finished.stderr)
    );
    agent.remove(&id, false).await.expect("remove");

    // The same command without the filter may mkdir: the denial was seccomp's.
    let id = unique_id("noseccomp");
    let finished = agent
        .run_container(
            &id,
            &spec::simple(&["sh", "-c", "mkdir /tmp/ok && echo mkdir-allowed"]),
        )
        .await;
    assert_eq!(finished.stdout_text(), "mkdir-allowed\n");
    agent.remove(&id, false).await.expect("remove");
}

/// runc applies the container's seccomp profile to every exec; libcontainer's
/// exec leaves it out, and the agent applies it (agent/src/runtime/
/// exec_seccomp.rs). Without `noNewPrivileges` that takes capabilities the
/// process may not have, which must be gone before the payload runs.
#[tokio::test]
async fn an_exec_runs_under_the_containers_seccomp_profile_with_only_its_own_capabilities() {
    let mut agent = TestAgent::start().await;
    let id = unique_id("execsec");
    let rootfs = agent.rootfs(&id);
    let mut container = spec::simple(&["sleep", "1000"]);
    container["linux"]["seccomp"] = serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [{ "names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO" }],
    });
    agent
        .create(&id, &container, &rootfs, pipes(false))
        .await
        .expect("create");
    agent.start_container(&id).await.expect("start");
    let script = "grep -E '^(Seccomp|CapEff|CapPrm|CapBnd):' /proc/self/status | tr -d '\\t'; \
                  mkdir /tmp/blocked 2>/dev/null && echo mkdir-allowed || echo mkdir-denied";

    // Root without no_new_privileges, holding CAP_KILL only: root's execve
    // gives it its whole bounding set, so a capability the agent granted to
    // install the filter and failed to take back would show here.
    let mut process = spec::process(&["sh", "-c", script]);
    process
        .as_object_mut()
        .expect("process")
        .remove("noNewPrivileges");
    process["capabilities"] = serde_json::json!({
        "bounding": ["CAP_KILL"], "effective": ["CAP_KILL"], "permitted": ["CAP_KILL"],
    });
    let root = agent.exec_process(&id, "root", &process).await;
    assert_eq!(
        root.stdout_text(),
        "CapPrm:0000000000000020\nCapEff:0000000000000020\nCapBnd:0000000000000020\nSeccomp:2\nmkdir-denied\n",
        "stderr: {}",
        String::from_utf8_lossy(&root.stderr)
    );

    // Another user, no capabilities at all.
    process["user"] = serde_json::json!({ "uid": 1000, "gid": 1000 });
    process["capabilities"] =
        serde_json::json!({ "bounding": [], "effective": [], "permitted": [] });
    let user = agent.exec_process(&id, "user", &process).await;
    assert_eq!(
        user.stdout_text(),
        "CapPrm:0000000000000000\nCapEff:0000000000000000\nCapBnd:0000000000000000\nSeccomp:2\nmkdir-denied\n",
        "stderr: {}",
        String::from_utf8_lossy(&user.stderr)
    );

    // With no_new_privileges and the default capabilities.
    let nnp = agent.exec(&id, "nnp", &["sh", "-c", script]).await;
    assert!(
        nnp.stdout_text().ends_with("Seccomp:2\nmkdir-denied\n"),
        "{}\nstderr: {}",
        nnp.stdout_text(),
        String::from_utf8_lossy(&nnp.stderr)
    );
    agent.remove(&id, true).await.expect("remove");
}

/// A container in another's PID namespace (a CRI pod's default) whose init
/// leaves a child holding its stdout: when the init is killed, the rest of
/// the container goes with it, as with runc's shim, and the init's exit is
/// reported. Before, the child kept the output open and the exit never came.
#[tokio::test]
async fn the_init_s_exit_ends_the_container_when_a_child_holds_its_stdout() {
    let mut agent = TestAgent::start().await;
    let pause = unique_id("pidpod");
    let rootfs = agent.rootfs(&pause);
    let pause_pid = agent
        .create(&pause, &spec::simple(&["sleep", "1000"]), &rootfs, None)
        .await
        .expect("create the pod's first container");
    agent.start_container(&pause).await.expect("start");

    let id = unique_id("holder");
    let rootfs = agent.rootfs(&id);
    let namespaces = [
        spec::Namespace::join("pid", pause_pid),
        spec::Namespace::new("mount"),
        spec::Namespace::new("ipc"),
        spec::Namespace::new("uts"),
        spec::Namespace::new("network"),
    ];
    let script = "sleep 1000 & echo started; wait";
    agent
        .create(
            &id,
            &spec::container(&["sh", "-c", script], "", &namespaces),
            &rootfs,
            pipes(false),
        )
        .await
        .expect("create");
    let stdout = agent.read_output(&id, "", api::OutputStream::Stdout).await;
    agent.start_container(&id).await.expect("start");
    // The child is running once the container has two processes.
    let mut processes = Vec::new();
    for _ in 0..200 {
        processes = agent.processes(&id).await;
        if processes.len() == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(processes.len(), 2, "{processes:?}");

    agent
        .client
        .signal_process(api::SignalProcessRequest {
            process: process_ref(&id, ""),
            signal: 9,
            all: false,
        })
        .await
        .expect("SIGKILL the init");
    let waited = tokio::time::timeout(std::time::Duration::from_secs(20), agent.wait(&id, ""))
        .await
        .expect("the init's exit was never reported");
    assert_eq!(waited.exit_status, 137);
    assert_eq!(stdout.await.expect("stdout"), b"started\n");
    let left = agent.processes(&id).await;
    assert!(left.is_empty(), "left running: {left:?}");
    agent.remove(&id, false).await.expect("remove");
    agent.remove(&pause, true).await.expect("remove");
}
