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
    if linux.cgroups_path().is_none() {
        linux.set_cgroups_path(Some(PathBuf::from(format!(
            "{CGROUP_PARENT}/{container_id}"
        ))));
    }
    spec.set_linux(Some(linux));
    Ok(spec)
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
