//! The real side of the task state machine's seam: the pod's VM
//! ([`crate::pod`]) and its agent ([`crate::agent`]), booted from the
//! configuration, and each container's host side (its mounts in the pod's
//! shared directory, [`crate::mounts`], and its spec as the guest sees it,
//! [`crate::spec`]).

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use containerd_shim::protos::api;
use hull_proto::v1 as agent_api;
use tokio::sync::watch;

use self::agent::GrpcAgent;
use crate::config::Config;
use crate::error::{Result, ShimError};
use crate::mounts::ContainerMounts;
use crate::pod::{Pod, PodSpec, VmKiller};
use crate::task::seam::{GuestAgent, HostResources, PodBooter, PodVm, Prepared};
use crate::tasks::{Deadlines, SANDBOX_ID_ANNOTATION, pod_dir_record};

mod agent;

/// The task state machine's deadlines for real pods.
pub fn deadlines() -> Deadlines {
    Deadlines {
        abandoned_after_boot: crate::pod::BOOT_TIMEOUT + Deadlines::default().abandoned,
        ..Deadlines::default()
    }
}

/// Boots pods with QEMU or hull-vmm, as the configuration says.
#[derive(Debug, Default)]
pub struct VmBooter;

/// The runtime options containerd passes with CRI (`runtimeoptions.v1`).
#[derive(Clone, PartialEq, prost::Message)]
struct RuntimeOptions {
    #[prost(string, tag = "1")]
    type_url: String,
    #[prost(string, tag = "2")]
    config_path: String,
}

fn config_path_option(
    options: Option<&containerd_shim::protos::protobuf::well_known_types::any::Any>,
) -> Option<String> {
    let any = options?;
    if !any.type_url.ends_with("runtimeoptions.v1.Options") {
        return None;
    }
    <RuntimeOptions as prost::Message>::decode(any.value.as_slice())
        .ok()
        .map(|options| options.config_path)
}

#[async_trait]
impl PodBooter for VmBooter {
    async fn boot(
        &self,
        request: &api::CreateTaskRequest,
        spec: &serde_json::Value,
    ) -> Result<Arc<dyn PodVm>> {
        let bundle = Path::new(&request.bundle);
        // Before the boot, so that a pod refused boots no VM.
        crate::spec::refuse_boot_by_container(spec)?;
        crate::spec::refuse_host_namespaces(spec)?;
        crate::spec::refuse_lsm_labels(spec)?;
        let annotations = crate::spec::annotations(spec);
        let config = Config::load(&Config::path(
            config_path_option(request.options.as_ref()).as_deref(),
        ))?;
        crate::logging::set_level(&config.log_level);
        let cgroups_path = crate::spec::cgroups_path(spec)?;
        let size = crate::sizing::size(
            &config,
            &crate::sizing::Inputs {
                annotations: &annotations,
                cgroup: crate::sizing::cgroup_limits(cgroups_path.as_deref())?,
                from_cri: annotations.contains_key(SANDBOX_ID_ANNOTATION),
                resources: spec.pointer("/linux/resources"),
                host_cpus: std::thread::available_parallelism()
                    .map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX)),
            },
        )?;
        tracing::info!(vcpus = size.vcpus, vcpus_from = ?size.vcpus_from, memory_mib = size.memory_mib, memory_from = ?size.memory_from, "the pod's VM size");
        let pod_id = annotations
            .get(SANDBOX_ID_ANNOTATION)
            .cloned()
            .unwrap_or_else(|| request.id.clone());
        let hostname = spec
            .get("hostname")
            .and_then(|h| h.as_str())
            .unwrap_or_default()
            .to_owned();
        // Recorded before the boot, so that the `delete` command finds
        // the pod's VM if this shim dies while it boots.
        let record = pod_dir_record(bundle);
        std::fs::write(
            &record,
            crate::pod_dir::PodDir::new(&config.state_dir, &pod_id)
                .path()
                .as_os_str()
                .as_encoded_bytes(),
        )
        .map_err(ShimError::io(format!("writing {}", record.display())))?;
        let pod = Pod::start(
            &config,
            &PodSpec {
                id: pod_id,
                vcpus: size.vcpus,
                memory_mib: size.memory_mib,
                hostname,
                netns: crate::spec::network_namespace(spec),
                cgroups_path,
            },
        )
        .await?;
        Ok(Arc::new(VmPod {
            agent: Arc::new(GrpcAgent(pod.agent())),
            gone: pod.gone(),
            killer: pod.killer(),
            pod: Mutex::new(Some(pod)),
        }))
    }
}

/// A booted pod, until it is stopped.
#[derive(Debug)]
struct VmPod {
    agent: Arc<GrpcAgent>,
    gone: watch::Receiver<Option<String>>,
    killer: VmKiller,
    /// Taken by the stop. Locked only for the synchronous host work of a
    /// Create (mounts in its shared directory) and for that take.
    pod: Mutex<Option<Pod>>,
}

impl HostResources for ContainerMounts {
    fn release(&mut self) {
        ContainerMounts::release(self);
    }
}

#[async_trait]
impl PodVm for VmPod {
    fn agent(&self) -> Arc<dyn GuestAgent> {
        Arc::clone(&self.agent) as Arc<dyn GuestAgent>
    }

    fn gone(&self) -> watch::Receiver<Option<String>> {
        self.gone.clone()
    }

    fn prepare(
        &self,
        id: &str,
        bundle: &Path,
        mut spec: serde_json::Value,
        rootfs_mounts: &[api::Mount],
    ) -> Result<Prepared> {
        let guard = self.pod.lock().unwrap_or_else(PoisonError::into_inner);
        let pod = guard
            .as_ref()
            .ok_or_else(|| ShimError::VmGone("the pod was stopped".into()))?;
        let record = pod_dir_record(bundle);
        std::fs::write(&record, pod.dir().as_os_str().as_encoded_bytes())
            .map_err(ShimError::io(format!("writing {}", record.display())))?;
        let mut mounts = ContainerMounts::new(pod.shared(), id)?;
        let guest_rootfs = mounts.rootfs(rootfs_mounts, &crate::spec::root_path(&spec, bundle))?;
        crate::spec::for_guest(&mut spec, &mut mounts)?;
        crate::spec::limit_pids(&mut spec, pod.default_pids_limit);
        let oci_spec_json = serde_json::to_vec(&spec)
            .map_err(|err| ShimError::invalid("config.json", err.to_string()))?;
        let pod_mounts = mounts
            .take_pod_tmpfs()
            .into_iter()
            .map(|tmpfs| agent_api::SharedMount {
                source: "shm".into(),
                target: tmpfs.target,
                fstype: "tmpfs".into(),
                // tmpfs's own options: the agent passes them as mount data.
                // nosuid, nodev and noexec are on each container's bind.
                options: vec!["mode=1777".into(), format!("size={}", tmpfs.size_bytes)],
                read_only: false,
            })
            .collect();
        Ok(Prepared {
            oci_spec_json,
            guest_rootfs,
            pod_mounts,
            host: Box::new(mounts),
        })
    }

    fn kill(&self, reason: String) {
        self.killer.kill(reason);
    }

    async fn stop(&self) {
        let pod = self
            .pod
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(pod) = pod {
            pod.stop().await;
        }
    }
}
