//! A container's OCI spec, turned from the host's view (containerd's bundle)
//! into the guest's.
//!
//! - Namespaces lose their host paths (but for CRI's PID, IPC and UTS
//!   namespaces of the sandbox, whose paths name a guest pid), and the
//!   network namespace goes: the pod's containers share the guest's network
//!   stack, the VM being the pod's boundary. A pod that asks for the host's
//!   network or IPC namespace is refused ([`refuse_host_namespaces`]).
//! - Bind mounts and volumes are bound into the shared directory on the
//!   host and point at the guest's view of it; read-only stays read-only on
//!   both sides. The pod's /dev/shm becomes a tmpfs in the guest.
//! - What only means something on the host goes: hooks, the cgroup path
//!   (the agent picks one in the guest), containerd's default AppArmor
//!   profile. An AppArmor profile or SELinux label the pod chose is refused
//!   ([`refuse_lsm_labels`]).

use std::path::Path;

use serde_json::{Value, json};

use crate::error::{Result, ShimError};
use crate::mounts::ContainerMounts;

/// Reads `config.json` from a bundle.
pub fn read_bundle(bundle: &Path) -> Result<Value> {
    let path = bundle.join("config.json");
    let text =
        std::fs::read(&path).map_err(ShimError::io(format!("reading {}", path.display())))?;
    serde_json::from_slice(&text).map_err(|err| ShimError::invalid("config.json", err.to_string()))
}

/// The spec's root directory on the host (relative paths are relative to
/// the bundle).
pub fn root_path(spec: &Value, bundle: &Path) -> std::path::PathBuf {
    let root = spec
        .get("root")
        .and_then(|root| root.get("path"))
        .and_then(Value::as_str)
        .unwrap_or("rootfs");
    bundle.join(root)
}

