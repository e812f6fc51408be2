//! The task state machine against stub agents and pods: normal lives, and
//! a guest that fails or never answers.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use containerd_shim::protos::api;
use containerd_shim::protos::events::task as events;
use containerd_shim::protos::topics;
use tokio::sync::mpsc;

use super::stub::{StubBooter, StubPod};
use super::*;
use crate::events::Queued;

/// Short deadlines, so that a hang is noticed within the test.
const CALL: Duration = Duration::from_millis(300);

fn deadlines() -> Deadlines {
    Deadlines {
        create: CALL,
        start: CALL,
        call: CALL,
        destroy: CALL,
        drain: CALL,
        abandoned: Duration::from_secs(3600),
        abandoned_after_boot: Duration::from_secs(3600),
    }
}

struct Harness {
    tasks: Tasks,
    pod: Arc<StubPod>,
    booter: Arc<StubBooter>,
    events: mpsc::Receiver<Queued>,
    /// What came out of `events` so far.
    seen: Vec<Queued>,
    bundle: tempfile::TempDir,
    exit: Arc<containerd_shim::ExitSignal>,
}

fn harness(deadlines: Deadlines) -> Harness {
    let pod = StubPod::new();
    let booter = StubBooter::new(Arc::clone(&pod));
    let (events, receiver) = Events::channel(crate::events::EVENT_QUEUE);
    let exit = Arc::new(containerd_shim::ExitSignal::default());
    let bundle = tempfile::tempdir().expect("bundle");
    std::fs::write(bundle.path().join("config.json"), "{}").expect("config.json");
    Harness {
        tasks: Tasks::new(
            Arc::clone(&booter) as Arc<dyn PodBooter>,
            events,
            deadlines,
            Arc::clone(&exit),
        ),
        pod,
        booter,
        events: receiver,
        seen: Vec::new(),
        bundle,
        exit,
    }
}

impl Harness {
    fn create_request(&self, id: &str) -> api::CreateTaskRequest {
        api::CreateTaskRequest {
            id: id.into(),
            bundle: self.bundle.path().display().to_string(),
            ..Default::default()
        }
    }

    async fn create(&self, id: &str) -> Result<api::CreateTaskResponse> {
        self.tasks.create(self.create_request(id)).await
    }

    async fn start(&self, id: &str, exec_id: &str) -> Result<api::StartResponse> {
        self.tasks
            .start(api::StartRequest {
                id: id.into(),
                exec_id: exec_id.into(),
                ..Default::default()
            })
            .await
    }

    async fn run(&self, id: &str) {
        self.create(id).await.expect("create");
        self.start(id, "").await.expect("start");
    }

    async fn kill(&self, id: &str) -> Result<()> {
        self.tasks
            .kill(api::KillRequest {
                id: id.into(),
                signal: 9,
                ..Default::default()
            })
            .await
    }

    async fn delete(&self, id: &str, exec_id: &str) -> Result<api::DeleteResponse> {
        self.tasks
            .delete(api::DeleteRequest {
                id: id.into(),
                exec_id: exec_id.into(),
                ..Default::default()
            })
            .await
    }

