//! CreateSandbox and DestroySandbox.

use std::fmt::Write as _;
use std::path::{Component, Path, PathBuf};

use hull_proto::v1 as api;
use nix::mount::{MntFlags, MsFlags};

use super::Agent;
use crate::error::{AgentError, Result};
use crate::network::NetworkPlan;

#[derive(Debug, Default)]
pub(super) struct SandboxState {
    created: bool,
    /// Mount points in the order they were mounted.
    mounts: Vec<PathBuf>,
}

impl Agent {
    pub async fn create_sandbox(
        &self,
        request: api::CreateSandboxRequest,
    ) -> Result<api::CreateSandboxResponse> {
        let mut state = self.sandbox.lock().await;
        if state.created {
            return Err(AgentError::AlreadyExists {
                what: "the sandbox".into(),
            });
        }
        let dir = self.config.sandbox_dir();
        let shared = dir.join("shared");
        let plan = plan_sandbox(&request, &shared)?;
        if !plan.network.is_empty() && !self.config.pid1 {
            // In test mode the agent runs on a host: its interfaces are not
            // the pod's to change.
            return Err(AgentError::invalid(
                "interfaces",
                "only the agent as PID 1 in a guest sets up interfaces",
            ));
        }
        std::fs::create_dir_all(&shared)
            .map_err(|err| AgentError::io(format!("creating {}", shared.display()), err))?;

        let hostname_path = dir.join("hostname");
        let hosts_path = dir.join("hosts");
        let resolv_conf_path = dir.join("resolv.conf");
        write(&hostname_path, &format!("{}\n", request.hostname))?;
        write(&hosts_path, &plan.hosts)?;
        write(&resolv_conf_path, &plan.resolv_conf)?;
        if self.config.pid1 && !request.hostname.is_empty() {
            nix::unistd::sethostname(&request.hostname)
                .map_err(|err| AgentError::io("setting the hostname", err.into()))?;
        }

        for (index, mount) in request.mounts.iter().enumerate() {
            let field = format!("mounts[{index}]");
            match mount_shared(mount, &field) {
                Ok(target) => state.mounts.push(target),
                Err(err) => {
                    unmount_all(&mut state.mounts);
                    return Err(err);
                }
            }
        }
        if let Err(err) = crate::network::configure(&plan.network).await {
            unmount_all(&mut state.mounts);
            return Err(err);
        }
        let policy = plan.policy;
        if policy.denied().next().is_some() {
            tracing::info!(denied = ?policy.denied().collect::<Vec<_>>(), "agent policy");
        }
        *self
            .policy
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = policy;
        state.created = true;
        Ok(api::CreateSandboxResponse {
            hostname_path: hostname_path.display().to_string(),
            hosts_path: hosts_path.display().to_string(),
            resolv_conf_path: resolv_conf_path.display().to_string(),
        })
    }

    /// Mounts the pod-wide file systems a CreateContainer names that are
    /// not mounted yet (a pod's /dev/shm), each checked as CreateSandbox's
    /// are, all of them before any is mounted. They stay until
    /// DestroySandbox.
    pub(super) async fn mount_pod_mounts(&self, mounts: &[api::SharedMount]) -> Result<()> {
        if mounts.is_empty() {
            return Ok(());
        }
        let shared = self.config.sandbox_dir().join("shared");
        for (index, mount) in mounts.iter().enumerate() {
            check_mount(&shared, mount, &format!("pod_mounts[{index}]"))?;
        }
        let mut state = self.sandbox.lock().await;
        for (index, mount) in mounts.iter().enumerate() {
            if state
                .mounts
                .iter()
                .any(|known| known == Path::new(&mount.target))
            {
                continue;
            }
            let target = mount_shared(mount, &format!("pod_mounts[{index}]"))?;
            state.mounts.push(target);
        }
        Ok(())
    }

    /// Removes every container, unmounts the shares and asks the server to
    /// stop once this answer is sent.
    pub async fn destroy_sandbox(&self) -> Result<api::DestroySandboxResponse> {
        let mut errors = Vec::new();
        for container in self.containers.all() {
            if let Err(err) = self.remove(&container, true).await {
                errors.push(err.to_string());
            }
        }
        let mut state = self.sandbox.lock().await;
        unmount_all(&mut state.mounts);
        state.created = false;
        drop(state);
        self.request_shutdown();
        if errors.is_empty() {
            Ok(api::DestroySandboxResponse {})
        } else {
            Err(AgentError::Runtime(errors.join("; ")))
        }
    }
}

