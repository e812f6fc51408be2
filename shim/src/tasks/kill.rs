//! Kill: signals a process in the guest. It always ends: a guest that does
//! not answer in time has its VM killed, which ends the process (and every
//! other of the pod) with `VM_GONE_EXIT_STATUS`.

use containerd_shim::protos::api;

use super::{Answer, Tasks, container, process_id};
use crate::error::{Result, ShimError};
use crate::task::Status;

impl Tasks {
    pub async fn kill(&self, request: api::KillRequest) -> Result<()> {
        let id = process_id(&request.id, &request.exec_id);
        {
            let state = self.lock();
            let process = container(&state, &request.id)?.process(&request.exec_id)?;
            if process.status() == Status::Stopped {
                return Err(ShimError::NotFound(format!(
                    "{}: process already finished",
                    process.id
                )));
            }
        }
        let pod = match self.pod() {
            Ok(pod) => pod,
            // Nothing left to signal: the process died with its VM, and
            // its exit is on its way (containerd waits for it, as after
            // any kill). An error would fail CRI's StopContainer.
            Err(ShimError::VmGone(reason)) => {
                tracing::debug!(process = %id, %reason, "kill: the VM is gone already");
                return Ok(());
            }
            Err(err) => return Err(err),
        };
        let agent = pod.agent();
        let signalled = Self::call(
            pod.as_ref(),
            "SignalProcess",
            self.deadlines().call,
            agent.signal_process(&id, request.signal, request.all),
        )
        .await;
        match signalled {
            // The VM died while the call was on its way (killed for another
            // call that went unanswered): the process died with it.
            Answer::Answered(Err(err)) if pod.gone().borrow().is_some() => {
                tracing::debug!(process = %id, %err, "kill: the VM went meanwhile");
                Ok(())
            }
            Answer::Answered(answer) => answer,
            // The VM's death is the kill: the process's exit follows.
            Answer::TimedOut(err) => {
                Self::kill_vm(pod.as_ref(), &err);
                Ok(())
            }
        }
    }
}
