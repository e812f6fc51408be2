//! The pod's VM size: what Kubernetes asked for the pod, so that a pod moved
//! from runc to hull gets the CPUs and memory its spec gives it.
//!
//! For each of vCPUs and memory, the first of these that says something:
//! 1. the pod's `io.hull.*` annotations, where the node's config enables
//!    them (an operator's explicit choice);
//! 2. the limits of the pod's cgroup on the host, which the kubelet creates
//!    before RunPodSandbox with the pod's limits plus the RuntimeClass
//!    overhead (`pod_overhead_*`, taken off again): the sandbox spec's
//!    `linux.cgroupsPath` names a cgroup below it;
//! 3. containerd 1.7's sandbox annotations (`io.kubernetes.cri.sandbox-*`),
//!    the pod's own limits without the overhead;
//! 4. for a container run without CRI (`ctr run --memory-limit --cpus`),
//!    its own spec's `linux.resources`, the pod being that one container;
//! 5. the configured defaults, which is what a pod without limits
//!    (BestEffort, or without CPU limits) gets.
//!
//! Then within `max_vcpus` and `max_memory_mib`, and no more vCPUs than
//! the host has. A pod whose memory limit leaves less than the smallest VM
//! after the overhead is refused, naming the limit, rather than booted
//! larger than its cgroup lets it grow.

use std::collections::HashMap;

use hull_hypervisor::cgroup::PodLimits;
use serde_json::Value;

use crate::config::{Config, MIN_MEMORY_MIB};
use crate::error::{Result, ShimError};

const MIB: u64 = 1024 * 1024;
const SANDBOX_MEMORY: &str = "io.kubernetes.cri.sandbox-memory";
const SANDBOX_CPU_QUOTA: &str = "io.kubernetes.cri.sandbox-cpu-quota";
const SANDBOX_CPU_PERIOD: &str = "io.kubernetes.cri.sandbox-cpu-period";

/// Where a dimension of the size came from, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Annotation,
    PodCgroup,
    SandboxAnnotation,
    ContainerSpec,
    Default,
}

/// The VM's size and where each part came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodSize {
    pub vcpus: u32,
    pub memory_mib: u32,
    pub vcpus_from: Source,
    pub memory_from: Source,
}

/// What the size is worked out from, read before; see the module docs.
#[derive(Debug)]
pub struct Inputs<'a> {
    pub annotations: &'a HashMap<String, String>,
    /// The limits above the sandbox's cgroup; none without a cgroups path.
    pub cgroup: PodLimits,
    /// The spec is a CRI sandbox's (it has a sandbox id annotation).
    pub from_cri: bool,
    /// The spec's own `linux.resources`.
    pub resources: Option<&'a Value>,
    /// CPUs this host has for the VM.
    pub host_cpus: u32,
}

/// Reads the limits above the sandbox's cgroup, if the spec names one.
pub fn cgroup_limits(cgroups_path: Option<&str>) -> Result<PodLimits> {
    match cgroups_path {
        Some(path) => Ok(PodLimits::for_spec(path)?),
        None => Ok(PodLimits::default()),
    }
}

/// The VM's size; see the module docs.
pub fn size(config: &Config, inputs: &Inputs<'_>) -> Result<PodSize> {
    let annotated = config.annotated_size(inputs.annotations)?;
    let sandbox = sandbox_annotations(inputs.annotations)?;
    let own = if inputs.from_cri {
        PodLimits::default()
    } else {
        container_limits(inputs.resources)
    };

    let (memory_mib, memory_from) = if let Some(mib) = annotated.memory_mib {
        (mib, Source::Annotation)
    } else if let Some(bytes) = inputs.cgroup.memory_bytes {
        let overhead = u64::from(config.pod_overhead_memory_mib);
        let mib = (bytes / MIB).saturating_sub(overhead);
        if mib < u64::from(MIN_MEMORY_MIB) {
            return Err(ShimError::invalid(
                "pod cgroup memory limit",
                format!(
                    "{} MiB leaves {mib} MiB for the VM after the pod overhead \
                     (pod_overhead_memory_mib, {overhead} MiB); a hull VM needs at least {MIN_MEMORY_MIB} MiB",
                    bytes / MIB
                ),
            ));
        }
        (clamp_mib(mib), Source::PodCgroup)
    } else if let Some(bytes) = sandbox.memory_bytes {
        (at_least_min(bytes)?, Source::SandboxAnnotation)
    } else if let Some(bytes) = own.memory_bytes {
        (at_least_min(bytes)?, Source::ContainerSpec)
    } else {
        (config.default_memory_mib, Source::Default)
    };

    let to_vcpus = |millis: u64| u32::try_from(millis.div_ceil(1000).max(1)).unwrap_or(u32::MAX);
    let (vcpus, vcpus_from) = if let Some(vcpus) = annotated.vcpus {
        (vcpus, Source::Annotation)
    } else if let Some(millis) = inputs.cgroup.cpu_millis {
        let millis = millis.saturating_sub(u64::from(config.pod_overhead_cpu_millis));
        (to_vcpus(millis), Source::PodCgroup)
    } else if let Some(millis) = sandbox.cpu_millis {
        (to_vcpus(millis), Source::SandboxAnnotation)
    } else if let Some(millis) = own.cpu_millis {
        (to_vcpus(millis), Source::ContainerSpec)
    } else {
        (config.default_vcpus, Source::Default)
    };

    let size = PodSize {
        vcpus: vcpus.min(config.max_vcpus).min(inputs.host_cpus.max(1)),
        memory_mib: memory_mib.min(config.max_memory_mib),
        vcpus_from,
        memory_from,
    };
    if (size.vcpus, size.memory_mib) != (vcpus, memory_mib) {
        tracing::warn!(
            asked_vcpus = vcpus,
            asked_memory_mib = memory_mib,
            vcpus = size.vcpus,
            memory_mib = size.memory_mib,
            "the pod asks for more than max_vcpus, max_memory_mib or the host's CPUs: the VM is smaller"
        );
    }
    Ok(size)
}

