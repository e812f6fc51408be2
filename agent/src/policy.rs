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

/// What a test cannot make the agent hang on: without these there is no
/// sandbox to test with.
const UNHANGABLE: &[&str] = &["Health", "GuestDetails", "CreateSandbox"];

/// Whether this agent was built to play a stalling guest (tests only).
const TEST_HANG: bool = cfg!(feature = "test-hang");

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Policy {
    denied: BTreeSet<&'static str>,
    /// RPCs never answered (an agent built with `test-hang` only).
    hang: BTreeSet<&'static str>,
}

/// The RPC named `name`, or an error naming `field`.
fn rpc_named(field: &str, name: &str) -> Result<&'static str> {
    RPCS.iter()
        .find(|rpc| **rpc == name)
        .copied()
        .ok_or_else(|| {
            AgentError::invalid(field, format!("{name:?} is not an RPC of hull.agent.v1"))
        })
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
        let hang_rpcs = policy
            .map(|policy| policy.hang_rpcs.as_slice())
            .unwrap_or_default();
        let hang = Self::parse_hang(hang_rpcs, TEST_HANG)?;
        Ok(Self { denied, hang })
    }

    fn parse_hang(names: &[String], test_hang: bool) -> Result<BTreeSet<&'static str>> {
        if !names.is_empty() && !test_hang {
            return Err(AgentError::invalid(
                "policy.hang_rpcs",
                "this agent was not built for tests (feature test-hang)",
            ));
        }
        let mut hang = BTreeSet::new();
        for (index, name) in names.iter().enumerate() {
            let field = format!("policy.hang_rpcs[{index}]");
            let rpc = rpc_named(&field, name)?;
            if UNHANGABLE.contains(&rpc) {
                return Err(AgentError::invalid(
                    field,
                    format!("{rpc} cannot hang: the host needs it to set the sandbox up"),
                ));
            }
            hang.insert(rpc);
        }
        Ok(hang)
    }

    /// Whether `rpc` is never to be answered (tests only).
    pub fn hangs(&self, rpc: &str) -> bool {
        self.hang.contains(rpc)
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
            ..Default::default()
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
    fn only_a_test_agent_hangs_and_never_on_the_sandbox_setup() {
        let names = |names: &[&str]| names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>();
        let err =
            Policy::parse_hang(&names(&["SignalProcess"]), false).expect_err("not a test build");
        assert!(
            err.to_string()
                .starts_with("policy.hang_rpcs: this agent was not built for tests"),
            "{err}"
        );
        assert!(Policy::parse_hang(&[], false).expect("none").is_empty());
        let hang = Policy::parse_hang(&names(&["SignalProcess", "DestroySandbox"]), true)
            .expect("test build");
        assert_eq!(
            hang.into_iter().collect::<Vec<_>>(),
            ["DestroySandbox", "SignalProcess"]
        );
        let err = Policy::parse_hang(&names(&["CreateSandbox"]), true).expect_err("setup");
        assert!(
            err.to_string()
                .starts_with("policy.hang_rpcs[0]: CreateSandbox cannot hang"),
            "{err}"
        );
        let err = Policy::parse_hang(&names(&["Kill"]), true).expect_err("unknown");
        assert!(
            err.to_string()
                .starts_with("policy.hang_rpcs[0]: \"Kill\" is not an RPC"),
            "{err}"
        );
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
