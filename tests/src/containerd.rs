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
use sha2::{Digest, Sha256};

use crate::image::ImageTarball;

/// The containerd namespace the CRI plugin uses.
pub const CRI_NAMESPACE: &str = "k8s.io";

/// The runtime handler name for runc, the default runtime.
pub const RUNC_HANDLER: &str = "runc";

/// The runtime handler name for Hull.
pub const HULL_HANDLER: &str = "hull";

/// The shim binary containerd looks up on PATH for `io.containerd.hull.v2`.
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
  runtime_type = "io.containerd.hull.v2"

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
        let output = self.ctr(args);
        assert!(
            output.status.success(),
            "ctr {args:?} failed ({}):\nstdout: {}\nstderr: {}\ncontainerd log tail:\n{}",
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

/// With containerd gone, so that nothing restarts or waits for the shims:
/// kills its shims and their containers, removes their cgroups, runc state
/// and sockets, deletes the CNI bridge, and unmounts everything under its
/// directory (which the caller then removes).
fn clean_up_after(paths: &Paths, bridge: Option<&str>) {
    let shims = shims(&paths.socket);
    let shim_pids: Vec<i32> = shims.iter().map(|(pid, _)| *pid).collect();
    let victims = process_trees(&shim_pids);
    let cgroups = task_cgroups(&victims);
    kill_all(&victims);
    remove_cgroups(&cgroups);
    let bundles = task_bundles(&paths.state);
    for (namespace, id, _) in &bundles {
        // Where a plain `ctr run` keeps runc's state.
        let _ = std::fs::remove_dir_all(Path::new(DEFAULT_RUNC_ROOT).join(namespace).join(id));
    }
    // A killed shim leaves its socket behind.
    let shim_sockets = bundles
        .into_iter()
        .filter_map(|(_, _, socket)| socket)
        .chain(shims.into_iter().filter_map(|(_, socket)| socket));
    for socket in shim_sockets {
        let _ = std::fs::remove_file(socket);
    }
    if let Some(bridge) = bridge {
        // Gone already if CNI deleted it; otherwise it outlives pods.
        let _ = Command::new("ip")
            .args(["link", "del", bridge])
            .stderr(Stdio::null())
            .status();
    }
    unmount_all_under(&paths.dir);
}

/// Cleans up after harness containerds whose test process died without
/// dropping them (killed, or aborted): their directory's `owner.pid` names
/// a process that is gone. Called by every start.
pub fn clean_up_stale() {
    for entry in std::fs::read_dir("/tmp").into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with(DIR_PREFIX) {
            continue;
        }
        let dir = entry.path();
        let owner: Option<i32> = std::fs::read_to_string(dir.join(OWNER_FILE))
            .ok()
            .and_then(|pid| pid.trim().parse().ok());
        let stale = match owner {
            Some(pid) => matches!(process_state(pid), None | Some('Z')),
            // Being set up right now, or from a harness that died then.
            None => entry
                .metadata()
                .and_then(|meta| meta.modified())
                .is_ok_and(|modified| {
                    modified.elapsed().unwrap_or_default() > Duration::from_secs(60)
                }),
        };
        if !stale {
            continue;
        }
        eprintln!("containerd harness: cleaning up stale {}", dir.display());
        let paths = Paths::new(&dir);
        let config = paths.dir.join("config.toml");
        let config = config.as_os_str().as_encoded_bytes();
        for (pid, cmdline) in processes() {
            let mut args = cmdline.split(|b| *b == 0);
            if args.next() == Some(CONTAINERD.as_bytes()) && args.any(|arg| arg == config) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                while !matches!(process_state(pid), None | Some('Z')) {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
        clean_up_after(&paths, Some(&bridge_name(&dir)));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// The CNI bridge of the harness directory `dir`; interface names have at
/// most 15 bytes.
fn bridge_name(dir: &Path) -> String {
    let name = dir.file_name().expect("temp dir name").to_string_lossy();
    format!("hct{}", name.trim_start_matches(DIR_PREFIX))
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Processes whose command is a containerd shim started for the containerd
/// at `socket` (their `-address` argument).
pub fn shim_pids(socket: &Path) -> Vec<i32> {
    shims(socket).into_iter().map(|(pid, _)| pid).collect()
}

/// The shims of the containerd at `socket`, each with the socket it serves
/// on: containerd 1.6 puts it at /run/containerd/s/HEX, HEX being the
/// SHA-256 of `ADDRESS/NAMESPACE/ID` from the shim's arguments.
fn shims(socket: &Path) -> Vec<(i32, Option<PathBuf>)> {
    let address = socket.as_os_str().as_encoded_bytes();
    let mut shims = Vec::new();
    for (pid, cmdline) in processes() {
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_shim = args.first().is_some_and(|arg0| {
            arg0.rsplit(|b| *b == b'/')
                .next()
                .is_some_and(|name| name.starts_with(b"containerd-shim"))
        });
        let flag = |name: &[u8]| {
            args.windows(2)
                .find(|pair| pair[0] == name)
                .map(|pair| pair[1])
        };
        if !is_shim || flag(b"-address") != Some(address) {
            continue;
        }
        let shim_socket = flag(b"-namespace").zip(flag(b"-id")).map(|(ns, id)| {
            let mut key = address.to_vec();
            for part in [ns, id] {
                key.push(b'/');
                key.extend_from_slice(part);
            }
            let digest = Sha256::digest(&key);
            let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
            PathBuf::from(SHIM_SOCKET_DIR).join(hex)
        });
        shims.push((pid, shim_socket));
    }
    shims
}

/// Mount points at or under `dir`, deepest first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut mounts: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|escaped| PathBuf::from(unescape_mountinfo(escaped)))
        .filter(|point| point.starts_with(dir))
        .collect();
    // Later mounts may stack on earlier ones: unmount in reverse order,
    // children (longer paths) before parents.
    mounts.reverse();
    mounts.sort_by_key(|point| std::cmp::Reverse(point.components().count()));
    mounts
}

/// Unmounts everything under `dir`, lazily when a mount is busy.
fn unmount_all_under(dir: &Path) {
    use nix::mount::{MntFlags, umount2};
    for _ in 0..10 {
        let mounts = mounts_under(dir);
        if mounts.is_empty() {
            return;
        }
        for point in mounts {
            if umount2(&point, MntFlags::empty()).is_err() {
                let _ = umount2(&point, MntFlags::MNT_DETACH);
            }
        }
    }
}

/// `\040`-style escapes in /proc/self/mountinfo paths.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 4 <= bytes.len()
            && let Ok(code) = std::str::from_utf8(&bytes[i + 1..i + 4])
                .map_err(|_| ())
                .and_then(|digits| u8::from_str_radix(digits, 8).map_err(|_| ()))
        {
            out.push(code);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The task bundles under `state`: namespace, id, and the shim socket
/// (outside our directory, under /run/containerd/s) that its `address` file
/// names.
fn task_bundles(state: &Path) -> Vec<(String, String, Option<PathBuf>)> {
    let tasks = state.join("io.containerd.runtime.v2.task");
    let mut bundles = Vec::new();
    for namespace in std::fs::read_dir(tasks).into_iter().flatten().flatten() {
        for bundle in std::fs::read_dir(namespace.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let socket = std::fs::read_to_string(bundle.path().join("address"))
                .ok()
                .map(|address| PathBuf::from(address.trim().trim_start_matches("unix://")))
                .filter(|path| path.starts_with(SHIM_SOCKET_DIR));
            bundles.push((
                namespace.file_name().to_string_lossy().into_owned(),
                bundle.file_name().to_string_lossy().into_owned(),
                socket,
            ));
        }
    }
    bundles
}

/// The cgroup directories (every hierarchy) that `pids` are in, deepest
/// first, leaving out the root and the cgroups the test itself is in.
fn task_cgroups(pids: &[i32]) -> Vec<PathBuf> {
    let own: Vec<PathBuf> = cgroup_dirs(std::process::id() as i32);
    let mut dirs: Vec<PathBuf> = pids
        .iter()
        .flat_map(|&pid| cgroup_dirs(pid))
        .filter(|dir| !own.contains(dir))
        .collect();
    dirs.sort();
    dirs.dedup();
    dirs.sort_by_key(|dir| std::cmp::Reverse(dir.components().count()));
    dirs
}

/// Removes the (now empty) cgroup directories `dirs`, deepest first,
/// retrying for a moment while the killed tasks finish exiting.
fn remove_cgroups(dirs: &[PathBuf]) {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        for dir in dirs {
            let _ = std::fs::remove_dir(dir);
        }
        if dirs.iter().all(|dir| !dir.exists()) || Instant::now() >= deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Where process `pid`'s cgroups are in /sys/fs/cgroup, for cgroup v1
/// hierarchies and the unified one alike, leaving out root cgroups.
pub fn cgroup_dirs(pid: i32) -> Vec<PathBuf> {
    let Ok(cgroups) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
        return Vec::new();
    };
    let mounts = cgroup_mounts();
    let mut dirs = Vec::new();
    for line in cgroups.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if path == "/" {
            continue;
        }
        let mount = mounts.iter().find(|(fstype, options, _)| {
            if controllers.is_empty() {
                fstype == "cgroup2"
            } else {
                fstype == "cgroup"
                    && controllers
                        .split(',')
                        .all(|c| options.split(',').any(|option| option == c))
            }
        });
        if let Some((_, _, point)) = mount {
            dirs.push(point.join(path.trim_start_matches('/')));
        }
    }
    dirs
}

/// The cgroup file systems: type, super options, mount point.
fn cgroup_mounts() -> Vec<(String, String, PathBuf)> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mountinfo
        .lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let point = before.split(' ').nth(4)?;
            let mut after = after.split(' ');
            let fstype = after.next()?;
            let options = after.nth(1)?;
            (fstype == "cgroup" || fstype == "cgroup2").then(|| {
                (
                    fstype.to_owned(),
                    options.to_owned(),
                    PathBuf::from(unescape_mountinfo(point)),
                )
            })
        })
        .collect()
}

/// Every live process: pid and raw command line.
fn processes() -> Vec<(i32, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            out.push((pid, cmdline));
        }
    }
    out
}

/// A process's state letter from /proc/PID/stat, `None` when it is gone.
pub fn process_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().next()?.chars().next()
}

fn parent_pid(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().nth(1)?.parse().ok()
}

/// `roots` and all their descendants, roots first.
fn process_trees(roots: &[i32]) -> Vec<i32> {
    let all: Vec<i32> = processes().into_iter().map(|(pid, _)| pid).collect();
    let mut tree: Vec<i32> = roots.to_vec();
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        for &pid in &all {
            if parent_pid(pid) == Some(parent) && !tree.contains(&pid) {
                tree.push(pid);
            }
        }
        i += 1;
    }
    tree
}

/// SIGKILLs `pids` in order (shims first, so none reacts to its container
/// dying) and waits, a few seconds at most, until they are gone or zombies.
fn kill_all(pids: &[i32]) {
    for &pid in pids {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline
        && pids
            .iter()
            .any(|&pid| !matches!(process_state(pid), None | Some('Z')))
    {
        std::thread::sleep(Duration::from_millis(20));
    }
}
