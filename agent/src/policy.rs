//! The sandbox's agent policy: RPCs the host forbids for the sandbox's
//! lifetime (e.g. `ExecProcess`, so nobody can start a shell in a CI
//! build's containers), set once at CreateSandbox. Unknown names are
//! refused, so a typo cannot silently allow what it meant to deny.

use std::collections::BTreeSet;

use hull_proto::v1 as api;

use crate::error::{AgentError, Result};

/// Every RPC of the service, as named in the `.proto` file.
pub const RPCS: &[&str] = &[
    "Health",
    "GuestDetails",
    "CreateSandbox",
    "DestroySandbox",
    "CreateContainer",
    "StartContainer",
    "RemoveContainer",
    "PauseContainer",
    "ResumeContainer",
    "UpdateContainer",
    "StatsContainer",
    "ExecProcess",
    "SignalProcess",
    "WaitProcess",
    "ListProcesses",
    "ReadOutput",
    "WriteStdin",
    "CloseStdin",
    "ResizeTty",
    "OomEvents",
];

/// What the host always needs: to see the agent, and to set up and tear
/// down the sandbox.
const UNDENIABLE: &[&str] = &["Health", "GuestDetails", "CreateSandbox", "DestroySandbox"];

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Policy {
    denied: BTreeSet<&'static str>,
}

impl Policy {
    /// Checks the request's policy; every bad name is reported by index.
    pub fn parse(policy: Option<&api::AgentPolicy>) -> Result<Self> {
        let mut denied = BTreeSet::new();
        for (index, name) in policy
            .map(|policy| policy.denied_rpcs.as_slice())
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            let field = || format!("policy.denied_rpcs[{index}]");
            let Some(&rpc) = RPCS.iter().find(|rpc| **rpc == name.as_str()) else {
                return Err(AgentError::invalid(
                    field(),
                    format!("{name:?} is not an RPC of hull.agent.v1"),
                ));
            };
            if UNDENIABLE.contains(&rpc) {
                return Err(AgentError::invalid(
                    field(),
                    format!("{rpc} cannot be denied: the host needs it"),
                ));
            }
            denied.insert(rpc);
        }
        Ok(Self { denied })
    }

    /// Refuses `rpc` if the policy denies it.
    pub fn check(&self, rpc: &'static str) -> Result<()> {
        if self.denied.contains(rpc) {
            return Err(AgentError::Denied(rpc));
        }
        Ok(())
    }

    pub fn denied(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.denied.iter().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(names: &[&str]) -> Option<api::AgentPolicy> {
        Some(api::AgentPolicy {
            denied_rpcs: names.iter().map(|name| (*name).to_owned()).collect(),
        })
    }

    #[test]
    fn the_list_is_the_services_rpcs() {
        let proto = include_str!("../../proto/hull/agent/v1/agent.proto");
        let declared: BTreeSet<&str> = proto
            .lines()
            .filter_map(|line| line.trim().strip_prefix("rpc "))
            .map(|rest| rest.split('(').next().unwrap_or_default().trim())
            .collect();
        assert_eq!(declared, RPCS.iter().copied().collect::<BTreeSet<_>>());
    }

    #[test]
    fn a_denied_rpc_is_refused_and_others_pass() {
        let policy = Policy::parse(policy(&["ExecProcess", "WriteStdin"]).as_ref()).expect("ok");
        let err = policy.check("ExecProcess").expect_err("denied");
        assert_eq!(
            tonic::Status::from(err).code(),
            tonic::Code::PermissionDenied
        );
        policy.check("StartContainer").expect("allowed");
        assert_eq!(
            policy.denied().collect::<Vec<_>>(),
            ["ExecProcess", "WriteStdin"]
        );
        Policy::parse(None)
            .expect("none")
            .check("ExecProcess")
            .expect("allowed");
    }

    #[test]
    fn unknown_and_undeniable_names_are_refused_by_index() {
        let err = Policy::parse(policy(&["ExecProcess", "Exec"]).as_ref()).expect_err("unknown");
        assert_eq!(
            err.to_string(),
            "policy.denied_rpcs[1]: \"Exec\" is not an RPC of hull.agent.v1"
        );
        let err = Policy::parse(policy(&["DestroySandbox"]).as_ref()).expect_err("undeniable");
        assert!(
            err.to_string()
                .starts_with("policy.denied_rpcs[0]: DestroySandbox cannot")
        );
    }
}
