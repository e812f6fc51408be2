//! The share attack of issue 16, through a real containerd under QEMU TCG:
//! a privileged container in the guest's own PID namespace reaches the
//! pod's virtio-fs share where the agent mounted it (`/proc/1/root/...`),
//! the same FUSE session a compromised guest kernel drives, and tries every
//! move that would make the shim act on the host through a path the guest
//! controls. (A second `mount -t virtiofs hullfs` in the guest is no way in
//! for the test: the guest kernel hands it the superblock of the last
//! submount it crossed, a volume, rather than the share's top.)
//!
//! - writing at the top level of the share (and inside a container's
//!   directory), which would also fill the host's /run;
//! - renaming a container's directory, and its `mounts` directory, and
//!   planting symlinks where the shim unmounts when the container is
//!   deleted (`<cid>/rootfs`, `<cid>/mounts/<i>`), aimed at a host tmpfs;
//! - planting symlinks where the shim creates, truncates and mounts when a
//!   container is restarted (same id) and when a second container is
//!   created: at a host tmpfs directory for directories, at a host file for
//!   file bind mounts.
//!
//! The host's canaries, all outside the pod directory, stay as they were: a
//! tmpfs mount with its file, a file, and the content of the victim's
//! volumes. No mount appears or disappears outside the pod directory, and
//! every move of the guest is refused.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hull_tests::hull_runtime::HullRuntime;
use hull_tests::image::BUSYBOX_IMAGE;
use hull_tests::{serial, text, unique_id};

const NS: &str = "hull-share";
/// The share where the guest agent (PID 1) mounted it, seen through its
/// root from a container in its PID namespace.
const AGENTS_SHARE: &str = "/proc/1/root/run/hull-agent/sandbox/shared/hullfs";
const TMPFS_CONTENT: &str = "tmpfs canary\n";
const FILE_CONTENT: &str = "file canary\n";

/// The mount points of this host outside `state_dir` (containerd's own
/// mounts come and go with its tasks, and are gone once they are).
fn host_mounts(state_dir: &Path) -> BTreeSet<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .filter_map(|line| line.split_whitespace().nth(4))
        .filter(|target| !Path::new(target).starts_with(state_dir))
        .map(str::to_owned)
        .collect()
}

fn is_mount_point(path: &Path) -> bool {
    let path = path.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .any(|line| line.split_whitespace().nth(4) == Some(path.as_str()))
}

/// The host side of the test: canaries next to a tmpfs, unmounted (however
/// often the attack stacked mounts on them) when the test ends.
struct Canaries {
    dir: tempfile::TempDir,
}

impl Canaries {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("share-attack-")
            .tempdir_in("/tmp")
            .expect("canary dir");
        let canaries = Self { dir };
        std::fs::create_dir(canaries.tmpfs()).expect("tmpfs dir");
        nix::mount::mount(
            Some("canary"),
            &canaries.tmpfs(),
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some("size=1m"),
        )
        .expect("mounting the canary tmpfs");
        std::fs::write(canaries.tmpfs().join("content"), TMPFS_CONTENT).expect("tmpfs canary");
        std::fs::write(canaries.file(), FILE_CONTENT).expect("file canary");
        std::fs::write(canaries.volume_file(), "volume file\n").expect("volume file");
        std::fs::create_dir(canaries.volume_dir()).expect("volume dir");
        std::fs::write(canaries.volume_dir().join("keep"), "keep\n").expect("volume content");
        canaries
    }

    fn tmpfs(&self) -> PathBuf {
        self.dir.path().join("canary-mnt")
    }

    fn file(&self) -> PathBuf {
        self.dir.path().join("canary-file")
    }

    fn volume_file(&self) -> PathBuf {
        self.dir.path().join("volume-file")
    }

    fn volume_dir(&self) -> PathBuf {
        self.dir.path().join("volume-dir")
    }

    /// What is wrong with the canaries, if anything.
    fn damage(&self) -> Vec<String> {
        let mut damage = Vec::new();
        if !is_mount_point(&self.tmpfs()) {
            damage.push(format!("{} is no longer mounted", self.tmpfs().display()));
        }
        let read = |path: PathBuf| std::fs::read_to_string(&path).unwrap_or_default();
        if read(self.tmpfs().join("content")) != TMPFS_CONTENT {
            damage.push("the tmpfs canary's content changed or is hidden".into());
        }
        if read(self.file()) != FILE_CONTENT {
            damage.push(format!(
                "{} holds {:?}",
                self.file().display(),
                read(self.file())
            ));
        }
        if read(self.volume_file()) != "volume file\n" {
            damage.push("the file volume's content changed".into());
        }
        if read(self.volume_dir().join("keep")) != "keep\n" {
            damage.push("the directory volume lost its content".into());
        }
        // The tmpfs once, and nothing else: not stacked on it, not below
        // it, not on the other canaries.
        let mut below = hull_tests::containerd::mounts_under(self.dir.path());
        if let Some(at) = below.iter().position(|m| *m == self.tmpfs()) {
            below.remove(at);
        }
        if !below.is_empty() {
            damage.push(format!("mounted over the canaries: {below:?}"));
        }
        damage
    }
}

