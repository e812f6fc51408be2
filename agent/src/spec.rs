//! Checks the OCI documents a client sends and adapts them for the agent.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxBuilder, Process, RootBuilder, Spec};
use serde::de::DeserializeOwned;

use crate::error::{AgentError, Result};

/// Where container cgroups go when the spec does not say.
const CGROUP_PARENT: &str = "/hull";

/// Parses JSON, naming the exact field that is wrong, e.g.
/// `oci_spec_json.process.args: invalid type: string "x", expected a sequence`.
fn parse<T: DeserializeOwned>(field: &str, json: &[u8]) -> Result<T> {
    let mut deserializer = serde_json::Deserializer::from_slice(json);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
        let path = err.path().to_string();
        // serde_path_to_error says "." for the top level and "?" where the
        // JSON broke before a path was known.
        let field = if path == "." || path == "?" {
            field.to_owned()
        } else {
            format!("{field}.{path}")
        };
        AgentError::invalid(field, err.into_inner().to_string())
    })
}

fn check_process(field: &str, process: &Process) -> Result<()> {
    match process.args() {
        Some(args) if !args.is_empty() && !args[0].is_empty() => Ok(()),
        _ => Err(AgentError::invalid(
            format!("{field}.args"),
            "must name the program to run",
        )),
    }
}

/// A container spec ready to be written as the bundle's config.json.
pub fn container_spec(
    container_id: &str,
    json: &[u8],
    rootfs: &str,
    terminal: bool,
) -> Result<Spec> {
    const FIELD: &str = "oci_spec_json";
    let mut spec: Spec = parse(FIELD, json)?;

    let rootfs_path = Path::new(rootfs);
    if !rootfs_path.is_absolute() {
        return Err(AgentError::invalid(
            "rootfs",
            format!("{rootfs:?} is not an absolute path"),
        ));
    }
    match std::fs::metadata(rootfs_path) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Err(AgentError::invalid(
                "rootfs",
                format!("{rootfs} is not a directory"),
            ));
        }
        Err(err) => {
            return Err(AgentError::invalid(
                "rootfs",
                format!("{rootfs} does not exist ({err})"),
            ));
        }
    }

    let mut process = spec
        .process()
        .clone()
        .ok_or_else(|| AgentError::invalid(format!("{FIELD}.process"), "is missing"))?;
    check_process(&format!("{FIELD}.process"), &process)?;
    process.set_terminal(Some(terminal));
    spec.set_process(Some(process));

    let readonly = spec.root().as_ref().and_then(|root| root.readonly());
    let root = RootBuilder::default()
        .path(PathBuf::from(rootfs))
        .readonly(readonly.unwrap_or(false))
        .build()
        .map_err(|err| AgentError::invalid(format!("{FIELD}.root"), err.to_string()))?;
    spec.set_root(Some(root));

    let mut linux = match spec.linux().clone() {
        Some(linux) => linux,
        None => LinuxBuilder::default()
            .build()
            .map_err(|err| AgentError::invalid(format!("{FIELD}.linux"), err.to_string()))?,
    };
    crate::propagation::normalize_rootfs_propagation(&mut linux)?;
    if linux.cgroups_path().is_none() {
        linux.set_cgroups_path(Some(PathBuf::from(format!(
            "{CGROUP_PARENT}/{container_id}"
        ))));
    }
    spec.set_linux(Some(linux));
    Ok(spec)
}

/// Takes the `net.*` sysctls out of a spec that has no network namespace
/// of its own: the pod's network is the guest's (the shim drops the pod's
/// namespace path, which is the host's), so they belong to the guest's
/// namespace, where [`crate::sysctl::apply`] writes them. libcontainer
/// would refuse them there, as runc refuses them in a host's namespace.
/// Answers them with their keys checked (see [`crate::sysctl::check_key`]).
pub fn take_guest_net_sysctls(spec: &mut Spec) -> Result<Vec<(String, String)>> {
    let Some(linux) = spec.linux().as_ref() else {
        return Ok(Vec::new());
    };
    let own_network = linux.namespaces().as_ref().is_some_and(|namespaces| {
        namespaces
            .iter()
            .any(|ns| ns.typ() == oci_spec::runtime::LinuxNamespaceType::Network)
    });
    let Some(sysctls) = linux.sysctl().clone() else {
        return Ok(Vec::new());
    };
    if own_network {
        return Ok(Vec::new());
    }
    let (net, rest): (Vec<_>, Vec<_>) = sysctls
        .into_iter()
        .partition(|(key, _)| key.replace('/', ".").starts_with("net."));
    if net.is_empty() {
        return Ok(Vec::new());
    }
    for (key, _) in &net {
        crate::sysctl::check_key(key).map_err(|reason| {
            AgentError::invalid(format!("oci_spec_json.linux.sysctl.{key}"), reason)
        })?;
    }
    let mut linux = linux.clone();
    linux.set_sysctl(Some(rest.into_iter().collect()));
    spec.set_linux(Some(linux));
    let mut net: Vec<(String, String)> = net;
    net.sort();
    Ok(net)
}