/// The spec's annotations.
pub fn annotations(spec: &Value) -> std::collections::HashMap<String, String> {
    spec.get("annotations")
        .and_then(Value::as_object)
        .map(|map| {
            map.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

/// The spec's `linux.cgroupsPath`, unless empty: where the sandbox's VM
/// is charged (see [`crate::cgroup`]).
pub fn cgroups_path(spec: &Value) -> Result<Option<String>> {
    let Some(value) = spec.get("linux").and_then(|linux| linux.get("cgroupsPath")) else {
        return Ok(None);
    };
    match value {
        Value::Null => Ok(None),
        Value::String(path) if path.is_empty() => Ok(None),
        Value::String(path) => Ok(Some(path.clone())),
        other => Err(ShimError::invalid(
            "linux.cgroupsPath",
            format!("{other} is not a string"),
        )),
    }
}

/// The network namespace the spec joins, if it names one: CRI's pod
/// namespace, where CNI set up the pod's interfaces. A spec that asks for a
/// new namespace (plain `ctr`) or none (host network) has no such path.
pub fn network_namespace(spec: &Value) -> Option<std::path::PathBuf> {
    spec.get("linux")?
        .get("namespaces")?
        .as_array()?
        .iter()
        .find(|ns| ns.get("type").and_then(Value::as_str) == Some("network"))?
        .get("path")?
        .as_str()
        .filter(|path| !path.is_empty())
        .map(std::path::PathBuf::from)
}

/// Rewrites `spec` for the guest, binding what its mounts need into the
/// container's directory of the shared directory through `mounts`.
pub fn for_guest(spec: &mut Value, mounts: &mut ContainerMounts) -> Result<()> {
    if let Some(object) = spec.as_object_mut() {
        object.remove("hooks");
    }
    refuse_lsm_labels(spec)?;
    if let Some(process) = spec.get_mut("process").and_then(Value::as_object_mut) {
        process.remove("apparmorProfile");
        process.remove("selinuxLabel");
    }
    let from_cri = annotations(spec).contains_key(crate::task::SANDBOX_ID_ANNOTATION);
    if let Some(linux) = spec.get_mut("linux").and_then(Value::as_object_mut) {
        linux.remove("cgroupsPath");
        linux.remove("mountLabel");
        if let Some(namespaces) = linux.get_mut("namespaces").and_then(Value::as_array_mut) {
            namespaces.retain(|ns| ns.get("type").and_then(Value::as_str) != Some("network"));
            for ns in namespaces.iter_mut().filter_map(Value::as_object_mut) {
                if from_cri {
                    refuse_unknown_sandbox_pid(ns)?;
                }
                if !(from_cri && is_guest_sandbox_namespace(ns)) {
                    ns.remove("path");
                }
            }
            // The guest's cgroups are v2, whatever the host's: there, as
            // containerd does on a v2 host, each container gets a cgroup
            // namespace of its own, so that /sys/fs/cgroup is its own
            // cgroup (its limits, as runc shows them on any host) rather
            // than the whole guest's.
            if !namespaces
                .iter()
                .any(|ns| ns.get("type").and_then(Value::as_str) == Some("cgroup"))
            {
                namespaces.push(json!({"type": "cgroup"}));
            }
        }
    }
    let Some(spec_mounts) = spec.get_mut("mounts").and_then(Value::as_array_mut) else {
        return Ok(());
    };
    for (index, entry) in spec_mounts.iter_mut().enumerate() {
        let options: Vec<String> = entry
            .get("options")
            .and_then(Value::as_array)
            .map(|options| {
                options
                    .iter()
                    .filter_map(|o| o.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let kind = entry
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let is_bind = kind == "bind" || options.iter().any(|o| o == "bind" || o == "rbind");
        if !is_bind {
            continue;
        }
        let destination = entry
            .get("destination")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let source = entry
            .get("source")
            .and_then(Value::as_str)
            .ok_or_else(|| ShimError::invalid(format!("mounts[{index}].source"), "is missing"))?;
        if !Path::new(source).is_absolute() {
            return Err(ShimError::invalid(
                format!("mounts[{index}].source"),
                format!("{source:?} is not an absolute path"),
            ));
        }
        let read_only = options.iter().any(|o| o == "ro");
        // containerd's sandbox shm or a Memory-medium emptyDir: a tmpfs of
        // the pod in the guest, of the same size (crate::mounts::PodVolumes).
        if destination == "/dev/shm" {
            let tmpfs = mounts.pod_tmpfs(Path::new(source)).map_err(|err| {
                ShimError::invalid(format!("mounts[{index}] ({destination})"), err.to_string())
            })?;
            if let Some(guest) = tmpfs {
                let mut options = vec!["rbind", "nosuid", "nodev", "noexec"];
                if read_only {
                    options.push("ro");
                }
                *entry = json!({
                    "destination": "/dev/shm",
                    "type": "bind",
                    "source": guest,
                    "options": options,
                });
                continue;
            }
        }
        let guest = if crate::mounts::propagates(&options) {
            mounts.pod_volume(Path::new(source), read_only)
        } else {
            mounts.volume(index, Path::new(source), read_only)
        }
        .map_err(|err| {
            ShimError::invalid(format!("mounts[{index}] ({destination})"), err.to_string())
        })?;
        entry["source"] = Value::String(guest);
    }
    Ok(())
}

/// The AppArmor profiles containerd applies by default, when a pod asks
/// for none or for `runtime/default`.
const DEFAULT_APPARMOR_PROFILES: [&str; 2] = ["cri-containerd.apparmor.d", "docker-default"];

/// AppArmor and SELinux are the host kernel's: the guest kernel has
/// neither, and a profile or policy loaded on the host cannot reach it. A
/// profile or label the pod chose is refused, naming the field, rather than
/// dropped. containerd's default AppArmor profile, which every container
/// gets on an AppArmor host unless it asks otherwise, goes: its part (no
/// mounts, no writes to /proc and /sys) is the VM boundary's, with the
/// container's seccomp profile and capabilities, which the guest applies
/// (docs/SECURITY.md).
pub fn refuse_lsm_labels(spec: &Value) -> Result<()> {
    let text = |pointer: &str| {
        spec.pointer(pointer)
            .and_then(Value::as_str)
            .filter(|text| !text.is_empty())
    };
    if let Some(profile) = text("/process/apparmorProfile")
        && profile != "unconfined"
        && !DEFAULT_APPARMOR_PROFILES.contains(&profile)
    {
        return Err(ShimError::invalid(
            "process.apparmorProfile",
            format!(
                "{profile:?}: the guest has no AppArmor, and a host profile cannot apply in it; use runtime/default or unconfined"
            ),
        ));
    }
    for (field, pointer) in [
        ("process.selinuxLabel", "/process/selinuxLabel"),
        ("linux.mountLabel", "/linux/mountLabel"),
    ] {
        if let Some(label) = text(pointer) {
            return Err(ShimError::invalid(
                field,
                format!("{label:?}: the guest has no SELinux, and a host label cannot apply in it"),
            ));
        }
    }
    Ok(())
}

/// CRI's pod-shared IPC and UTS namespaces, and its shared (pod) and node
/// PID modes, join `/proc/<pid>/ns/<type>` of the sandbox container, by the
/// pid this shim reported: a guest pid, so the path means the same in the
/// guest (for node PID mode, the guest's own PID namespace, where the agent
/// is PID 1).
fn is_guest_sandbox_namespace(ns: &serde_json::Map<String, Value>) -> bool {
    let path = ns.get("path").and_then(Value::as_str).unwrap_or_default();
    let Some(kind) = ns.get("type").and_then(Value::as_str) else {
        return false;
    };
    let file = match kind {
        "pid" => "/ns/pid",
        "ipc" => "/ns/ipc",
        "uts" => "/ns/uts",
        _ => return false,
    };
    path.strip_prefix("/proc/")
        .and_then(|rest| rest.strip_suffix(file))
        .is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
}

/// CRI joins `/proc/<sandbox pid>/ns/<type>`, with the pid containerd got
/// from the sandbox task's State. When that State ran out of containerd's
/// 2 s (a starved host), containerd goes on with pid 0, and the guest's
/// runtime would fail on a path that names no process with a bare ENOENT.
fn refuse_unknown_sandbox_pid(ns: &serde_json::Map<String, Value>) -> Result<()> {
    let path = ns.get("path").and_then(Value::as_str).unwrap_or_default();
    if path.starts_with("/proc/0/ns/") {
        return Err(ShimError::invalid(
            "linux.namespaces",
            format!(
                "{path:?} names pid 0: containerd did not know the sandbox's pid (its State call to the shim timed out); create the container again"
            ),
        ));
    }
    Ok(())
}

/// CRI's annotation saying whether a spec is a pod's sandbox or one of
/// its containers.
const CONTAINER_TYPE_ANNOTATION: &str = "io.kubernetes.cri.container-type";

/// Refuses to boot a CRI pod from anything but its sandbox's spec. Only the
/// sandbox's names the pod's network namespace and cgroup; a container's
/// names `/proc/<sandbox pid>/ns/net`, and that pid is the one the guest
/// reported, so on the host it is some other process, whose interfaces the
/// pod would then mirror. A container reaches a shim without its pod when
/// its sandbox was never created in that shim (its shim is gone, or
/// containerd started another).
pub fn refuse_boot_by_container(spec: &Value) -> Result<()> {
    match annotations(spec).get(CONTAINER_TYPE_ANNOTATION) {
        Some(kind) if kind != "sandbox" => Err(ShimError::invalid(
            format!("annotations[{CONTAINER_TYPE_ANNOTATION}]"),
            format!(
                "{kind:?}: the pod's VM boots with its sandbox, and this shim has no pod (the sandbox was not created in it); recreate the pod"
            ),
        )),
        _ => Ok(()),
    }
}

/// Refuses a spec that asks for the host's network or IPC namespace (CRI's
/// hostNetwork and hostIPC, `ctr run --net-host`): a VM cannot share them,
/// and running such a pod with the guest's own instead would leave it
/// silently without the host's ports, interfaces and shared memory it asked
/// for. The host's PID namespace (hostPID) is the guest's root one, which
/// is what a pod asking for it sees of its node (docs/DESIGN.md).
pub fn refuse_host_namespaces(spec: &Value) -> Result<()> {
    let Some(namespaces) = spec
        .get("linux")
        .and_then(|linux| linux.get("namespaces"))
        .and_then(Value::as_array)
    else {
        return Err(ShimError::invalid(
            "linux.namespaces",
            "is missing: the container would share every namespace of the host, which a hull VM cannot",
        ));
    };
    let has = |kind: &str| {
        namespaces
            .iter()
            .any(|ns| ns.get("type").and_then(Value::as_str) == Some(kind))
    };
    for (kind, what) in [
        ("network", "the host's network (hostNetwork)"),
        ("ipc", "the host's IPC namespace (hostIPC)"),
    ] {
        if !has(kind) {
            return Err(ShimError::invalid(
                "linux.namespaces",
                format!(
                    "has no {kind} namespace: the pod asks for {what}, which a hull VM cannot share; run it with another runtime"
                ),
            ));
        }
    }
    Ok(())
}

/// Gives a container whose spec sets no pids limit the configured default
/// (`default_pids_limit`, 0 for none), which the guest's libcontainer then
/// writes to the container cgroup's `pids.max`. A limit the spec sets, even
/// an unlimited one, stays.
pub fn limit_pids(spec: &mut Value, default: u32) {
    if default == 0 {
        return;
    }
    let Some(root) = spec.as_object_mut() else {
        return;
    };
    let linux = root.entry("linux").or_insert_with(|| json!({}));
    let Some(linux) = linux.as_object_mut() else {
        return;
    };
    let resources = linux.entry("resources").or_insert_with(|| json!({}));
    let Some(resources) = resources.as_object_mut() else {
        return;
    };
    if resources.get("pids").is_none_or(Value::is_null) {
        resources.insert("pids".into(), json!({ "limit": default }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cgroups_path_is_read_and_a_bad_one_named() {
        let path = |linux: Value| cgroups_path(&json!({ "linux": linux }));
        assert_eq!(
            path(json!({"cgroupsPath": "/kubepods/pod1/abc"})).unwrap(),
            Some("/kubepods/pod1/abc".to_owned())
        );
        assert_eq!(path(json!({"cgroupsPath": ""})).unwrap(), None);
        assert_eq!(path(json!({})).unwrap(), None);
        let err = path(json!({"cgroupsPath": 7})).expect_err("a number");
        assert!(err.to_string().starts_with("linux.cgroupsPath: "), "{err}");
    }

    #[test]
    fn the_default_pids_limit_fills_in_only_what_the_spec_leaves_out() {
        let mut bare = json!({"process": {"args": ["sh"]}});
        limit_pids(&mut bare, 64);
        assert_eq!(bare["linux"]["resources"]["pids"], json!({"limit": 64}));
        let mut own = json!({"linux": {"resources": {"pids": {"limit": -1}, "devices": []}}});
        limit_pids(&mut own, 64);
        assert_eq!(own["linux"]["resources"]["pids"], json!({"limit": -1}));
        assert_eq!(own["linux"]["resources"]["devices"], json!([]));
        let mut off = json!({});
        limit_pids(&mut off, 0);
        assert_eq!(off, json!({}));
    }

    #[test]
    fn host_only_parts_go_and_namespaces_lose_their_paths() {
        let mut spec = json!({
            "hooks": {"prestart": [{"path": "/usr/bin/true"}]},
            "process": {"args": ["sh"], "apparmorProfile": "cri-containerd.apparmor.d"},
            "linux": {
                "cgroupsPath": "kubepods-besteffort.slice:cri-containerd:abc",
                "namespaces": [
                    {"type": "pid"},
                    {"type": "network", "path": "/var/run/netns/cni-1234"},
                    {"type": "ipc", "path": "/proc/42/ns/ipc"},
                    {"type": "mount"}
                ]
            },
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/dev/shm", "type": "bind", "source": "/dev/shm", "options": ["rbind", "rw"]}
            ]
        });
        let dir = tempfile::tempdir().expect("dir");
        let mut mounts = ContainerMounts::for_tests(dir.path(), "c1");
        for_guest(&mut spec, &mut mounts).expect("rewrite");
        assert!(spec.get("hooks").is_none());
        assert!(spec["process"].get("apparmorProfile").is_none());
        assert!(spec["linux"].get("cgroupsPath").is_none());
        assert_eq!(
            spec["linux"]["namespaces"],
            json!([{"type": "pid"}, {"type": "ipc"}, {"type": "mount"}, {"type": "cgroup"}])
        );
        assert_eq!(spec["mounts"][0]["type"], "proc");
        // The host's /dev/shm is a tmpfs: the pod's own in the guest.
        assert_eq!(
            spec["mounts"][1],
            json!({
                "destination": "/dev/shm",
                "type": "bind",
                "source": format!("{}/0", crate::mounts::GUEST_POD_TMPFS_DIR),
                "options": ["rbind", "nosuid", "nodev", "noexec"],
            })
        );
        let tmpfs = mounts.take_pod_tmpfs();
        assert_eq!(tmpfs.len(), 1);
        assert_eq!(tmpfs[0].target, spec["mounts"][1]["source"]);
    }

    #[test]
    fn a_cri_namespace_of_pid_0_is_refused_naming_the_field() {
        let dir = tempfile::tempdir().expect("dir");
        let mut mounts = ContainerMounts::for_tests(dir.path(), "c1");
        let mut spec = json!({
            "annotations": {"io.kubernetes.cri.sandbox-id": "pod1"},
            "linux": {"namespaces": [
                {"type": "pid", "path": "/proc/0/ns/pid"},
                {"type": "ipc", "path": "/proc/0/ns/ipc"}
            ]}
        });
        let err = for_guest(&mut spec, &mut mounts)
            .expect_err("pid 0")
            .to_string();
        assert!(err.contains("linux.namespaces"), "{err}");
        assert!(err.contains("/proc/0/ns/pid"), "{err}");
    }

    #[test]
    fn a_cri_pid_namespace_of_the_sandbox_keeps_its_guest_path() {
        let spec = |annotations: Value| {
            json!({
                "annotations": annotations,
                "linux": {"namespaces": [
                    {"type": "pid", "path": "/proc/7/ns/pid"},
                    {"type": "ipc", "path": "/proc/7/ns/ipc"},
                    {"type": "uts", "path": "/proc/7/ns/uts"},
                    {"type": "mount", "path": "/proc/7/ns/mnt"}
                ]}
            })
        };
        let dir = tempfile::tempdir().expect("dir");
        let mut mounts = ContainerMounts::for_tests(dir.path(), "c1");
        let mut cri = spec(json!({"io.kubernetes.cri.sandbox-id": "pod1"}));
        for_guest(&mut cri, &mut mounts).expect("rewrite");
        assert_eq!(
            cri["linux"]["namespaces"],
            json!([
                {"type": "pid", "path": "/proc/7/ns/pid"},
                {"type": "ipc", "path": "/proc/7/ns/ipc"},
                {"type": "uts", "path": "/proc/7/ns/uts"},
                {"type": "mount"},
                {"type": "cgroup"}
            ])
        );
        // A path given to ctr is the host's.
        let mut ctr = spec(json!({}));
        for_guest(&mut ctr, &mut mounts).expect("rewrite");
        assert_eq!(
            ctr["linux"]["namespaces"],
            json!([
                {"type": "pid"},
                {"type": "ipc"},
                {"type": "uts"},
                {"type": "mount"},
                {"type": "cgroup"}
            ])
        );
    }

    #[test]
    fn the_hosts_network_and_ipc_namespaces_are_refused_naming_the_field() {
        let spec = |namespaces: &[&str]| {
            let namespaces: Vec<Value> = namespaces.iter().map(|t| json!({"type": t})).collect();
            json!({"linux": {"namespaces": namespaces}})
        };
        refuse_host_namespaces(&spec(&["pid", "ipc", "uts", "mount", "network"]))
            .expect("a pod of its own");
        // hostPID: the guest's root PID namespace.
        refuse_host_namespaces(&spec(&["ipc", "uts", "mount", "network"])).expect("hostPID");
        for (namespaces, names) in [
            (&["pid", "ipc", "mount"][..], "hostNetwork"),
            (&["pid", "uts", "mount", "network"][..], "hostIPC"),
            (&[][..], "hostNetwork"),
        ] {
            let err = refuse_host_namespaces(&spec(namespaces)).expect_err(names);
            let text = err.to_string();
            assert!(
                text.starts_with("linux.namespaces: ") && text.contains(names),
                "{text}"
            );
        }
        let err = refuse_host_namespaces(&json!({})).expect_err("no namespaces");
        assert!(
            err.to_string().starts_with("linux.namespaces: is missing"),
            "{err}"
        );
    }

    #[test]
    fn only_a_joined_network_namespace_is_the_pods() {
        let cri = json!({"linux": {"namespaces": [
            {"type": "pid"},
            {"type": "network", "path": "/var/run/netns/cni-1234"}
        ]}});
        assert_eq!(
            network_namespace(&cri),
            Some(std::path::PathBuf::from("/var/run/netns/cni-1234"))
        );
        let ctr = json!({"linux": {"namespaces": [{"type": "network"}]}});
        assert_eq!(network_namespace(&ctr), None);
        assert_eq!(
            network_namespace(&json!({"linux": {"namespaces": []}})),
            None
        );
        assert_eq!(network_namespace(&json!({})), None);
    }

    #[test]
    fn a_chosen_apparmor_profile_or_selinux_label_is_refused_naming_it() {
        let dir = tempfile::tempdir().expect("dir");
        let rewrite = |mut spec: Value| {
            for_guest(&mut spec, &mut ContainerMounts::for_tests(dir.path(), "c1")).map(|()| spec)
        };
        for accepted in ["cri-containerd.apparmor.d", "unconfined", ""] {
            let spec = rewrite(json!({"process": {"apparmorProfile": accepted}}))
                .unwrap_or_else(|err| panic!("{accepted:?}: {err}"));
            assert!(spec["process"].get("apparmorProfile").is_none());
        }
        for (spec, field) in [
            (
                json!({"process": {"apparmorProfile": "my-profile"}}),
                "process.apparmorProfile: \"my-profile\"",
            ),
            (
                json!({"process": {"selinuxLabel": "system_u:system_r:container_t:s0"}}),
                "process.selinuxLabel: ",
            ),
            (
                json!({"linux": {"mountLabel": "system_u:object_r:container_file_t:s0"}}),
                "linux.mountLabel: ",
            ),
        ] {
            let err = rewrite(spec).expect_err(field);
            assert!(err.to_string().starts_with(field), "{err}");
        }
    }

    #[test]
    fn a_relative_bind_source_is_named() {
        let mut spec = json!({"mounts": [
            {"destination": "/data", "type": "bind", "source": "data", "options": ["rbind"]}
        ]});
        let dir = tempfile::tempdir().expect("dir");
        let err = for_guest(&mut spec, &mut ContainerMounts::for_tests(dir.path(), "c1"))
            .expect_err("relative source");
        assert!(err.to_string().starts_with("mounts[0].source"), "{err}");
    }

    #[test]
    fn only_the_sandbox_boots_a_cri_pod() {
        let spec = |kind: &str| {
            json!({
                "annotations": {
                    "io.kubernetes.cri.container-type": kind,
                    "io.kubernetes.cri.sandbox-id": "pod",
                },
                "linux": {"namespaces": [{"type": "network", "path": "/proc/35/ns/net"}]}
            })
        };
        refuse_boot_by_container(&spec("sandbox")).expect("the sandbox boots the pod");
        let err = refuse_boot_by_container(&spec("container")).expect_err("a container");
        assert!(
            err.to_string()
                .contains("annotations[io.kubernetes.cri.container-type]"),
            "{err}"
        );
        // Outside CRI (`ctr run`), every container is its own pod.
        refuse_boot_by_container(&json!({"linux": {}})).expect("no CRI");
    }
}