fn clamp_mib(mib: u64) -> u32 {
    u32::try_from(mib).unwrap_or(u32::MAX)
}

/// A limit the pod or container set itself, which must hold a VM.
fn at_least_min(bytes: u64) -> Result<u32> {
    let mib = bytes / MIB;
    if mib < u64::from(MIN_MEMORY_MIB) {
        return Err(ShimError::invalid(
            "memory limit",
            format!("{mib} MiB is less than a hull VM needs ({MIN_MEMORY_MIB} MiB)"),
        ));
    }
    Ok(clamp_mib(mib))
}

/// containerd 1.7's sandbox annotations; 0 or absent is no limit.
fn sandbox_annotations(annotations: &HashMap<String, String>) -> Result<PodLimits> {
    let number = |key: &str| -> Result<Option<u64>> {
        let Some(text) = annotations.get(key) else {
            return Ok(None);
        };
        // The quota is -1 for none; the others are never negative.
        match text.trim().parse::<i64>() {
            Ok(value) if value > 0 => Ok(Some(value.unsigned_abs())),
            Ok(_) => Ok(None),
            Err(_) => Err(ShimError::invalid(
                key,
                format!("{text:?} is not a whole number"),
            )),
        }
    };
    let memory_bytes = number(SANDBOX_MEMORY)?;
    let cpu_millis = match (number(SANDBOX_CPU_QUOTA)?, number(SANDBOX_CPU_PERIOD)?) {
        (Some(quota), Some(period)) => Some(quota.saturating_mul(1000).div_ceil(period)),
        _ => None,
    };
    Ok(PodLimits {
        memory_bytes,
        cpu_millis,
    })
}

