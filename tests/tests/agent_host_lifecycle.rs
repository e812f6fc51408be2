//! The guest agent on the host: bad input, cleanup, and the container
//! lifecycle RPCs (pause, resume, stats, processes, sandbox). Needs root.

use std::path::Path;
use std::time::Duration;

use hull_proto::v1 as api;
use hull_tests::agent::{AgentUnderTest, TestAgent, pipes, process_ref};
use hull_tests::{spec, unique_id};
use tonic::Code;

fn assert_status(result: Result<impl std::fmt::Debug, tonic::Status>, code: Code, needle: &str) {
    let status = result.expect_err("the request should fail");
    assert_eq!(status.code(), code, "{}", status.message());
    assert!(
        status.message().contains(needle),
        "{:?} does not name {needle:?}",
        status.message()
    );
}

#[tokio::test]
async fn bad_input_is_named_and_the_agent_keeps_serving() {
    let mut agent = TestAgent::start().await;
    let rootfs = agent.rootfs("bad");

    // An invalid spec: the message names the field.
    let mut bad_spec = spec::simple(&["true"]);
    bad_spec["process"]["args"] = serde_json::json!("not-a-list");
    assert_status(
        agent
            .create(&unique_id("c"), &bad_spec, &rootfs, None)
            .await,
        Code::InvalidArgument,
        "oci_spec_json.process.args",
    );
    let mut empty_args = spec::simple(&["true"]);
    empty_args["process"]["args"] = serde_json::json!([]);
    assert_status(
        agent
            .create(&unique_id("c"), &empty_args, &rootfs, None)
            .await,
        Code::InvalidArgument,
        "oci_spec_json.process.args",
    );

    // A missing rootfs.
    assert_status(
        agent
            .create(
                &unique_id("c"),
                &spec::simple(&["true"]),
                Path::new("/no/such/rootfs"),
                None,
            )
            .await,
        Code::InvalidArgument,
        "rootfs: /no/such/rootfs does not exist",
    );

    // An id that could escape the state directory.
    assert_status(
        agent
            .create("../escape", &spec::simple(&["true"]), &rootfs, None)
            .await,
        Code::InvalidArgument,
        "container_id",
    );

    // A duplicate id.
    let id = unique_id("dup");
    agent
        .create(&id, &spec::simple(&["true"]), &rootfs, None)
        .await
        .expect("first create");
    assert_status(
        agent
            .create(&id, &spec::simple(&["true"]), &rootfs, None)
            .await,
        Code::AlreadyExists,
        &id,
    );

    // An unknown id, for a container and for an exec.
    assert_status(
        agent.start_container("nope").await,
        Code::NotFound,
        "\"nope\"",
    );
    let unknown_exec = agent
        .client
        .wait_process(api::WaitProcessRequest {
            process: process_ref(&id, "ghost"),
        })
        .await;
    assert_status(unknown_exec, Code::NotFound, "\"ghost\"");

    // Exec into a stopped container, and a signal to an exited process.
    agent.start_container(&id).await.expect("start");
    assert_eq!(agent.wait(&id, "").await.exit_status, 0);
    let exec = agent
        .client
        .exec_process(api::ExecProcessRequest {
            container_id: id.clone(),
            exec_id: "late".into(),
            process_json: serde_json::to_vec(&spec::process(&["true"])).expect("json"),
            stdio: None,
        })
        .await;
    assert_status(
        exec,
        Code::FailedPrecondition,
        &format!("{id:?}: it is stopped"),
    );
    let signal = agent
        .client
        .signal_process(api::SignalProcessRequest {
            process: process_ref(&id, ""),
            signal: 15,
            all: false,
        })
        .await;
    assert_status(
        signal,
        Code::NotFound,
        &format!("process {id}/init has already exited"),
    );

    // A bad exec spec names its field too.
    let running = unique_id("running");
    agent
        .create(
            &running,
            &spec::simple(&["sleep", "1000"]),
            &agent.rootfs(&running),
            None,
        )
        .await
        .expect("create");
    agent.start_container(&running).await.expect("start");
    let exec = agent
        .client
        .exec_process(api::ExecProcessRequest {
            container_id: running.clone(),
            exec_id: "e1".into(),
            process_json: br#"{"args":["true"],"cwd":"/","user":{"uid":"root"}}"#.to_vec(),
            stdio: None,
        })
        .await;
    assert_status(exec, Code::InvalidArgument, "process_json.user.uid");

    // An image whose program does not exist fails at create, naming it.
    let failed = unique_id("c");
    let missing = agent
        .create(
            &failed,
            &spec::simple(&["/bin/no-such-program"]),
            &rootfs,
            None,
        )
        .await;
    assert_status(missing, Code::Internal, "no-such-program");
    // The failed create leaves no runtime state, bundle or cgroup, so the id
    // can be used again at once.
    let state = agent.state_dir();
    assert!(
        !state.join("runtime").join(&failed).exists(),
        "runtime state is left"
    );
    assert!(
        !state.join("bundles").join(&failed).exists(),
        "the bundle is left"
    );
    assert!(
        !Path::new("/sys/fs/cgroup/unified/hull")
            .join(&failed)
            .exists(),
        "the cgroup is left"
    );
    agent
        .create(&failed, &spec::simple(&["true"]), &rootfs, None)
        .await
        .expect("the id is free again");
    agent.remove(&failed, true).await.expect("remove");

    // Bad resources name their field.
    let update = agent
        .client
        .update_container(api::UpdateContainerRequest {
            container_id: running.clone(),
            resources_json: br#"{"memory":{"limit":"lots"}}"#.to_vec(),
        })
        .await;
    assert_status(update, Code::InvalidArgument, "resources_json.memory.limit");

    // Removing a running container without force is refused.
    assert_status(
        agent.remove(&running, false).await,
        Code::FailedPrecondition,
        &running,
    );

    // After all that, the agent still serves valid requests.
    let health = agent.health().await;
    assert_eq!(health.api_version, api::API_VERSION);
    let hello = agent.run(&["echo", "still serving"]).await;
    assert_eq!(hello.stdout_text(), "still serving\n");
    agent.remove(&id, false).await.expect("remove");
    agent.remove(&running, true).await.expect("remove");
}