    /// The process's exit status, waited for at most `within`.
    async fn wait(&self, id: &str, exec_id: &str, within: Duration) -> u32 {
        let waited = self.tasks.wait(api::WaitRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        });
        tokio::time::timeout(within, waited)
            .await
            .unwrap_or_else(|_| panic!("{id} {exec_id} did not exit within {within:?}"))
            .expect("wait")
            .exit_status
    }

    fn status(&self, id: &str) -> api::Status {
        self.tasks
            .state(&api::StateRequest {
                id: id.into(),
                ..Default::default()
            })
            .expect("state")
            .status
            .enum_value_or_default()
    }

    fn drain_events(&mut self) {
        while let Ok(event) = self.events.try_recv() {
            self.seen.push(event);
        }
    }

    /// Every TaskExit so far: (exec id or container id, status).
    fn exits(&mut self) -> Vec<(String, u32)> {
        self.drain_events();
        self.seen
            .iter()
            .filter(|(topic, _)| *topic == topics::TASK_EXIT_EVENT_TOPIC)
            .filter_map(|(_, event)| event.downcast_ref::<events::TaskExit>())
            .map(|exit| (exit.id.clone(), exit.exit_status))
            .collect()
    }

    /// Waits until `count` TaskExit events came.
    async fn exits_within(&mut self, count: usize, within: Duration) -> Vec<(String, u32)> {
        let until = Instant::now() + within;
        loop {
            let mut exits = self.exits();
            if exits.len() >= count || Instant::now() > until {
                exits.sort();
                return exits;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn topics(&mut self) -> Vec<&'static str> {
        self.drain_events();
        self.seen.iter().map(|(topic, _)| *topic).collect()
    }

    fn ooms(&mut self) -> Vec<String> {
        self.drain_events();
        self.seen
            .iter()
            .filter_map(|(_, event)| event.downcast_ref::<events::TaskOOM>())
            .map(|oom| oom.container_id.clone())
            .collect()
    }
}

/// Runs `call`, which must end well within `bound`.
async fn within<T>(bound: Duration, call: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(bound, call)
        .await
        .unwrap_or_else(|_| panic!("did not end within {bound:?}"))
}

#[tokio::test]
async fn a_container_lives_create_start_exec_kill_wait_delete() {
    let mut h = harness(deadlines());
    let created = h.create("c1").await.expect("create");
    assert_eq!(h.status("c1"), api::Status::CREATED);
    let started = h.start("c1", "").await.expect("start");
    assert_eq!(started.pid, created.pid);
    assert_eq!(h.status("c1"), api::Status::RUNNING);

    h.tasks
        .exec(api::ExecProcessRequest {
            id: "c1".into(),
            exec_id: "e1".into(),
            spec: containerd_shim::protos::protobuf::MessageField::some(Default::default()),
            ..Default::default()
        })
        .await
        .expect("exec");
    h.start("c1", "e1").await.expect("start the exec");
    h.pod.agent.exit(&process_id("c1", "e1"), 3);
    assert_eq!(h.wait("c1", "e1", Duration::from_secs(2)).await, 3);
    assert_eq!(
        h.delete("c1", "e1").await.expect("delete exec").exit_status,
        3
    );

    let err = h.delete("c1", "").await.expect_err("a running task");
    assert!(matches!(err, ShimError::FailedPrecondition(_)), "{err}");
    h.kill("c1").await.expect("kill");
    assert_eq!(h.wait("c1", "", Duration::from_secs(2)).await, 137);
    let deleted = h.delete("c1", "").await.expect("delete");
    assert_eq!(deleted.exit_status, 137);

    assert_eq!(h.booter.boots.load(Ordering::SeqCst), 1);
    assert_eq!(h.pod.agent.called("RemoveContainer"), 1);
    assert_eq!(h.pod.agent.called("DestroySandbox"), 1);
    assert_eq!(h.pod.stopped.load(Ordering::SeqCst), 1);
    assert_eq!(h.pod.released.load(Ordering::SeqCst), 1);
    assert_eq!(h.pod.killed(), None);
    assert_eq!(
        h.topics(),
        [
            topics::TASK_CREATE_EVENT_TOPIC,
            topics::TASK_START_EVENT_TOPIC,
            topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            topics::TASK_EXEC_STARTED_EVENT_TOPIC,
            topics::TASK_EXIT_EVENT_TOPIC,
            topics::TASK_EXIT_EVENT_TOPIC,
            topics::TASK_DELETE_EVENT_TOPIC,
        ]
    );
    h.tasks.shutdown().await;
    within(Duration::from_secs(1), h.exit.wait()).await;
}

#[tokio::test]
async fn a_second_create_of_an_id_fails_and_a_failed_create_releases_its_mounts() {
    let h = harness(deadlines());
    h.create("c1").await.expect("create");
    let err = h.create("c1").await.expect_err("the same id");
    assert!(matches!(err, ShimError::AlreadyExists(_)), "{err}");

    h.pod.agent.fail("CreateContainer");
    let err = h.create("c2").await.expect_err("the agent fails");
    assert!(matches!(err, ShimError::Agent(_)), "{err}");
    assert_eq!(h.pod.released.load(Ordering::SeqCst), 1);
    let err = h
        .tasks
        .state(&api::StateRequest {
            id: "c2".into(),
            ..Default::default()
        })
        .expect_err("no such task");
    assert!(matches!(err, ShimError::NotFound(_)), "{err}");
}

#[tokio::test]
async fn a_hung_create_container_ends_at_its_deadline() {
    let h = harness(deadlines());
    h.pod.agent.hang("CreateContainer");
    let err = within(Duration::from_secs(2), h.create("c1"))
        .await
        .expect_err("hung");
    assert!(
        matches!(
            err,
            ShimError::AgentTimeout {
                rpc: "CreateContainer",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(h.pod.released.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn the_pod_boots_once_and_state_answers_during_the_boot() {
    let h = harness(deadlines());
    h.booter.booted.send_replace(false);
    let first = tokio::spawn({
        let tasks = h.tasks.clone();
        let request = h.create_request("c1");
        async move { tasks.create(request).await }
    });
    let second = tokio::spawn({
        let tasks = h.tasks.clone();
        let request = h.create_request("c2");
        async move { tasks.create(request).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Nothing waits on the boot but the Creates.
    let err = h
        .tasks
        .state(&api::StateRequest {
            id: "c1".into(),
            ..Default::default()
        })
        .expect_err("not created yet");
    assert!(matches!(err, ShimError::NotFound(_)), "{err}");
    let err = within(Duration::from_millis(100), h.kill("c1"))
        .await
        .expect_err("not created yet");
    assert!(matches!(err, ShimError::NotFound(_)), "{err}");
    h.booter.booted.send_replace(true);
    first.await.expect("join").expect("create c1");
    second.await.expect("join").expect("create c2");
    assert_eq!(h.booter.boots.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_hung_signal_process_kills_the_vm_and_every_process_exits_255() {
    let mut h = harness(deadlines());
    h.run("c1").await;
    h.run("c2").await;
    h.pod.agent.hang("SignalProcess");
    let started = Instant::now();
    within(Duration::from_secs(2), h.kill("c1"))
        .await
        .expect("the kill ends");
    assert!(started.elapsed() >= CALL);
    let killed = h.pod.killed().expect("the VM was killed");
    assert!(killed.contains("SignalProcess"), "{killed}");
    assert_eq!(
        h.wait("c1", "", Duration::from_secs(2)).await,
        VM_GONE_EXIT_STATUS
    );
    assert_eq!(
        h.wait("c2", "", Duration::from_secs(2)).await,
        VM_GONE_EXIT_STATUS
    );
    assert_eq!(
        h.exits_within(2, Duration::from_secs(2)).await,
        [("c1".to_owned(), 255), ("c2".to_owned(), 255)]
    );
    // Deletes end too: nothing asks the dead guest any more.
    within(Duration::from_secs(1), h.delete("c1", ""))
        .await
        .expect("delete c1");
    within(Duration::from_secs(1), h.delete("c2", ""))
        .await
        .expect("delete c2");
    assert_eq!(h.pod.agent.called("RemoveContainer"), 0);
    assert_eq!(h.pod.agent.called("DestroySandbox"), 0);
    assert_eq!(h.pod.stopped.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_hung_kill_ends_as_soon_as_the_vm_is_killed_for_another_call() {
    // The Kill's own deadline is far away: what ends it is the VM's death
    // (here, as when another call's deadline killed it), not its deadline.
    let mut h = harness(Deadlines {
        call: Duration::from_secs(30),
        ..deadlines()
    });
    h.run("c1").await;
    h.pod.agent.hang("SignalProcess");
    let kill = tokio::spawn({
        let tasks = h.tasks.clone();
        async move {
            tasks
                .kill(api::KillRequest {
                    id: "c1".into(),
                    signal: 9,
                    ..Default::default()
                })
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!kill.is_finished());
    h.pod.kill("Kill of another task went unanswered".into());
    within(Duration::from_secs(1), kill)
        .await
        .expect("the kill task")
        .expect("a kill that the VM's death did");
    assert_eq!(
        h.pod.killed().as_deref(),
        Some("Kill of another task went unanswered")
    );
    assert_eq!(
        h.exits_within(1, Duration::from_secs(2)).await,
        [("c1".to_owned(), 255)]
    );
}

#[tokio::test]
async fn a_hung_remove_container_ends_the_delete_and_spares_the_pod() {
    let mut h = harness(deadlines());
    h.run("c1").await;
    h.run("c2").await;
    h.pod.agent.exit(&process_id("c1", ""), 0);
    assert_eq!(h.wait("c1", "", Duration::from_secs(2)).await, 0);
    h.pod.agent.hang("RemoveContainer");
    within(Duration::from_secs(2), h.delete("c1", ""))
        .await
        .expect("the delete ends");
    // c1's host side is released even so; the VM and c2 go on.
    assert_eq!(h.pod.released.load(Ordering::SeqCst), 1);
    assert_eq!(h.pod.killed(), None);
    assert_eq!(h.pod.stopped.load(Ordering::SeqCst), 0);
    h.pod.agent.exit(&process_id("c2", ""), 0);
    assert_eq!(h.wait("c2", "", Duration::from_secs(2)).await, 0);
    assert_eq!(
        h.exits_within(2, Duration::from_secs(2)).await,
        [("c1".to_owned(), 0), ("c2".to_owned(), 0)]
    );
    // The last Delete stops the pod, whose VM takes what the guest held.
    within(Duration::from_secs(2), h.delete("c2", ""))
        .await
        .expect("delete c2");
    assert_eq!(h.pod.released.load(Ordering::SeqCst), 2);
    assert_eq!(h.pod.stopped.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_hung_destroy_sandbox_kills_the_vm_and_the_last_delete_ends() {
    let h = harness(deadlines());
    h.run("c1").await;
    h.pod.agent.exit(&process_id("c1", ""), 0);
    h.wait("c1", "", Duration::from_secs(2)).await;
    h.pod.agent.hang("DestroySandbox");
    within(Duration::from_secs(2), h.delete("c1", ""))
        .await
        .expect("the delete ends");
    let killed = h.pod.killed().expect("the VM was killed");
    assert!(killed.contains("DestroySandbox"), "{killed}");
    assert_eq!(h.pod.stopped.load(Ordering::SeqCst), 1);
    within(Duration::from_secs(1), h.tasks.shutdown()).await;
    within(Duration::from_secs(1), h.exit.wait()).await;
}

#[tokio::test]
async fn state_and_kill_of_another_container_answer_while_a_call_hangs() {
    // A long deadline: the hung call stays hung for the whole test.
    let mut h = harness(Deadlines {
        call: Duration::from_secs(30),
        ..deadlines()
    });
    h.run("c1").await;
    h.run("c2").await;
    h.pod.agent.hang("PauseContainer");
    let pause = tokio::spawn({
        let tasks = h.tasks.clone();
        async move { tasks.set_paused("c1", true).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!pause.is_finished());
    assert_eq!(h.status("c1"), api::Status::RUNNING);
    assert_eq!(h.status("c2"), api::Status::RUNNING);
    within(Duration::from_millis(200), h.kill("c2"))
        .await
        .expect("kill c2");
    assert_eq!(h.wait("c2", "", Duration::from_millis(200)).await, 137);
    assert_eq!(
        h.exits_within(1, Duration::from_secs(2)).await,
        [("c2".to_owned(), 137)]
    );
    within(Duration::from_millis(200), h.delete("c2", ""))
        .await
        .expect("delete c2");
    assert!(!pause.is_finished());
    pause.abort();
}

#[tokio::test]
async fn oom_events_are_forwarded_only_for_known_containers() {
    let mut h = harness(deadlines());
    h.run("c1").await;
    for id in ["other-pods-container", "c1", "../../etc"] {
        h.pod.oom.send(id.into()).await.expect("send");
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(h.ooms(), ["c1"]);
}

#[tokio::test]
async fn an_oom_flood_stays_bounded() {
    let mut h = harness(deadlines());
    h.run("c1").await;
    let started = Instant::now();
    for _ in 0..5000 {
        h.pod.oom.send("c1".into()).await.expect("send");
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // One burst, plus one per period that passed.
    let periods = started.elapsed().as_secs() as usize + 1;
    let forwarded = h.ooms().len();
    assert!(
        (1..=OOM_BURST as usize * periods).contains(&forwarded),
        "{forwarded} OOM events forwarded"
    );
}

#[tokio::test]
async fn the_oom_watch_ends_when_the_vm_is_gone() {
    let h = harness(deadlines());
    h.run("c1").await;
    // The watch takes the guest's stream.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!h.pod.oom.is_closed());
    h.pod.kill("test".into());
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The watch dropped its stream: the guest's side sees it closed.
    assert!(h.pod.oom.is_closed());
}
