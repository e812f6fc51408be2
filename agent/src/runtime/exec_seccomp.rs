//! The container's seccomp profile for processes exec'd into it.
//!
//! libcontainer 0.7's tenant builder (its `exec`) rebuilds the spec's
//! `linux` section from the namespaces, cgroup path, personality and time
//! offsets only: the container's seccomp profile is left out, so an exec'd
//! process would run unfiltered. runc applies the container's profile to
//! every exec, and so must Hull: every `kubectl exec` and every CI step run
//! by exec would otherwise escape it.
//!
//! So the helper installs the profile itself, from an [`Executor`] that
//! libcontainer calls last, in the exec'd process, just before the
//! `execve`. By then libcontainer has set the process's user and dropped
//! its capabilities to the spec's, and without `no_new_privileges` the
//! kernel lets only a holder of `CAP_SYS_ADMIN` install a filter. The
//! process spec is therefore given `CAP_SYS_ADMIN` and `CAP_SETPCAP` where
//! it lacks them ([`prepare`]), and the executor takes them back before the
//! payload runs: from the bounding set first, then, once the filter is in,
//! from the effective and permitted sets. The end state is the one runc
//! leaves (it installs the filter before it drops capabilities), and the
//! payload never holds what its spec did not give it.

use std::collections::HashMap;

use caps::{CapSet, CapsHashSet};
use libcontainer::capabilities::CapabilityExt;
use libcontainer::workload::{
    Executor, ExecutorError, ExecutorSetEnvsError, ExecutorValidationError, default,
};
use oci_spec::runtime::{Capability, LinuxCapabilities, LinuxSeccomp, Process, Spec};

/// What installing a filter takes without `no_new_privileges`, and what
/// dropping those from the bounding set takes.
const NEEDED: [Capability; 2] = [Capability::SysAdmin, Capability::Setpcap];

/// Installs the container's profile in an exec'd process, then runs it as
/// libcontainer's default executor would.
#[derive(Clone)]
pub struct SeccompExecutor {
    profile: LinuxSeccomp,
    /// Set when [`prepare`] granted capabilities: what to take back.
    granted: Option<Granted>,
}

#[derive(Clone, Debug, PartialEq)]
struct Granted {
    /// Added to the bounding set: dropped from it before the filter.
    bounding: Vec<caps::Capability>,
    /// The spec's effective and permitted sets, restored after it.
    effective: CapsHashSet,
    permitted: CapsHashSet,
}

#[derive(Debug, thiserror::Error)]
pub enum ExecSeccompError {
    #[error(
        "linux.seccomp: a profile that notifies a listener (SCMP_ACT_NOTIFY) cannot be applied to an exec'd process"
    )]
    Notify,
}

/// For an exec into a container whose spec has a seccomp profile: the
/// executor that applies it, and the process spec changed so that it can
/// (capabilities granted until the executor takes them back). `None` when
/// the container has no profile.
pub fn prepare(
    container: &Spec,
    process: &mut Process,
) -> Result<Option<SeccompExecutor>, ExecSeccompError> {
    let Some(profile) = container
        .linux()
        .as_ref()
        .and_then(|linux| linux.seccomp().clone())
    else {
        return Ok(None);
    };
    if libcontainer::seccomp::is_notify(&profile) {
        return Err(ExecSeccompError::Notify);
    }
    // With no_new_privileges the kernel needs no capability; a process
    // with no capabilities section keeps them all (CAP_SYS_ADMIN too).
    let granted = match (process.no_new_privileges(), process.capabilities().clone()) {
        (Some(true), _) | (_, None) => None,
        (_, Some(capabilities)) => {
            let (capabilities, granted) = grant(capabilities);
            process.set_capabilities(Some(capabilities));
            granted
        }
    };
    Ok(Some(SeccompExecutor { profile, granted }))
}

/// The process's capabilities with [`NEEDED`] in its bounding, effective
/// and permitted sets, and what was added. A missing set counts as empty,
/// as runc reads it.
fn grant(mut capabilities: LinuxCapabilities) -> (LinuxCapabilities, Option<Granted>) {
    let mut bounding = capabilities.bounding().clone().unwrap_or_default();
    let effective = capabilities.effective().clone().unwrap_or_default();
    let permitted = capabilities.permitted().clone().unwrap_or_default();
    let missing =
        |set: &std::collections::HashSet<Capability>| NEEDED.iter().any(|cap| !set.contains(cap));
    if !missing(&bounding) && !missing(&effective) && !missing(&permitted) {
        return (capabilities, None);
    }
    let granted = Granted {
        bounding: NEEDED
            .iter()
            .filter(|cap| !bounding.contains(cap))
            .map(CapabilityExt::to_cap)
            .collect(),
        effective: effective.iter().map(CapabilityExt::to_cap).collect(),
        permitted: permitted.iter().map(CapabilityExt::to_cap).collect(),
    };
    bounding.extend(NEEDED);
    let with_needed = |mut set: std::collections::HashSet<Capability>| {
        set.extend(NEEDED);
        set
    };
    capabilities
        .set_bounding(Some(bounding))
        .set_effective(Some(with_needed(effective)))
        .set_permitted(Some(with_needed(permitted)));
    (capabilities, Some(granted))
}

