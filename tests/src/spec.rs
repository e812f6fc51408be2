//! OCI runtime specs for busybox containers, shaped like the ones containerd
//! generates.

use serde_json::{Value, json};

/// A namespace a container either creates (`path: None`) or joins.
#[derive(Debug, Clone)]
pub struct Namespace {
    pub kind: &'static str,
    pub path: Option<String>,
}

impl Namespace {
    pub fn new(kind: &'static str) -> Self {
        Self { kind, path: None }
    }

    pub fn join(kind: &'static str, pid: u32) -> Self {
        let file = match kind {
            "network" => "net",
            "mount" => "mnt",
            other => other,
        };
        Self {
            kind,
            path: Some(format!("/proc/{pid}/ns/{file}")),
        }
    }
}

/// The namespaces of a standalone container.
pub fn own_namespaces() -> Vec<Namespace> {
    ["pid", "ipc", "uts", "mount", "network"]
        .into_iter()
        .map(Namespace::new)
        .collect()
}

const CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// A process object (the spec's `process`, or an exec's).
pub fn process(args: &[&str]) -> Value {
    json!({
        "terminal": false,
        "user": { "uid": 0, "gid": 0 },
        "args": args,
        "env": ["PATH=/bin", "HOME=/root", "TERM=xterm"],
        "cwd": "/",
        "capabilities": {
            "bounding": CAPABILITIES,
            "effective": CAPABILITIES,
            "permitted": CAPABILITIES,
        },
        "rlimits": [{ "type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024 }],
        "noNewPrivileges": true,
    })
}

/// A container spec running `args`, with the given namespaces; an empty
/// `hostname` leaves it unset.
pub fn container(args: &[&str], hostname: &str, namespaces: &[Namespace]) -> Value {
    let namespaces: Vec<Value> = namespaces
        .iter()
        .map(|ns| match &ns.path {
            Some(path) => json!({ "type": ns.kind, "path": path }),
            None => json!({ "type": ns.kind }),
        })
        .collect();
    let mut spec = json!({
        "ociVersion": "1.0.2",
        "process": process(args),
        "root": { "path": "rootfs", "readonly": false },
        "mounts": [
            { "destination": "/proc", "type": "proc", "source": "proc" },
            { "destination": "/dev", "type": "tmpfs", "source": "tmpfs",
              "options": ["nosuid", "strictatime", "mode=755", "size=65536k"] },
            { "destination": "/dev/pts", "type": "devpts", "source": "devpts",
              "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"] },
            { "destination": "/dev/shm", "type": "tmpfs", "source": "shm",
              "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"] },
            { "destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
              "options": ["nosuid", "nodev", "mode=1777"] },
        ],
        "linux": {
            "namespaces": namespaces,
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
        },
    });
    // Only a container with its own UTS namespace may set a hostname.
    if !hostname.is_empty() {
        spec["hostname"] = json!(hostname);
    }
    spec
}

/// A standalone container with its own namespaces.
pub fn simple(args: &[&str]) -> Value {
    container(args, "hull-test", &own_namespaces())
}