impl Drop for Canaries {
    fn drop(&mut self) {
        hull_tests::containerd::unmount_all_under(self.dir.path());
    }
}

/// The attacker's script: reaches the share at $M, then runs `moves`, where
/// `try CMD…` prints `DID: CMD` when a move succeeds and `REFUSED: CMD`
/// when it fails, and `plant ID FILES` plants symlinks at every path the
/// shim mounts on or unmounts for container ID (FILES: the indices of its
/// file bind mounts, aimed at the canary file; the rest at the tmpfs).
fn attack_script(canaries: &Canaries, pod: &str, moves: &str) -> String {
    format!(
        r#"C={tmpfs}; F={file}; M={share}
# The share itself: the attacker's own container is in it.
[ -d $M/{pod}/rootfs ] && echo MOUNTED || {{ grep -E 'virtiofs| /m ' /proc/self/mountinfo; ls -la $M; }}
try() {{ if "$@" 2>/dev/null; then echo "DID: $*"; else echo "REFUSED: $*"; fi; }}
# A link AT path: what is there (a mount point) must go first; `ln -s` onto
# an existing directory would only make a link inside it (in a writable
# rootfs or volume, where the guest may write).
link() {{
  if [ -e "$2" ] || [ -L "$2" ]; then
    try mv "$2" "$2.old"
    if [ -e "$2" ] || [ -L "$2" ]; then echo "REFUSED: ln -s $1 $2 (in use)"; return; fi
  fi
  try ln -s "$1" "$2"
}}
plant() {{
  c=$1
  try mkdir $M/$c
  try mkdir $M/$c/mounts
  link $C $M/$c/rootfs
  for i in $(seq 0 15); do
    case " $2 " in *" $i "*) t=$F;; *) t=$C;; esac
    link $t $M/$c/mounts/$i
  done
}}
{moves}
echo END
"#,
        tmpfs = canaries.tmpfs().display(),
        file = canaries.file().display(),
        share = AGENTS_SHARE,
    )
}

fn exec(rt: &HullRuntime, container: &str, exec_id: &str, script: &str) -> String {
    let output = rt.containerd.ctr(&[
        "-n",
        NS,
        "tasks",
        "exec",
        "--exec-id",
        exec_id,
        container,
        "sh",
        "-c",
        script,
    ]);
    let out = text(&output.stdout);
    eprintln!("{exec_id} in {container}:\n{out}{}", text(&output.stderr));
    assert!(output.status.success(), "{exec_id}: {output:?}");
    assert!(
        out.contains("MOUNTED") && out.contains("END"),
        "the attacker could not mount the share:\n{out}"
    );
    out
}

