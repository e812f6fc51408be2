//! A private containerd (Debian's 1.6 binary) for end-to-end tests: its own
//! socket, root, state, config and CNI directories in a fresh temporary
//! directory, so it never touches a system containerd.
//!
//! Its socket serves both containerd's API (`ctr`) and the CRI plugin
//! ([`crate::cri`]). Runtimes `runc` (`io.containerd.runc.v2`, the default)
//! and `hull` (`io.containerd.hull.v2`) are configured; the Hull shim is
//! found on containerd's PATH, which starts with the directories given to
//! [`ContainerdBuilder::path_dir`].
//!
//! Dropping a [`Containerd`] stops it and anything it left: shims and their
//! containers, mounts under its directory, the directory itself.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::image::ImageTarball;

mod cleanup;
mod host;

pub use cleanup::clean_up_stale;
use cleanup::{bridge_name, clean_up_after};
pub use host::{
    cgroup_dirs, kill_all, mounts_under, process_state, processes, shim_pids, shim_socket_of,
    unmount_all_under,
};

/// The containerd namespace the CRI plugin uses.
pub const CRI_NAMESPACE: &str = "k8s.io";

/// The runtime handler name for runc, the default runtime.
pub const RUNC_HANDLER: &str = "runc";

/// The runtime handler name for Hull.
pub const HULL_HANDLER: &str = "hull";

/// The runtime type of Hull's shim, as `ctr run --runtime` takes it.
pub const HULL_RUNTIME: &str = "io.containerd.hull.v2";

/// The shim binary containerd looks up on PATH for [`HULL_RUNTIME`].
pub const HULL_SHIM: &str = "containerd-shim-hull-v2";

const CONTAINERD: &str = "/usr/bin/containerd";
const CTR: &str = "/usr/bin/ctr";
const SYSTEM_CNI_BIN: &str = "/usr/lib/cni";
/// Where containerd 1.6 puts shim sockets, whatever its state directory.
const SHIM_SOCKET_DIR: &str = "/run/containerd/s";
/// Where the runc shim keeps runc's state unless told otherwise.
const DEFAULT_RUNC_ROOT: &str = "/run/containerd/runc";
const SYSTEM_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Every harness directory is /tmp/hctd-XXXXXX.
const DIR_PREFIX: &str = "hctd-";
/// The test process that owns a harness directory.
const OWNER_FILE: &str = "owner.pid";
/// Bounds each `ctr` command, so a hung shim fails a test instead of
/// hanging it.
pub const CTR_TIMEOUT: Duration = Duration::from_secs(120);

/// Options for a private containerd; [`ContainerdBuilder::start`] starts it.
#[derive(Debug, Default, Clone)]
pub struct ContainerdBuilder {
    path_dirs: Vec<PathBuf>,
    env: Vec<(OsString, OsString)>,
    extra_config: String,
    cni_bridge: bool,
}