/// A standalone container's own `linux.resources` memory limit and CPU
/// quota; what is absent or not a limit says nothing.
fn container_limits(resources: Option<&Value>) -> PodLimits {
    let Some(resources) = resources else {
        return PodLimits::default();
    };
    let positive = |value: Option<&Value>| value.and_then(Value::as_i64).filter(|v| *v > 0);
    let memory_bytes = positive(resources.pointer("/memory/limit")).map(i64::unsigned_abs);
    let cpu_millis = match (
        positive(resources.pointer("/cpu/quota")),
        positive(resources.pointer("/cpu/period")),
    ) {
        (Some(quota), Some(period)) => Some(
            quota
                .unsigned_abs()
                .saturating_mul(1000)
                .div_ceil(period.unsigned_abs()),
        ),
        _ => None,
    };
    PodLimits {
        memory_bytes,
        cpu_millis,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::config::{MEMORY_ANNOTATION, VCPUS_ANNOTATION};

    fn inputs(annotations: &HashMap<String, String>) -> Inputs<'_> {
        Inputs {
            annotations,
            cgroup: PodLimits::default(),
            from_cri: true,
            resources: None,
            host_cpus: 8,
        }
    }

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn a_pod_without_limits_gets_the_defaults() {
        let none = map(&[]);
        let size = size(&Config::default(), &inputs(&none)).expect("size");
        assert_eq!(
            size,
            PodSize {
                vcpus: 1,
                memory_mib: 512,
                vcpus_from: Source::Default,
                memory_from: Source::Default
            }
        );
    }

    #[test]
    fn the_pod_cgroup_sizes_the_vm_less_the_overhead() {
        let none = map(&[]);
        // The kubelet's pod cgroup: 1 GiB and 2 CPUs of containers, plus
        // the RuntimeClass overhead (96 MiB, 100m).
        let mut pod = inputs(&none);
        pod.cgroup = PodLimits {
            memory_bytes: Some((1024 + 96) * MIB),
            cpu_millis: Some(2100),
        };
        let size = size(&Config::default(), &pod).expect("size");
        assert_eq!((size.vcpus, size.memory_mib), (2, 1024));
        assert_eq!(
            (size.vcpus_from, size.memory_from),
            (Source::PodCgroup, Source::PodCgroup)
        );
        // Half a CPU is a whole vCPU; a CPU limit alone leaves the memory
        // to the default.
        pod.cgroup = PodLimits {
            memory_bytes: None,
            cpu_millis: Some(600),
        };
        let size = super::size(&Config::default(), &pod).expect("size");
        assert_eq!((size.vcpus, size.memory_mib), (1, 512));
        assert_eq!(size.memory_from, Source::Default);
    }

    #[test]
    fn the_maxima_and_the_hosts_cpus_bound_the_vm() {
        let none = map(&[]);
        let mut pod = inputs(&none);
        pod.host_cpus = 2;
        pod.cgroup = PodLimits {
            memory_bytes: Some(64 * 1024 * MIB),
            cpu_millis: Some(16_000),
        };
        let size = size(&Config::default(), &pod).expect("size");
        assert_eq!((size.vcpus, size.memory_mib), (2, 16384));
    }

    #[test]
    fn a_pod_limit_too_small_for_a_vm_is_refused_naming_it() {
        let none = map(&[]);
        let mut pod = inputs(&none);
        pod.cgroup.memory_bytes = Some(128 * MIB);
        let err = size(&Config::default(), &pod).expect_err("too small");
        assert!(
            err.to_string()
                .starts_with("pod cgroup memory limit: 128 MiB"),
            "{err}"
        );
    }

    #[test]
    fn enabled_annotations_win_over_the_cgroup() {
        let config = Config {
            enable_annotations: vec![MEMORY_ANNOTATION.into(), VCPUS_ANNOTATION.into()],
            ..Config::default()
        };
        let annotated = map(&[(MEMORY_ANNOTATION, "256")]);
        let mut pod = inputs(&annotated);
        pod.cgroup = PodLimits {
            memory_bytes: Some(2048 * MIB),
            cpu_millis: Some(3000),
        };
        let size = size(&config, &pod).expect("size");
        assert_eq!((size.vcpus, size.memory_mib), (3, 256));
        assert_eq!(size.memory_from, Source::Annotation);
    }

    #[test]
    fn containerd_sandbox_annotations_size_a_pod_without_cgroup_limits() {
        let annotations = map(&[
            (SANDBOX_MEMORY, "805306368"),
            (SANDBOX_CPU_QUOTA, "150000"),
            (SANDBOX_CPU_PERIOD, "100000"),
        ]);
        let size = size(&Config::default(), &inputs(&annotations)).expect("size");
        assert_eq!((size.vcpus, size.memory_mib), (2, 768));
        assert_eq!(size.vcpus_from, Source::SandboxAnnotation);
        let unlimited = map(&[
            (SANDBOX_MEMORY, "0"),
            (SANDBOX_CPU_QUOTA, "-1"),
            (SANDBOX_CPU_PERIOD, "100000"),
        ]);
        let size = super::size(&Config::default(), &inputs(&unlimited)).expect("size");
        assert_eq!((size.vcpus, size.memory_mib), (1, 512));
        let bad = map(&[(SANDBOX_MEMORY, "lots")]);
        let err = super::size(&Config::default(), &inputs(&bad)).expect_err("bad");
        assert!(err.to_string().starts_with(SANDBOX_MEMORY), "{err}");
    }

    #[test]
    fn a_container_run_without_cri_is_sized_by_its_own_limits() {
        let none = map(&[]);
        let resources = json!({
            "memory": {"limit": 2_147_483_648_i64},
            "cpu": {"quota": 200_000, "period": 100_000, "shares": 1024}
        });
        let mut ctr = inputs(&none);
        ctr.from_cri = false;
        ctr.resources = Some(&resources);
        let size = size(&Config::default(), &ctr).expect("size");
        assert_eq!((size.vcpus, size.memory_mib), (2, 2048));
        assert_eq!(size.memory_from, Source::ContainerSpec);
        // A CRI sandbox's own resources are the pause container's, not the
        // pod's.
        ctr.from_cri = true;
        let size = super::size(&Config::default(), &ctr).expect("size");
        assert_eq!((size.vcpus, size.memory_mib), (1, 512));
    }
}