fn stop_and_remove_task(rt: &HullRuntime, id: &str) {
    rt.containerd
        .ctr_ok(&["-n", NS, "tasks", "kill", "-s", "KILL", id]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !rt
        .containerd
        .ctr(&["-n", NS, "tasks", "rm", id])
        .status
        .success()
    {
        assert!(Instant::now() < deadline, "the task {id} did not stop");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_privileged_guest_with_the_share_mounted_cannot_reach_the_host() {
    let _serial = serial();
    let rt = HullRuntime::start(NS, false);
    let canaries = Canaries::new();
    let before = host_mounts(&rt.state_dir);

    let pod = unique_id("pod");
    let victim = unique_id("victim");
    let second = unique_id("second");
    let annotation = format!("io.kubernetes.cri.sandbox-id={pod}");
    let file_volume = format!(
        "type=bind,src={},dst=/vf,options=rbind:ro",
        canaries.volume_file().display()
    );
    let dir_volume = format!(
        "type=bind,src={},dst=/vd,options=rbind:rw",
        canaries.volume_dir().display()
    );
    rt.run_ok(&[
        "--privileged",
        // The guest's own PID namespace, as CRI's hostPID gives it: the
        // agent is PID 1 there.
        "--with-ns",
        "pid:/proc/1/ns/pid",
        "--annotation",
        &annotation,
        "-d",
        BUSYBOX_IMAGE,
        &pod,
        "sleep",
        "1000",
    ]);
    let with_volumes = |id: &str| {
        rt.run_ok(&[
            "--annotation",
            &annotation,
            "--mount",
            &file_volume,
            "--mount",
            &dir_volume,
            "-d",
            BUSYBOX_IMAGE,
            id,
            "sleep",
            "1000",
        ]);
    };
    with_volumes(&victim);
    assert_eq!(rt.pod_dirs().len(), 1, "the containers share a VM");

    // Before the victim's delete: the top level, the victim's directory
    // renamed, and links where the shim unmounts.
    let before_delete = format!(
        r#"try sh -c "echo x > $M/top"
try mkdir $M/topdir
try sh -c "echo x > $M/{victim}/x"
files=$(cd $M/{victim}/mounts && for i in *; do [ -f $i ] && echo $i; done)
echo $files > /tmp/files
echo "file mounts: $files"
try mv $M/{pod}/mounts $M/{pod}/mounts.old
plant {pod} ""
try mv $M/{victim} $M/{victim}.old
plant {victim} "$files""#
    );
    let mut out = exec(
        &rt,
        &pod,
        "attack-delete",
        &attack_script(&canaries, &pod, &before_delete),
    );
    assert!(
        out.contains("file mounts: ") && !out.contains("file mounts: \n"),
        "the victim has no file bind mount:\n{out}"
    );
    stop_and_remove_task(&rt, &victim);
    let damage = canaries.damage();
    assert!(
        damage.is_empty(),
        "after the victim's delete: {damage:?}\n{out}"
    );

    // Before the victim's restart (same id) and a second container: links
    // where the shim creates, truncates and mounts.
    let before_create = format!(
        r#"files=$(cat /tmp/files)
plant {victim} "$files"
plant {second} "$files""#
    );
    out += &exec(
        &rt,
        &pod,
        "attack-create",
        &attack_script(&canaries, &pod, &before_create),
    );
    rt.containerd
        .ctr_ok(&["-n", NS, "tasks", "start", "-d", &victim]);
    with_volumes(&second);
    let damage = canaries.damage();
    assert!(
        damage.is_empty(),
        "after the restart and the second container: {damage:?}\n{out}"
    );
    // The volumes work as they should: read-only stays read-only.
    let check = rt.containerd.ctr(&[
        "-n",
        NS,
        "tasks",
        "exec",
        "--exec-id",
        "check",
        &second,
        "sh",
        "-c",
        "cat /vf /vd/keep; echo y > /vf || echo ro-refused",
    ]);
    let check_out = text(&check.stdout);
    assert!(
        check_out.contains("volume file\nkeep\n") && check_out.contains("ro-refused"),
        "{check:?}"
    );

    for id in [&second, &victim, &pod] {
        stop_and_remove_task(&rt, id);
        rt.containerd.ctr_ok(&["-n", NS, "containers", "rm", id]);
    }
    let left = rt.leftovers(Duration::from_secs(30));
    assert!(left.is_empty(), "left behind:\n{}", left.join("\n"));

    let damage = canaries.damage();
    assert!(damage.is_empty(), "at the end: {damage:?}\n{out}");
    let after = host_mounts(&rt.state_dir);
    let appeared: Vec<_> = after.difference(&before).collect();
    let vanished: Vec<_> = before.difference(&after).collect();
    assert!(
        appeared.is_empty() && vanished.is_empty(),
        "host mounts outside the pod directory changed: appeared {appeared:?}, vanished {vanished:?}"
    );
    // Every move was refused: the share's top level and the containers'
    // directories are read-only to the guest.
    let done: Vec<&str> = out.lines().filter(|l| l.starts_with("DID: ")).collect();
    assert!(done.is_empty(), "the guest changed the share: {done:?}");
    assert!(
        out.contains(&format!("REFUSED: sh -c echo x > {AGENTS_SHARE}/top")),
        "{out}"
    );
}

#[test]
fn the_share_attack_fails_under_hull_vmm_in_the_kvm_test_host() {
    hull_tests::kvm_host::rerun_under_hull_vmm(
        &["a_privileged_guest_with_the_share_mounted_cannot_reach_the_host"],
        Duration::from_secs(900),
    );
}
