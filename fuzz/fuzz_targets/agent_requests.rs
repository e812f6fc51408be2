//! The agent's request validation as the agent receives requests: the
//! input's first byte picks the RPC, the rest is its protobuf message as
//! it would arrive over gRPC. Each goes through the checks the agent makes
//! before it changes anything (ids, OCI spec and rootfs, process,
//! resources, hostname, DNS, hosts, network plan, shared mount targets),
//! and what passes is encoded again as the agent would write it.

#![no_main]

use std::path::Path;

use hull_agent::service::{plan_sandbox, validate_create_container, validate_exec_process};
use hull_agent::{ids, spec};
use hull_proto::v1 as api;
use libfuzzer_sys::fuzz_target;
use prost::Message;

/// Where a test-mode agent keeps its shared mounts (any path works: only
/// the prefix matters).
const SHARED: &str = "/run/hull-agent/sandbox/shared";

fuzz_target!(|data: &[u8]| {
    let Some((&which, message)) = data.split_first() else {
        return;
    };
    match which % 4 {
        0 => {
            let Ok(request) = api::CreateContainerRequest::decode(message) else {
                return;
            };
            if let Ok(spec) = validate_create_container(&request) {
                let _ = serde_json::to_vec(&spec);
                let _ = spec::cgroup_dir(&spec, Path::new("/sys/fs/cgroup"));
            }
        }
        1 => {
            let Ok(request) = api::ExecProcessRequest::decode(message) else {
                return;
            };
            if let Ok(process) = validate_exec_process(&request) {
                let _ = serde_json::to_vec(&process);
            }
        }
        2 => {
            let Ok(request) = api::UpdateContainerRequest::decode(message) else {
                return;
            };
            if ids::validate("container_id", &request.container_id).is_ok()
                && let Ok(resources) = spec::resources(&request.resources_json)
            {
                let _ = serde_json::to_vec(&resources);
            }
        }
        _ => {
            let Ok(request) = api::CreateSandboxRequest::decode(message) else {
                return;
            };
            let _ = plan_sandbox(&request, Path::new(SHARED));
        }
    }
});