/// What CreateSandbox will do, every field of the request checked first so
/// that a bad one changes nothing.
#[derive(Debug)]
pub struct SandboxPlan {
    pub policy: crate::policy::Policy,
    pub network: NetworkPlan,
    pub hosts: String,
    pub resolv_conf: String,
}

/// Checks a CreateSandbox request whose shared mounts go below `shared`.
/// Public for the fuzz targets, which feed it any request.
pub fn plan_sandbox(request: &api::CreateSandboxRequest, shared: &Path) -> Result<SandboxPlan> {
    validate_hostname(&request.hostname)?;
    let policy = crate::policy::Policy::parse(request.policy.as_ref())?;
    let network = NetworkPlan::parse(&request.interfaces, &request.routes)?;
    let hosts = hosts_file(&request.hostname, &request.hosts)?;
    let resolv_conf = resolv_conf(request.dns.as_ref().unwrap_or(&api::Dns::default()))?;
    for (index, mount) in request.mounts.iter().enumerate() {
        check_mount(shared, mount, &format!("mounts[{index}]"))?;
    }
    Ok(SandboxPlan {
        policy,
        network,
        hosts,
        resolv_conf,
    })
}

fn write(path: &Path, contents: &str) -> Result<()> {
    std::fs::write(path, contents)
        .map_err(|err| AgentError::io(format!("writing {}", path.display()), err))
}