impl ContainerdBuilder {
    /// Puts `dir` on containerd's PATH, before the system directories, so
    /// shims in it are found (and inherit that PATH).
    pub fn path_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.path_dirs.push(dir.into());
        self
    }

    /// Puts the directory of this workspace's `containerd-shim-hull-v2` on
    /// containerd's PATH; panics if it has not been built.
    pub fn hull_shim(self) -> Self {
        let shim = crate::workspace_binary(HULL_SHIM);
        let dir = shim.parent().expect("shim directory").to_owned();
        self.path_dir(dir)
    }

    /// An environment variable for containerd and, through it, the shims
    /// (e.g. `HULL_CONFIG`). PATH is set with [`Self::path_dir`] instead.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// TOML appended to the generated config, e.g. options tables for the
    /// `hull` runtime. It must only add tables the config does not have.
    pub fn extra_config(mut self, toml: &str) -> Self {
        self.extra_config.push_str(toml);
        self.extra_config.push('\n');
        self
    }

    /// Writes a CNI configuration so that pods that are not in the node
    /// network namespace get their own, with an `eth0` (a veth on a private
    /// bridge, no gateway, no route or forwarding on the host) and `lo`.
    /// Without it pods must use the node network. containerd 1.6 wants an
    /// `eth0` with an address, so a loopback-only config is not enough.
    pub fn cni_bridge(mut self) -> Self {
        self.cni_bridge = true;
        self
    }

    /// Starts containerd and waits until its API and CRI plugin answer.
    pub fn start(self) -> Containerd {
        for binary in [CONTAINERD, CTR] {
            assert!(
                Path::new(binary).exists(),
                "{binary} is missing: run scripts/install-deps.sh"
            );
        }
        clean_up_stale();
        // Short: the socket path must fit in 108 bytes.
        let dir = tempfile::Builder::new()
            .prefix(DIR_PREFIX)
            .tempdir_in("/tmp")
            .expect("containerd temp dir");
        let root = dir.path();
        std::fs::write(root.join(OWNER_FILE), std::process::id().to_string()).expect("owner.pid");
        let paths = Paths::new(root);
        for sub in [&paths.root, &paths.state, &paths.cni_bin, &paths.cni_conf] {
            std::fs::create_dir_all(sub).expect("containerd directory");
        }
        link_cni_plugins(&paths.cni_bin);
        // Unique per containerd (interface names have at most 15 bytes).
        let bridge = self.cni_bridge.then(|| bridge_name(root));
        if let Some(bridge) = &bridge {
            let conflist = serde_json::json!({
                "cniVersion": "1.0.0",
                "name": "hull-test",
                "plugins": [{
                    "type": "bridge",
                    "bridge": bridge,
                    "isGateway": false,
                    "ipMasq": false,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{ "subnet": "10.254.0.0/24" }]],
                        "dataDir": root.join("cni/ipam"),
                    },
                }],
            });
            std::fs::write(
                paths.cni_conf.join("10-hull-test.conflist"),
                serde_json::to_vec_pretty(&conflist).expect("CNI config"),
            )
            .expect("CNI config");
        }
        let config = root.join("config.toml");
        std::fs::write(&config, config_toml(&paths, &self.extra_config)).expect("config.toml");

        let mut path = OsString::new();
        for dir in &self.path_dirs {
            path.push(dir);
            path.push(":");
        }
        path.push(SYSTEM_PATH);
        let log = root.join("containerd.log");
        let log_file = std::fs::File::create(&log).expect("containerd log");
        let child = Command::new(CONTAINERD)
            .arg("--config")
            .arg(&config)
            .env("PATH", &path)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log file"))
            .stderr(log_file)
            .spawn()
            .expect("start containerd");
        let mut containerd = Containerd {
            child: Some(child),
            socket: paths.socket.clone(),
            log,
            paths,
            bridge,
            dir: Some(dir),
        };
        containerd.wait_ready();
        containerd
    }
}

#[derive(Debug)]
struct Paths {
    dir: PathBuf,
    socket: PathBuf,
    root: PathBuf,
    state: PathBuf,
    cni_bin: PathBuf,
    cni_conf: PathBuf,
    opt: PathBuf,
    runc_root: PathBuf,
    fifo: PathBuf,
}

impl Paths {
    fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
            socket: dir.join("c.sock"),
            root: dir.join("root"),
            state: dir.join("state"),
            cni_bin: dir.join("cni/bin"),
            cni_conf: dir.join("cni/conf"),
            opt: dir.join("opt"),
            runc_root: dir.join("runc"),
            fifo: dir.join("fifo"),
        }
    }
}

/// Links the system's CNI plugins into `bin`, so the config can name a
/// directory of ours.
fn link_cni_plugins(bin: &Path) {
    let Ok(entries) = std::fs::read_dir(SYSTEM_CNI_BIN) else {
        return;
    };
    for entry in entries.flatten() {
        let _ = std::os::unix::fs::symlink(entry.path(), bin.join(entry.file_name()));
    }
}

fn config_toml(paths: &Paths, extra: &str) -> String {
    let quoted = |p: &Path| format!("{:?}", p.to_str().expect("utf-8 path"));
    let mut toml = String::new();
    writeln!(
        toml,
        r#"version = 2
root = {root}
state = {state}
# Only what the tests use, so containerd starts fast and logs little.
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.internal.v1.restart",
  "io.containerd.tracing.processor.v1.otlp",
]

# A shim's `delete` command (its cleanup after a shim died) gets 5 s by
# default; on the KVM test host, nested under TCG, starting a debug build
# of it alone can take that long, and containerd kills it half-way.
[timeouts]
  "io.containerd.timeout.shim.cleanup" = "30s"

[grpc]
  address = {socket}

[debug]
  level = "debug"

[plugins."io.containerd.internal.v1.opt"]
  path = {opt}

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  # This sandbox refuses to lower oom_score_adj; runc fails without this.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_selinux = false

[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "{runc}"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.{runc}]
  runtime_type = "io.containerd.runc.v2"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.{runc}.options]
  Root = {runc_root}

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.{hull}]
  runtime_type = "{hull_runtime}"
  # As deploy/containerd/ does: the shim decides which it honours.
  pod_annotations = ["io.hull.*"]

