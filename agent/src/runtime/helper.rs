//! The helper process's side: one libcontainer operation, then exit.

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;

use libcgroups::common::{CgroupConfig, CgroupManager, ControllerOpt, create_cgroup_manager};
use libcontainer::container::Container;
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::signal::Signal;
use libcontainer::syscall::syscall::SyscallType;
use nix::fcntl::{FcntlArg, fcntl};
use oci_spec::runtime::{LinuxResources, Process, Spec};

use super::{Operation, Request, Response, STDIO_FDS, StdioSetup, exec_seccomp};

/// Entry point of `hull-agent runtime-helper`. Always exits 0 after writing a
/// response; a failure is a [`Response::Failed`].
pub fn run_helper() -> std::io::Result<()> {
    let mut input = String::new();
    std::io::stdin().read_to_string(&mut input)?;
    let response = match serde_json::from_str::<Request>(&input) {
        Ok(request) => match execute(request) {
            Ok(response) => response,
            Err(message) => Response::Failed(message),
        },
        Err(err) => Response::Failed(format!("bad helper request: {err}")),
    };
    let mut line = serde_json::to_string(&response).map_err(std::io::Error::other)?;
    line.push('\n');
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(line.as_bytes())?;
    stdout.flush()
}

fn execute(request: Request) -> Result<Response, String> {
    let Request {
        root,
        container_id,
        operation,
    } = request;
    match operation {
        Operation::Create { bundle, stdio } => {
            let builder = with_stdio(
                ContainerBuilder::new(container_id, SyscallType::Linux),
                &stdio,
            )?
            .with_root_path(&root)
            .map_err(text)?
            .validate_id()
            .map_err(text)?;
            let container = builder
                .as_init(bundle)
                .with_systemd(false)
                .with_detach(true)
                .build()
                .map_err(text)?;
            let pid = container
                .pid()
                .ok_or("libcontainer created the container but recorded no pid")?;
            Ok(Response::Pid(pid.as_raw()))
        }
        Operation::Exec {
            process_json,
            stdio,
        } => {
            let container = load(&root, &container_id)?;
            let spec = Spec::load(container.bundle().join("config.json")).map_err(text)?;
            let mut process: Process =
                serde_json::from_slice(&std::fs::read(&process_json).map_err(text)?)
                    .map_err(text)?;
            let seccomp = exec_seccomp::prepare(&spec, &mut process).map_err(text)?;
            let mut builder = with_stdio(
                ContainerBuilder::new(container_id, SyscallType::Linux),
                &stdio,
            )?
            .with_root_path(&root)
            .map_err(text)?;
            // The process as prepared for the executor (with the
            // capabilities it takes back before the payload runs).
            let prepared = process_json.with_extension("seccomp.json");
            let process_json = match seccomp {
                Some(executor) => {
                    builder = builder.with_executor(executor);
                    std::fs::write(&prepared, serde_json::to_vec(&process).map_err(text)?)
                        .map_err(text)?;
                    &prepared
                }
                None => &process_json,
            };
            let built = builder
                .as_tenant()
                .with_process(Some(process_json))
                .with_detach(true)
                .build();
            let _ = std::fs::remove_file(&prepared);
            Ok(Response::Pid(built.map_err(text)?.as_raw()))
        }
        Operation::Start => load(&root, &container_id)?.start().map(done).map_err(text),
        Operation::Kill { signal, all } => {
            let signal = Signal::try_from(signal).map_err(text)?;
            load(&root, &container_id)?
                .kill(signal, all)
                .map(done)
                .map_err(text)
        }
        Operation::Pause => load(&root, &container_id)?.pause().map(done).map_err(text),
        Operation::Resume => load(&root, &container_id)?.resume().map(done).map_err(text),
        Operation::Delete { force } => load(&root, &container_id)?
            .delete(force)
            .map(done)
            .map_err(text),
        Operation::Update { resources_json } => {
            let container = load(&root, &container_id)?;
            let resources: LinuxResources =
                serde_json::from_slice(&std::fs::read(&resources_json).map_err(text)?)
                    .map_err(text)?;
            let config = container.spec().map_err(text)?;
            let manager = create_cgroup_manager(CgroupConfig {
                cgroup_path: config.cgroup_path,
                systemd_cgroup: false,
                container_name: container_id,
            })
            .map_err(text)?;
            manager
                .apply(&ControllerOpt {
                    resources: &resources,
                    disable_oom_killer: false,
                    oom_score_adj: None,
                    freezer_state: None,
                })
                .map(done)
                .map_err(text)
        }
    }
}

fn with_stdio(builder: ContainerBuilder, stdio: &StdioSetup) -> Result<ContainerBuilder, String> {
    Ok(match stdio {
        StdioSetup::ConsoleSocket(path) => builder.with_console_socket(Some(path)),
        StdioSetup::Fds => {
            let [stdin, stdout, stderr] = STDIO_FDS.map(inherited_fd);
            builder
                .with_stdin(stdin?)
                .with_stdout(stdout?)
                .with_stderr(stderr?)
        }
    })
}

/// Takes ownership of a descriptor the agent mapped into this process.
fn inherited_fd(fd: i32) -> Result<OwnedFd, String> {
    fcntl(fd, FcntlArg::F_GETFD)
        .map_err(|err| format!("stdio descriptor {fd} was not passed to the helper: {err}"))?;
    // SAFETY: the agent maps each of STDIO_FDS into the helper exactly once
    // (runtime::client), F_GETFD just showed it is open, and this is the only
    // place in the helper that claims it, once per process.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn load(root: &Path, container_id: &str) -> Result<Container, String> {
    Container::load(root.join(container_id)).map_err(text)
}

fn done(_: ()) -> Response {
    Response::Done
}

fn text(err: impl std::fmt::Display) -> String {
    err.to_string()
}