fn validate_hostname(hostname: &str) -> Result<()> {
    if hostname.len() > 64 {
        return Err(AgentError::invalid("hostname", "is longer than 64 bytes"));
    }
    let valid_label = |label: &str| {
        !label.is_empty()
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if !hostname.is_empty() && !hostname.split('.').all(valid_label) {
        return Err(AgentError::invalid(
            "hostname",
            format!("{hostname:?} is not a valid host name"),
        ));
    }
    Ok(())
}

fn no_newline(field: &str, value: &str) -> Result<()> {
    if value.contains(['\n', '\r', '\0']) {
        Err(AgentError::invalid(
            field,
            format!("{value:?} contains a line break"),
        ))
    } else {
        Ok(())
    }
}

fn hosts_file(hostname: &str, extra: &[String]) -> Result<String> {
    let mut hosts =
        String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    if !hostname.is_empty() {
        let _ = writeln!(hosts, "127.0.1.1\t{hostname}");
    }
    for (index, line) in extra.iter().enumerate() {
        no_newline(&format!("hosts[{index}]"), line)?;
        let _ = writeln!(hosts, "{line}");
    }
    Ok(hosts)
}

fn resolv_conf(dns: &api::Dns) -> Result<String> {
    let mut text = String::new();
    for (index, server) in dns.servers.iter().enumerate() {
        server.parse::<std::net::IpAddr>().map_err(|_| {
            AgentError::invalid(
                format!("dns.servers[{index}]"),
                format!("{server:?} is not an IP address"),
            )
        })?;
        let _ = writeln!(text, "nameserver {server}");
    }
    if !dns.searches.is_empty() {
        for (index, search) in dns.searches.iter().enumerate() {
            no_newline(&format!("dns.searches[{index}]"), search)?;
        }
        let _ = writeln!(text, "search {}", dns.searches.join(" "));
    }
    if !dns.options.is_empty() {
        for (index, option) in dns.options.iter().enumerate() {
            no_newline(&format!("dns.options[{index}]"), option)?;
        }
        let _ = writeln!(text, "options {}", dns.options.join(" "));
    }
    Ok(text)
}

/// A shared mount's target may not leave `shared`, and it needs a type.
fn check_mount(shared: &Path, mount: &api::SharedMount, field: &str) -> Result<()> {
    let target = Path::new(&mount.target);
    if !target.is_absolute()
        || target
            .components()
            .any(|c| matches!(c, Component::ParentDir))
        || !target.starts_with(shared)
        || target == shared
    {
        return Err(AgentError::invalid(
            format!("{field}.target"),
            format!("{:?} is not below {}", mount.target, shared.display()),
        ));
    }
    if mount.fstype.is_empty() {
        return Err(AgentError::invalid(
            format!("{field}.fstype"),
            "must not be empty",
        ));
    }
    Ok(())
}

/// Mounts one shared filesystem, checked by [`check_mount`].
fn mount_shared(mount: &api::SharedMount, field: &str) -> Result<PathBuf> {
    let target = Path::new(&mount.target);
    std::fs::create_dir_all(target)
        .map_err(|err| AgentError::io(format!("creating {}", target.display()), err))?;
    let bind = mount.fstype == "bind";
    let mut flags = if bind {
        MsFlags::MS_BIND
    } else {
        MsFlags::empty()
    };
    if mount.read_only && !bind {
        flags |= MsFlags::MS_RDONLY;
    }
    let data = mount.options.join(",");
    nix::mount::mount(
        Some(mount.source.as_str()),
        target,
        Some(mount.fstype.as_str()),
        flags,
        (!data.is_empty()).then_some(data.as_str()),
    )
    .map_err(|err| {
        AgentError::invalid(
            field,
            format!(
                "mounting {} ({}) on {}: {err}",
                mount.source, mount.fstype, mount.target
            ),
        )
    })?;
    if bind && mount.read_only {
        // A bind mount only becomes read-only through a remount.
        let remount = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        if let Err(err) =
            nix::mount::mount(None::<&str>, target, None::<&str>, remount, None::<&str>)
        {
            let _ = nix::mount::umount2(target, MntFlags::MNT_DETACH);
            return Err(AgentError::io(
                format!("making {} read-only", target.display()),
                err.into(),
            ));
        }
    }
    Ok(target.to_owned())
}

fn unmount_all(mounts: &mut Vec<PathBuf>) {
    while let Some(target) = mounts.pop() {
        if let Err(err) = nix::mount::umount2(&target, MntFlags::MNT_DETACH) {
            tracing::warn!(target = %target.display(), %err, "unmount failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames() {
        assert!(validate_hostname("pod-a.example").is_ok());
        assert!(validate_hostname("").is_ok());
        for bad in ["-a", "a..b", "a_b", "a b"] {
            let err = validate_hostname(bad).unwrap_err().to_string();
            assert!(err.starts_with("hostname: "), "{err}");
        }
    }

    #[test]
    fn resolv_conf_names_the_bad_server() {
        let dns = api::Dns {
            servers: vec!["10.0.0.10".into(), "nope".into()],
            ..Default::default()
        };
        let err = resolv_conf(&dns).unwrap_err().to_string();
        assert!(err.starts_with("dns.servers[1]: "), "{err}");
        let dns = api::Dns {
            servers: vec!["10.0.0.10".into()],
            searches: vec!["svc.cluster.local".into()],
            options: vec!["ndots:5".into()],
        };
        assert_eq!(
            resolv_conf(&dns).expect("valid"),
            "nameserver 10.0.0.10\nsearch svc.cluster.local\noptions ndots:5\n"
        );
    }

    #[test]
    fn the_plan_checks_every_mount_before_any_is_made() {
        let shared = Path::new("/run/hull-agent/sandbox/shared");
        let mount = |target: &str, fstype: &str| api::SharedMount {
            source: "hullfs".into(),
            target: target.into(),
            fstype: fstype.into(),
            ..Default::default()
        };
        let mut request = api::CreateSandboxRequest {
            hostname: "pod".into(),
            mounts: vec![mount("/run/hull-agent/sandbox/shared/a", "virtiofs")],
            ..Default::default()
        };
        let plan = plan_sandbox(&request, shared).expect("valid");
        assert!(plan.hosts.ends_with("127.0.1.1\tpod\n"), "{}", plan.hosts);
        for (bad, field) in [
            (
                "/run/hull-agent/sandbox/shared/../../etc",
                "mounts[1].target",
            ),
            ("/run/hull-agent/sandbox/shared", "mounts[1].target"),
            ("relative", "mounts[1].target"),
            ("/etc", "mounts[1].target"),
        ] {
            request.mounts.truncate(1);
            request.mounts.push(mount(bad, "bind"));
            let err = plan_sandbox(&request, shared).unwrap_err().to_string();
            assert!(err.starts_with(&format!("{field}: ")), "{bad}: {err}");
        }
        request.mounts[1] = mount("/run/hull-agent/sandbox/shared/b", "");
        let err = plan_sandbox(&request, shared).unwrap_err().to_string();
        assert!(err.starts_with("mounts[1].fstype: "), "{err}");
    }
}