fn failed(step: &str, err: impl std::fmt::Display) -> ExecutorError {
    ExecutorError::Other(format!(
        "applying the container's seccomp profile: {step}: {err}"
    ))
}

impl Executor for SeccompExecutor {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        if let Some(granted) = &self.granted {
            // Needs CAP_SETPCAP, still effective here.
            for cap in &granted.bounding {
                caps::drop(None, CapSet::Bounding, *cap)
                    .map_err(|err| failed("bounding set", err))?;
            }
        }
        libcontainer::seccomp::initialize_seccomp(&self.profile)
            .map_err(|err| failed("installing the filter", err))?;
        if let Some(granted) = &self.granted {
            // Effective first: it must stay within the permitted set.
            caps::set(None, CapSet::Effective, &granted.effective)
                .map_err(|err| failed("effective set", err))?;
            caps::set(None, CapSet::Permitted, &granted.permitted)
                .map_err(|err| failed("permitted set", err))?;
        }
        default::get_executor().exec(spec)
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        default::get_executor().validate(spec)
    }

    fn setup_envs(&self, envs: HashMap<String, String>) -> Result<(), ExecutorSetEnvsError> {
        default::get_executor().setup_envs(envs)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use oci_spec::runtime::{
        LinuxBuilder, LinuxCapabilitiesBuilder, LinuxSeccompAction, LinuxSeccompBuilder,
        ProcessBuilder, SpecBuilder,
    };

    use super::*;

    fn container(profile: Option<LinuxSeccomp>) -> Spec {
        let mut linux = LinuxBuilder::default().build().unwrap();
        linux.set_seccomp(profile);
        SpecBuilder::default().linux(linux).build().unwrap()
    }

    fn profile(action: LinuxSeccompAction) -> LinuxSeccomp {
        LinuxSeccompBuilder::default()
            .default_action(action)
            .build()
            .unwrap()
    }

    fn process(set: &[Capability], no_new_privileges: Option<bool>) -> Process {
        let set: HashSet<Capability> = set.iter().copied().collect();
        let mut process = ProcessBuilder::default()
            .capabilities(
                LinuxCapabilitiesBuilder::default()
                    .bounding(set.clone())
                    .effective(set.clone())
                    .permitted(set.clone())
                    .inheritable(HashSet::new())
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        process.set_no_new_privileges(no_new_privileges);
        process
    }

    #[test]
    fn without_a_profile_nothing_changes() {
        let mut exec = process(&[Capability::Chown], None);
        let before = exec.clone();
        assert!(prepare(&container(None), &mut exec).unwrap().is_none());
        assert_eq!(exec, before);
    }

    #[test]
    fn the_capabilities_it_takes_are_granted_and_recorded_to_be_taken_back() {
        let mut exec = process(&[Capability::Chown, Capability::Setpcap], None);
        let executor = prepare(
            &container(Some(profile(LinuxSeccompAction::ScmpActAllow))),
            &mut exec,
        )
        .unwrap()
        .expect("an executor");
        let capabilities = exec.capabilities().clone().unwrap();
        for set in [
            capabilities.bounding(),
            capabilities.effective(),
            capabilities.permitted(),
        ] {
            let set = set.clone().unwrap();
            assert!(set.contains(&Capability::SysAdmin) && set.contains(&Capability::Setpcap));
        }
        assert!(capabilities.inheritable().clone().unwrap().is_empty());
        let spec_set: CapsHashSet = [caps::Capability::CAP_CHOWN, caps::Capability::CAP_SETPCAP]
            .into_iter()
            .collect();
        assert_eq!(
            executor.granted,
            Some(Granted {
                // CAP_SETPCAP was in the spec's bounding set: it stays.
                bounding: vec![caps::Capability::CAP_SYS_ADMIN],
                effective: spec_set.clone(),
                permitted: spec_set,
            })
        );
    }

    #[test]
    fn with_no_new_privileges_or_every_capability_nothing_is_granted() {
        let profile = Some(profile(LinuxSeccompAction::ScmpActErrno));
        let mut exec = process(&[Capability::Chown], Some(true));
        let before = exec.clone();
        let executor = prepare(&container(profile.clone()), &mut exec)
            .unwrap()
            .unwrap();
        assert_eq!((executor.granted, &exec), (None, &before));

        let mut exec = process(&NEEDED, None);
        let executor = prepare(&container(profile), &mut exec).unwrap().unwrap();
        assert_eq!(executor.granted, None);
    }

    #[test]
    fn a_notify_profile_is_refused_naming_the_field() {
        let mut notify = profile(LinuxSeccompAction::ScmpActAllow);
        notify.set_syscalls(Some(vec![
            oci_spec::runtime::LinuxSyscallBuilder::default()
                .names(vec!["mkdir".to_owned()])
                .action(LinuxSeccompAction::ScmpActNotify)
                .build()
                .unwrap(),
        ]));
        let mut exec = process(&[], None);
        let err = prepare(&container(Some(notify)), &mut exec)
            .err()
            .expect("refused");
        assert!(err.to_string().contains("linux.seccomp"), "{err}");
    }
}
