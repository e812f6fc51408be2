//! The ttrpc Task service: a thin adapter from containerd's requests to
//! [`Tasks`]; errors become ttrpc statuses here and nowhere else.

use async_trait::async_trait;
use containerd_shim::TtrpcResult;
use containerd_shim::protos::api;
use containerd_shim::protos::cgroups_v2::metrics as cgroups;
use containerd_shim::protos::protobuf::Message;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::shim_async::Task;
use containerd_shim::protos::ttrpc::r#async::TtrpcContext;
use hull_proto::v1 as agent_api;

use crate::error::ShimError;
use crate::tasks::Tasks;

#[derive(Debug, Clone)]
pub struct TaskService {
    pub tasks: Tasks,
}

type Empty = api::Empty;

#[async_trait]
impl Task for TaskService {
    #[tracing::instrument(level = "debug", skip_all, fields(id = %request.id, exec = %request.exec_id))]
    async fn state(
        &self,
        _: &TtrpcContext,
        request: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        Ok(self.tasks.state(&request)?)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(id = %request.id))]
    async fn create(
        &self,
        _: &TtrpcContext,
        request: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        Ok(self.tasks.create(request).await?)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(id = %request.id, exec = %request.exec_id))]
    async fn start(
        &self,
        _: &TtrpcContext,
        request: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        Ok(self.tasks.start(request).await?)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(id = %request.id, exec = %request.exec_id))]
    async fn delete(
        &self,
        _: &TtrpcContext,
        request: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        Ok(self.tasks.delete(request).await?)
    }

    async fn pids(
        &self,
        _: &TtrpcContext,
        request: api::PidsRequest,
    ) -> TtrpcResult<api::PidsResponse> {
        Ok(self.tasks.pids(&request.id).await?)
    }

    async fn pause(&self, _: &TtrpcContext, request: api::PauseRequest) -> TtrpcResult<Empty> {
        self.tasks.set_paused(&request.id, true).await?;
        Ok(Empty::default())
    }

    async fn resume(&self, _: &TtrpcContext, request: api::ResumeRequest) -> TtrpcResult<Empty> {
        self.tasks.set_paused(&request.id, false).await?;
        Ok(Empty::default())
    }

    async fn checkpoint(
        &self,
        _: &TtrpcContext,
        _: api::CheckpointTaskRequest,
    ) -> TtrpcResult<Empty> {
        Err(ShimError::Unimplemented("checkpoint").into())
    }

    #[tracing::instrument(level = "debug", skip_all, fields(id = %request.id, exec = %request.exec_id, signal = request.signal))]
    async fn kill(&self, _: &TtrpcContext, request: api::KillRequest) -> TtrpcResult<Empty> {
        self.tasks.kill(request).await?;
        Ok(Empty::default())
    }

    #[tracing::instrument(level = "debug", skip_all, fields(id = %request.id, exec = %request.exec_id))]
    async fn exec(&self, _: &TtrpcContext, request: api::ExecProcessRequest) -> TtrpcResult<Empty> {
        self.tasks.exec(request).await?;
        Ok(Empty::default())
    }

    async fn resize_pty(
        &self,
        _: &TtrpcContext,
        request: api::ResizePtyRequest,
    ) -> TtrpcResult<Empty> {
        self.tasks
            .resize_pty(&request.id, &request.exec_id, request.height, request.width)
            .await?;
        Ok(Empty::default())
    }

    async fn close_io(&self, _: &TtrpcContext, request: api::CloseIORequest) -> TtrpcResult<Empty> {
        if request.stdin {
            self.tasks
                .close_stdin(&request.id, &request.exec_id)
                .await?;
        }
        Ok(Empty::default())
    }

    async fn update(
        &self,
        _: &TtrpcContext,
        request: api::UpdateTaskRequest,
    ) -> TtrpcResult<Empty> {
        // containerd sends the OCI LinuxResources as JSON in the Any.
        let resources = request
            .resources
            .as_ref()
            .map(|any| any.value.clone())
            .ok_or_else(|| ShimError::invalid("resources", "is missing"))?;
        self.tasks.update(&request.id, resources).await?;
        Ok(Empty::default())
    }

    #[tracing::instrument(level = "debug", skip_all, fields(id = %request.id, exec = %request.exec_id))]
    async fn wait(
        &self,
        _: &TtrpcContext,
        request: api::WaitRequest,
    ) -> TtrpcResult<api::WaitResponse> {
        Ok(self.tasks.wait(request).await?)
    }

    async fn stats(
        &self,
        _: &TtrpcContext,
        request: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        let stats = self.tasks.stats(&request.id).await?;
        let metrics = metrics_of(&stats);
        let mut any = Any::new();
        any.type_url = "io.containerd.cgroups.v2.Metrics".into();
        any.value = metrics
            .write_to_bytes()
            .map_err(|err| ShimError::invalid("stats", err.to_string()))?;
        Ok(api::StatsResponse {
            stats: Some(any).into(),
            ..Default::default()
        })
    }

    async fn connect(
        &self,
        _: &TtrpcContext,
        request: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid: self.tasks.init_pid(&request.id).unwrap_or_default(),
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        })
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn shutdown(&self, _: &TtrpcContext, _: api::ShutdownRequest) -> TtrpcResult<Empty> {
        self.tasks.shutdown().await;
        Ok(Empty::default())
    }
}

