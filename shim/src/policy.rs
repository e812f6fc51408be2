//! The agent policy file (`agent_policy_file` in the config): RPCs the
//! agent refuses for the pod's lifetime, read when each pod is created.
//!
//! ```toml
//! denied_rpcs = ["ExecProcess"]
//! ```
//!
//! For tests only, `hang_rpcs = ["SignalProcess"]` names RPCs that an agent
//! built with its `test-hang` feature never answers (a stalling guest); a
//! normal agent refuses the sandbox.
//!
//! The agent checks the names (it knows its RPCs); this only reads the file.

use std::path::Path;

use hull_proto::v1 as api;
use serde::Deserialize;

use crate::error::{Result, ShimError};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    denied_rpcs: Vec<String>,
    #[serde(default)]
    hang_rpcs: Vec<String>,
}

/// Reads the policy at `path`; every problem names the file.
pub fn load(path: &Path) -> Result<api::AgentPolicy> {
    let field = format!("agent_policy_file {}", path.display());
    let text = std::fs::read_to_string(path)
        .map_err(|err| ShimError::invalid(field.clone(), err.to_string()))?;
    let file: File =
        toml::from_str(&text).map_err(|err| ShimError::invalid(field, err.message().to_owned()))?;
    Ok(api::AgentPolicy {
        denied_rpcs: file.denied_rpcs,
        hang_rpcs: file.hang_rpcs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_denied_rpcs_and_names_a_bad_file() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("policy.toml");
        std::fs::write(&path, "denied_rpcs = [\"ExecProcess\"]\n").expect("write");
        assert_eq!(load(&path).expect("policy").denied_rpcs, ["ExecProcess"]);

        std::fs::write(&path, "deny = [\"ExecProcess\"]\n").expect("write");
        let err = load(&path).expect_err("unknown key").to_string();
        assert!(
            err.contains("agent_policy_file") && err.contains("deny"),
            "{err}"
        );
        let missing = dir.path().join("missing.toml");
        let err = load(&missing).expect_err("missing").to_string();
        assert!(err.contains(&missing.display().to_string()), "{err}");
    }
}
