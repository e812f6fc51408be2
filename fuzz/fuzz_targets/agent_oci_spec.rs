//! The JSON documents of the agent's requests, raw: the input is the
//! `oci_spec_json` of a CreateContainer (with a valid id and an existing
//! rootfs, so the whole spec is checked and adapted), and also an exec's
//! `process_json` and an update's `resources_json`. Seeds are real
//! config.json files (fuzz/corpus/agent_oci_spec).

#![no_main]

use std::path::Path;

use hull_agent::spec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|json: &[u8]| {
    if let Ok(spec) = spec::container_spec("fuzz-1", json, "/", json.len() % 2 == 0) {
        let _ = serde_json::to_vec(&spec);
        let _ = spec::cgroup_dir(&spec, Path::new("/sys/fs/cgroup"));
    }
    if let Ok(process) = spec::exec_process(json, false) {
        let _ = serde_json::to_vec(&process);
    }
    if let Ok(resources) = spec::resources(json) {
        let _ = serde_json::to_vec(&resources);
    }
});