[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = {cni_bin}
  conf_dir = {cni_conf}
"#,
        root = quoted(&paths.root),
        state = quoted(&paths.state),
        socket = quoted(&paths.socket),
        opt = quoted(&paths.opt),
        pause = crate::image::PAUSE_IMAGE,
        runc = RUNC_HANDLER,
        hull = HULL_HANDLER,
        hull_runtime = HULL_RUNTIME,
        runc_root = quoted(&paths.runc_root),
        cni_bin = quoted(&paths.cni_bin),
        cni_conf = quoted(&paths.cni_conf),
    )
    .expect("format config");
    toml.push_str(extra);
    toml
}

/// A running private containerd; see the module documentation.
#[derive(Debug)]
pub struct Containerd {
    child: Option<Child>,
    paths: Paths,
    socket: PathBuf,
    log: PathBuf,
    bridge: Option<String>,
    dir: Option<tempfile::TempDir>,
}

impl Containerd {
    /// Options for a private containerd.
    pub fn builder() -> ContainerdBuilder {
        ContainerdBuilder::default()
    }

    /// A private containerd with the default options (runc only needs the
    /// system PATH).
    pub fn start() -> Self {
        Self::builder().start()
    }

    /// The temporary directory holding everything of this containerd.
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().expect("dir lives until drop").path()
    }

    /// containerd's gRPC socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The CRI socket: containerd's own, which serves CRI too.
    pub fn cri_socket(&self) -> &Path {
        &self.socket
    }

    /// The CNI configuration directory (empty unless
    /// [`ContainerdBuilder::cni_bridge`]).
    pub fn cni_conf_dir(&self) -> &Path {
        &self.paths.cni_conf
    }

    /// The host bridge of [`ContainerdBuilder::cni_bridge`], if any; it is
    /// deleted with this containerd.
    pub fn cni_bridge(&self) -> Option<&str> {
        self.bridge.as_deref()
    }

    /// containerd's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("child lives until drop").id()
    }

    /// Path of containerd's log (stdout and stderr, debug level).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// containerd's log so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Runs `ctr --address <socket> ARGS…` and returns what it printed and
    /// its exit status, whatever that is. Panics (with containerd's log
    /// tail) if it runs longer than [`CTR_TIMEOUT`].
    pub fn ctr(&self, args: &[&str]) -> Output {
        self.ctr_with_timeout(args, CTR_TIMEOUT)
    }

    /// [`Self::ctr`] with another bound than [`CTR_TIMEOUT`].
    pub fn ctr_with_timeout(&self, args: &[&str], timeout: Duration) -> Output {
        use std::io::{Read, Seek};
        // Files, not pipes: nothing to drain while waiting.
        let mut stdout = tempfile::tempfile().expect("ctr stdout file");
        let mut stderr = tempfile::tempfile().expect("ctr stderr file");
        let mut child = Command::new(CTR)
            .arg("--address")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .stdout(stdout.try_clone().expect("ctr stdout file"))
            .stderr(stderr.try_clone().expect("ctr stderr file"))
            .spawn()
            .expect("run ctr");
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for ctr") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "ctr {args:?} did not finish in {timeout:?}; containerd log tail:\n{}",
                    self.log_tail(60)
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let read = |file: &mut std::fs::File| {
            let mut bytes = Vec::new();
            file.rewind().expect("rewind ctr output");
            file.read_to_end(&mut bytes).expect("read ctr output");
            bytes
        };
        Output {
            status,
            stdout: read(&mut stdout),
            stderr: read(&mut stderr),
        }
    }

    /// [`Self::ctr`] that must succeed; returns its stdout, and panics with
    /// its stderr and containerd's log tail otherwise.
    pub fn ctr_ok(&self, args: &[&str]) -> String {
        self.expect_success(&format!("ctr {args:?}"), self.ctr(args))
    }

    /// The stdout of `command`, which ended with `output`; panics with its
    /// stderr and containerd's log tail unless it succeeded.
    pub fn expect_success(&self, command: &str, output: Output) -> String {
        assert!(
            output.status.success(),
            "{command} failed ({}):\nstdout: {}\nstderr: {}\ncontainerd log tail:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            self.log_tail(40),
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// `ctr -n NAMESPACE run ARGS…` with runc's state and the I/O FIFOs in
    /// this containerd's directory rather than under /run/containerd, so a
    /// task left running is cleaned up with it. `args` are what follows
    /// `ctr run`: flags such as `--rm` or `-d`, the image, the id, the
    /// command.
    pub fn ctr_run(&self, namespace: &str, args: &[&str]) -> Output {
        let fifo = self.paths.fifo.to_str().expect("utf-8 path");
        let runc_root = self.paths.runc_root.to_str().expect("utf-8 path");
        let mut full = vec![
            "-n",
            namespace,
            "run",
            "--fifo-dir",
            fifo,
            "--runc-root",
            runc_root,
        ];
        full.extend_from_slice(args);
        self.ctr(&full)
    }

    /// Imports an image tarball into `namespace` under its name (the
    /// layout's `io.containerd.image.name` annotation, which
    /// [`crate::image`] writes).
    ///
    /// Panics if `ctr` added an `import-DATE:TAG` reference, as it does for
    /// a layout without that annotation: CRI resolves images through such a
    /// reference and fails once it is removed, so it must never exist.
    /// (`--index-name` with the same name as the annotation made `ctr
    /// import` fail here with "content digest … not found" at times.)
    pub fn import(&self, namespace: &str, image: &ImageTarball) {
        let tarball = image.path.to_str().expect("utf-8 path");
        self.ctr_ok(&["-n", namespace, "images", "import", tarball]);
        let names = self.ctr_ok(&["-n", namespace, "images", "ls", "-q"]);
        assert!(
            names.lines().any(|name| name == image.name),
            "{} is not among the images after importing it: {names}",
            image.name
        );
        let stray: Vec<&str> = names
            .lines()
            .filter(|name| name.starts_with("import-"))
            .collect();
        assert!(stray.is_empty(), "ctr import added {stray:?}");
    }

    /// Imports the busybox and pause images into `namespace`.
    pub fn import_test_images(&self, namespace: &str) {
        self.import(namespace, &crate::image::busybox());
        self.import(namespace, &crate::image::pause());
    }

    /// Imports the busybox and pause images where CRI finds them.
    pub fn import_cri_images(&self) {
        self.import_test_images(CRI_NAMESPACE);
    }

    /// The tasks in `namespace` and their pids, from `ctr tasks ls`.
    pub fn task_pids(&self, namespace: &str) -> Vec<(String, i32)> {
        self.ctr_ok(&["-n", namespace, "tasks", "ls"])
            .lines()
            .skip(1)
            .filter_map(|line| {
                let mut fields = line.split_whitespace();
                let id = fields.next()?.to_owned();
                let pid = fields.next()?.parse().ok()?;
                Some((id, pid))
            })
            .collect()
    }

    /// The shims this containerd started that still run.
    pub fn shim_pids(&self) -> Vec<i32> {
        shim_pids(&self.socket)
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = &mut self.child
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "containerd exited early ({status}); its log:\n{}",
                    self.log()
                );
            }
            if self.socket.exists() && self.ctr(&["version"]).status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "containerd did not answer on {} in {START_TIMEOUT:?}; its log:\n{}",
                self.socket.display(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let plugins = self.ctr_ok(&["plugins", "ls"]);
        let cri_ok = plugins.lines().any(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.len() >= 4
                && fields[0] == "io.containerd.grpc.v1"
                && fields[1] == "cri"
                && fields[fields.len() - 1] == "ok"
        });
        assert!(
            cri_ok,
            "containerd's CRI plugin did not load:\n{plugins}\nits log:\n{}",
            self.log()
        );
    }

    /// Stops containerd and cleans up after it; what `drop` does.
    fn teardown(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = Pid::from_raw(child.id() as i32);
            let _ = kill(pid, Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(dir) = self.dir.take() {
            clean_up_after(&self.paths, self.bridge.take().as_deref());
            let path = dir.path().to_owned();
            if let Err(err) = dir.close() {
                eprintln!("containerd harness: removing {}: {err}", path.display());
            }
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.teardown();
    }
}