/// Every mount point in a process's mount table.
fn mount_points(pid: u32) -> Vec<String> {
    std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split_whitespace().nth(4).map(str::to_owned))
        .collect()
}

fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[tokio::test]
async fn remove_leaves_no_process_mount_cgroup_or_state() {
    let mut agent = TestAgent::start().await;
    let id = unique_id("clean");
    let rootfs = agent.rootfs(&id);
    // Background children too, so a leak of anything but the init shows.
    let script = "sleep 1000 & sleep 1000 & exec sleep 1000";
    let init = agent
        .create(
            &id,
            &spec::simple(&["sh", "-c", script]),
            &rootfs,
            pipes(false),
        )
        .await
        .expect("create");
    agent.start_container(&id).await.expect("start");
    let mut pids = Vec::new();
    // Up to ten seconds: the machine may be busy with other suites.
    for _ in 0..500 {
        pids = agent.processes(&id).await;
        // `sh` shows until it has exec'd the last sleep.
        if pids.len() == 3 && pids.iter().all(|p| p.command == "sleep") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(pids.len(), 3, "{pids:?}");
    assert!(pids.iter().all(|p| p.command == "sleep"), "{pids:?}");
    assert!(pids.iter().any(|p| p.pid == init));
    // The container's own mounts exist, in its own mount namespace.
    let container_mounts = mount_points(init);
    assert!(container_mounts.iter().any(|m| m == "/proc"));
    assert!(container_mounts.iter().any(|m| m == "/dev/pts"));

    agent.remove(&id, true).await.expect("remove");

    for process in &pids {
        assert!(!process_exists(process.pid), "pid {} survived", process.pid);
    }
    let rootfs_text = rootfs.display().to_string();
    let agent_mounts = mount_points(agent.pid());
    assert!(
        !agent_mounts.iter().any(|m| m.starts_with(&rootfs_text)),
        "a mount of the container is left: {agent_mounts:?}"
    );
    // No other process on the host has the rootfs mounted either.
    for entry in std::fs::read_dir("/proc").expect("proc") {
        let name = entry.expect("entry").file_name();
        if let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) {
            assert!(
                !mount_points(pid)
                    .iter()
                    .any(|m| m.starts_with(&rootfs_text)),
                "pid {pid} still has the rootfs mounted"
            );
        }
    }
    let cgroup = Path::new("/sys/fs/cgroup/unified/hull").join(&id);
    let cgroup_v2 = Path::new("/sys/fs/cgroup/hull").join(&id);
    assert!(
        !cgroup.exists() && !cgroup_v2.exists(),
        "the cgroup is left"
    );
    let state = agent.state_dir();
    assert!(
        !state.join("bundles").join(&id).exists(),
        "the bundle is left"
    );
    assert!(
        !state.join("runtime").join(&id).exists(),
        "runtime state is left"
    );
    assert_eq!(
        std::fs::read_dir(state.join("tty"))
            .expect("tty dir")
            .count(),
        0
    );
    assert_status(
        agent
            .client
            .wait_process(api::WaitProcessRequest {
                process: process_ref(&id, ""),
            })
            .await,
        Code::NotFound,
        &id,
    );
}