/// The container's cgroup directory under `cgroup_root`.
pub fn cgroup_dir(spec: &Spec, cgroup_root: &Path) -> PathBuf {
    let relative = spec
        .linux()
        .as_ref()
        .and_then(|linux| linux.cgroups_path().clone())
        .unwrap_or_default();
    let relative = relative.strip_prefix("/").unwrap_or(&relative).to_owned();
    cgroup_root.join(relative)
}

/// An exec'd process, ready to be written for libcontainer's tenant builder.
pub fn exec_process(json: &[u8], terminal: bool) -> Result<Process> {
    const FIELD: &str = "process_json";
    let mut process: Process = parse(FIELD, json)?;
    check_process(FIELD, &process)?;
    process.set_terminal(Some(terminal));
    Ok(process)
}

/// Resource limits for UpdateContainer.
pub fn resources(json: &[u8]) -> Result<oci_spec::runtime::LinuxResources> {
    parse("resources_json", json)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rootfs() -> tempfile::TempDir {
        tempfile::tempdir().expect("tempdir")
    }

    #[test]
    fn names_the_bad_field() {
        let dir = rootfs();
        let root = dir.path().to_str().expect("utf-8");
        let err = container_spec(
            "c",
            br#"{"ociVersion":"1.0.2","process":{"args":"sh"}}"#,
            root,
            false,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("oci_spec_json.process.args: invalid type"),
            "{err}"
        );

        let err = container_spec("c", b"{not json", root, false)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("oci_spec_json: "), "{err}");

        let err = container_spec(
            "c",
            br#"{"ociVersion":"1.0.2","process":{"args":[],"cwd":"/","user":{"uid":0,"gid":0}}}"#,
            root,
            false,
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "oci_spec_json.process.args: must name the program to run"
        );
    }

    #[test]
    fn net_sysctls_go_to_the_guest_only_without_a_network_namespace() {
        let dir = rootfs();
        let root = dir.path().to_str().expect("utf-8");
        let spec_with = |namespaces: &str| {
            container_spec(
                "c",
                format!(
                    r#"{{"ociVersion":"1.0.2","process":{{"args":["sh"],"cwd":"/","user":{{"uid":0,"gid":0}}}},
                    "linux":{{"namespaces":[{namespaces}],"sysctl":{{"net.ipv4.ip_unprivileged_port_start":"500","kernel.shm_rmid_forced":"1","net/core/somaxconn":"512"}}}}}}"#
                )
                .as_bytes(),
                root,
                false,
            )
            .expect("valid spec")
        };
        let mut shared = spec_with(r#"{"type":"ipc"}"#);
        assert_eq!(
            take_guest_net_sysctls(&mut shared).expect("taken"),
            [
                (
                    "net.ipv4.ip_unprivileged_port_start".to_owned(),
                    "500".to_owned()
                ),
                ("net/core/somaxconn".to_owned(), "512".to_owned())
            ]
        );
        let left = shared.linux().as_ref().and_then(|l| l.sysctl().clone());
        assert_eq!(
            left.expect("the rest stays")
                .into_iter()
                .collect::<Vec<_>>(),
            [("kernel.shm_rmid_forced".to_owned(), "1".to_owned())]
        );
        let mut own = spec_with(r#"{"type":"ipc"},{"type":"network"}"#);
        assert!(take_guest_net_sysctls(&mut own).expect("none").is_empty());
        assert_eq!(
            own.linux()
                .as_ref()
                .and_then(|l| l.sysctl().as_ref())
                .map(|s| s.len()),
            Some(3)
        );
    }

    #[test]
    fn refuses_a_missing_rootfs() {
        let err = container_spec("c", br#"{"ociVersion":"1.0.2"}"#, "/no/such/rootfs", false)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("rootfs: /no/such/rootfs does not exist"),
            "{err}"
        );
        let err = container_spec("c", br#"{"ociVersion":"1.0.2"}"#, "relative", false)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("rootfs: "), "{err}");
    }

    #[test]
    fn fills_in_root_cgroup_and_terminal() {
        let dir = rootfs();
        let root = dir.path().to_str().expect("utf-8");
        let spec = container_spec(
            "c9",
            br#"{"ociVersion":"1.0.2","process":{"args":["sh"],"cwd":"/","terminal":false,"user":{"uid":0,"gid":0}}}"#,
            root,
            true,
        )
        .expect("valid spec");
        assert_eq!(
            spec.root().as_ref().map(|r| r.path().clone()),
            Some(PathBuf::from(root))
        );
        assert_eq!(
            spec.process().as_ref().and_then(|p| p.terminal()),
            Some(true)
        );
        assert_eq!(
            cgroup_dir(&spec, Path::new("/sys/fs/cgroup")),
            PathBuf::from("/sys/fs/cgroup/hull/c9")
        );
    }
}