/// The guest's cgroup v2 figures, as containerd's v2 metrics.
fn metrics_of(stats: &agent_api::StatsContainerResponse) -> cgroups::Metrics {
    let mut metrics = cgroups::Metrics::new();
    if let Some(cpu) = &stats.cpu {
        metrics.cpu = Some(cgroups::CPUStat {
            usage_usec: cpu.usage_usec,
            user_usec: cpu.user_usec,
            system_usec: cpu.system_usec,
            nr_periods: cpu.nr_periods,
            nr_throttled: cpu.nr_throttled,
            throttled_usec: cpu.throttled_usec,
            ..Default::default()
        })
        .into();
    }
    if let Some(memory) = &stats.memory {
        let stat = |key: &str| memory.stat.get(key).copied().unwrap_or_default();
        metrics.memory = Some(cgroups::MemoryStat {
            usage: memory.usage_bytes,
            usage_limit: memory.limit_bytes,
            max_usage: memory.max_usage_bytes,
            anon: stat("anon"),
            file: stat("file"),
            kernel_stack: stat("kernel_stack"),
            slab: stat("slab"),
            sock: stat("sock"),
            shmem: stat("shmem"),
            file_mapped: stat("file_mapped"),
            inactive_anon: stat("inactive_anon"),
            active_anon: stat("active_anon"),
            inactive_file: stat("inactive_file"),
            active_file: stat("active_file"),
            pgfault: stat("pgfault"),
            pgmajfault: stat("pgmajfault"),
            ..Default::default()
        })
        .into();
        metrics.memory_events = Some(cgroups::MemoryEvents {
            oom_kill: memory.oom_kill_count,
            ..Default::default()
        })
        .into();
    }
    if let Some(pids) = &stats.pids {
        metrics.pids = Some(cgroups::PidsStat {
            current: pids.current,
            limit: pids.limit,
            ..Default::default()
        })
        .into();
    }
    if let Some(io) = &stats.io {
        metrics.io = Some(cgroups::IOStat {
            usage: io
                .devices
                .iter()
                .map(|device| cgroups::IOEntry {
                    major: device.major,
                    minor: device.minor,
                    rbytes: device.read_bytes,
                    wbytes: device.write_bytes,
                    rios: device.read_ios,
                    wios: device.write_ios,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
        .into();
    }
    metrics
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_stats_become_v2_metrics() {
        let stats = agent_api::StatsContainerResponse {
            cpu: Some(agent_api::CpuStats {
                usage_usec: 7,
                ..Default::default()
            }),
            memory: Some(agent_api::MemoryStats {
                usage_bytes: 4096,
                limit_bytes: 8192,
                oom_kill_count: 1,
                stat: [("anon".to_owned(), 1024)].into(),
                ..Default::default()
            }),
            pids: Some(agent_api::PidsStats {
                current: 3,
                limit: 10,
            }),
            io: Some(agent_api::IoStats {
                devices: vec![agent_api::IoDeviceStats {
                    major: 254,
                    minor: 16,
                    read_bytes: 4096,
                    write_bytes: 8192,
                    read_ios: 1,
                    write_ios: 2,
                }],
            }),
        };
        let metrics = metrics_of(&stats);
        assert_eq!(metrics.cpu.usage_usec, 7);
        assert_eq!(
            (
                metrics.memory.usage,
                metrics.memory.usage_limit,
                metrics.memory.anon
            ),
            (4096, 8192, 1024)
        );
        assert_eq!(metrics.memory_events.oom_kill, 1);
        assert_eq!((metrics.pids.current, metrics.pids.limit), (3, 10));
        let io = &metrics.io.usage;
        assert_eq!(io.len(), 1, "{io:?}");
        assert_eq!(
            (io[0].major, io[0].minor, io[0].rbytes, io[0].wbytes),
            (254, 16, 4096, 8192)
        );
        assert_eq!((io[0].rios, io[0].wios), (1, 2));
    }
}