#[tokio::test]
async fn pause_resume_and_stats() {
    let mut agent = TestAgent::start().await;
    let id = unique_id("pause");
    let rootfs = agent.rootfs(&id);
    // Counts forever into a file, so progress (or its absence) is visible.
    let script = "i=0; while true; do i=$((i+1)); echo $i > /data/count; sleep 0.02; done";
    agent
        .create(&id, &spec::simple(&["sh", "-c", script]), &rootfs, None)
        .await
        .expect("create");
    agent.start_container(&id).await.expect("start");
    let count = || {
        std::fs::read_to_string(rootfs.join("data/count"))
            .ok()
            .and_then(|text| text.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    // Waits (up to ten seconds, the machine may be busy) for the counter to
    // pass `above`.
    let advances_past = |above: u64| async move {
        for _ in 0..500 {
            if count() > above {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    };
    assert!(advances_past(0).await, "the container never ran");

    let request = || api::PauseContainerRequest {
        container_id: id.clone(),
    };
    agent
        .client
        .pause_container(request())
        .await
        .expect("pause");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let paused_at = count();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(count(), paused_at, "the container ran while paused");
    assert_status(
        agent.client.pause_container(request()).await,
        Code::FailedPrecondition,
        "it is paused",
    );

    agent
        .client
        .resume_container(api::ResumeContainerRequest {
            container_id: id.clone(),
        })
        .await
        .expect("resume");
    assert!(
        advances_past(paused_at).await,
        "the container did not resume"
    );

    let stats = agent
        .client
        .stats_container(api::StatsContainerRequest {
            container_id: id.clone(),
        })
        .await
        .expect("stats")
        .into_inner();
    let cpu = stats.cpu.expect("cpu.stat exists in every cgroup v2");
    assert!(cpu.usage_usec > 0, "{cpu:?}");
    agent.remove(&id, true).await.expect("remove");
}

#[tokio::test]
async fn sandbox_files_and_read_only_shares() {
    let mut agent = TestAgent::start().await;
    let source = agent.dir.path().join("share-src");
    std::fs::create_dir_all(&source).expect("share dir");
    std::fs::write(source.join("hello"), "from the host\n").expect("file");
    let shared = agent.state_dir().join("sandbox/shared");
    let target = shared.join("vol");
    // On a host the agent must not touch the interfaces: it refuses them,
    // naming the field, and the sandbox can still be created after.
    let refused = agent
        .client
        .create_sandbox(api::CreateSandboxRequest {
            interfaces: vec![api::Interface {
                name: "eth0".into(),
                mac: "02:00:00:00:00:01".into(),
                mtu: 1500,
                addresses: vec!["10.0.0.2/24".into()],
            }],
            ..Default::default()
        })
        .await
        .expect_err("interfaces in test mode");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(refused.message().starts_with("interfaces: "), "{refused:?}");
    let response = agent
        .client
        .create_sandbox(api::CreateSandboxRequest {
            hostname: "pod-x".into(),
            dns: Some(api::Dns {
                servers: vec!["10.96.0.10".into()],
                searches: vec!["svc.cluster.local".into()],
                options: vec!["ndots:5".into()],
            }),
            mounts: vec![api::SharedMount {
                source: source.display().to_string(),
                target: target.display().to_string(),
                fstype: "bind".into(),
                options: vec![],
                read_only: true,
            }],
            hosts: vec!["10.0.0.5 db".into()],
            interfaces: vec![],
            routes: vec![],
            policy: None,
        })
        .await
        .expect("create sandbox")
        .into_inner();
    let resolv = std::fs::read_to_string(&response.resolv_conf_path).expect("resolv.conf");
    assert_eq!(
        resolv,
        "nameserver 10.96.0.10\nsearch svc.cluster.local\noptions ndots:5\n"
    );
    let hosts = std::fs::read_to_string(&response.hosts_path).expect("hosts");
    assert!(
        hosts.contains("pod-x") && hosts.contains("10.0.0.5 db"),
        "{hosts}"
    );

    // The share is mounted in the agent's mount namespace, read-only.
    let target_text = target.display().to_string();
    let mountinfo =
        std::fs::read_to_string(format!("/proc/{}/mountinfo", agent.pid())).expect("mountinfo");
    let line = mountinfo
        .lines()
        .find(|line| line.split_whitespace().nth(4) == Some(target_text.as_str()))
        .unwrap_or_else(|| panic!("{target_text} is not mounted:\n{mountinfo}"));
    assert!(
        line.split_whitespace()
            .nth(5)
            .is_some_and(|o| o.split(',').any(|o| o == "ro")),
        "{line}"
    );

    // A container that binds the share sees the host's file and cannot write.
    let id = unique_id("reader");
    let mut container = spec::simple(&[
        "sh",
        "-c",
        "cat /vol/hello; cat /etc/resolv.conf; echo x > /vol/new",
    ]);
    container["mounts"].as_array_mut().expect("mounts").extend([
        serde_json::json!({"destination": "/vol", "type": "bind", "source": target_text, "options": ["rbind", "ro"]}),
        serde_json::json!({"destination": "/etc/resolv.conf", "type": "bind", "source": response.resolv_conf_path, "options": ["rbind", "ro"]}),
    ]);
    let finished = agent.run_container(&id, &container).await;
    assert_eq!(
        finished.stdout_text(),
        format!("from the host\n{resolv}"),
        "{}",
        String::from_utf8_lossy(&finished.stderr)
    );
    assert_ne!(
        finished.wait.exit_status, 0,
        "the write to a read-only share succeeded"
    );
    assert!(!source.join("new").exists());
    agent.remove(&id, false).await.expect("remove");

    // A second sandbox, or a target outside the sandbox, is refused.
    let outside = agent
        .client
        .create_sandbox(api::CreateSandboxRequest {
            mounts: vec![api::SharedMount {
                source: "/".into(),
                target: "/etc".into(),
                fstype: "bind".into(),
                ..Default::default()
            }],
            ..Default::default()
        })
        .await;
    assert_status(outside, Code::AlreadyExists, "sandbox");

    agent
        .client
        .destroy_sandbox(api::DestroySandboxRequest {})
        .await
        .expect("destroy");
    let mountinfo =
        std::fs::read_to_string(format!("/proc/{}/mountinfo", agent.pid())).unwrap_or_default();
    assert!(
        !mountinfo.contains(&target_text),
        "the share is still mounted"
    );
}

#[tokio::test]
async fn guest_details_describe_the_host_in_test_mode() {
    let mut agent = TestAgent::start().await;
    let details = agent.guest_details().await;
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    assert_eq!(details.kernel_release, release.trim());
    assert_eq!(details.cgroup_mode, "v2");
    assert!(!details.pid1);
    assert!(details.online_cpus >= 1 && details.memory_total_bytes > 0);
}

#[tokio::test]
async fn the_sandbox_policy_denies_exec_and_names_what_it_cannot_deny() {
    let mut agent = TestAgent::start().await;
    let policy = |names: &[&str]| api::CreateSandboxRequest {
        policy: Some(api::AgentPolicy {
            denied_rpcs: names.iter().map(|name| (*name).to_owned()).collect(),
            ..Default::default()
        }),
        ..Default::default()
    };
    // A typo or an RPC the host needs is refused, by index, and the
    // sandbox can still be created after.
    let typo = agent
        .client
        .create_sandbox(policy(&["ExecProcess", "Exec"]))
        .await;
    assert_status(typo, Code::InvalidArgument, "policy.denied_rpcs[1]");
    let needed = agent
        .client
        .create_sandbox(policy(&["DestroySandbox"]))
        .await;
    assert_status(needed, Code::InvalidArgument, "policy.denied_rpcs[0]");
    agent
        .client
        .create_sandbox(policy(&["ExecProcess"]))
        .await
        .expect("create sandbox");

    // The container runs; exec into it is denied; the rest still works.
    let id = unique_id("policy");
    let rootfs = agent.rootfs(&id);
    agent
        .create(
            &id,
            &spec::simple(&["sleep", "1000"]),
            &rootfs,
            pipes(false),
        )
        .await
        .expect("create");
    agent.start_container(&id).await.expect("start");
    let process = serde_json::to_vec(&spec::simple(&["sh"])["process"]).expect("process json");
    let denied = agent
        .client
        .exec_process(api::ExecProcessRequest {
            container_id: id.clone(),
            exec_id: "shell".into(),
            process_json: process,
            stdio: pipes(false),
        })
        .await
        .expect_err("exec is denied");
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert_eq!(
        denied.message(),
        "ExecProcess is denied by the sandbox's agent policy"
    );
    agent.remove(&id, true).await.expect("remove");
    agent
        .client
        .destroy_sandbox(api::DestroySandboxRequest {})
        .await
        .expect("destroy");
}
