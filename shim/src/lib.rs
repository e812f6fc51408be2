//! `containerd-shim-hull-v2`: one shim and one VM per pod.
//!
//! containerd starts the shim with `start` for every container; containers
//! of the same CRI sandbox are grouped onto one shim ([`shim`]). The first
//! container boots the pod's VM ([`pod`]) with the configured backend
//! ([`config`]); each container's rootfs and volumes are mounted into the
//! pod's shared directory and reach the guest over virtio-fs ([`mounts`],
//! [`spec`]). The Task API ([`service`]) is a thin adapter over the task
//! state machine ([`task`], [`tasks`]) behind a seam ([`task::seam`],
//! implemented for real pods by [`sandbox`]), which drives the guest agent over
//! hybrid vsock ([`agent`]), copies stdio ([`stdio`]) and publishes events
//! ([`events`]). A CRI pod's CNI interfaces reach the guest as virtio-net
//! devices through taps mirrored with tc ([`network`]).

pub mod agent;
pub mod cgroup;
pub mod config;
pub mod crash;
pub mod error;
pub mod events;
pub mod logging;
pub mod mounts;
pub mod network;
pub mod pod;
pub mod pod_dir;
pub mod policy;
pub mod sandbox;
pub mod serve;
pub mod service;
pub mod shim;
pub mod sizing;
pub mod spec;
pub mod stdio;
pub mod task;
pub mod tasks;
