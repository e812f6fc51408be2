//! QEMU's command line for a Hull sandbox VM.

use std::ffi::OsString;
use std::path::Path;

use hull_vmm::caps::RunAs;

use crate::host::Accel;
use crate::{SHARED_FS_TAG, VmConfig};

/// The guest kernel's command line. The agent is the initramfs's /init; a
/// reset (triple fault) ends the VM, since QEMU runs with `-no-reboot`.
pub const KERNEL_CMDLINE: &str = "console=ttyS0 reboot=t panic=-1";

/// Arguments for `qemu-system-x86_64`: a microvm whose RAM is a shared memfd
/// (vhost-user back ends map it), with virtio-fs and vsock served by
/// vhost-user helpers listening on `fs_socket` and `vsock_socket`, and a
/// virtio-net device for each of `config.net`, whose taps QEMU inherits as
/// the descriptors `tap_fds`. Once set up, QEMU becomes `run_as`.
pub fn qemu_args(
    config: &VmConfig,
    accel: Accel,
    tsc_khz: Option<u64>,
    fs_socket: &Path,
    vsock_socket: &Path,
    tap_fds: &[i32],
    run_as: RunAs,
) -> Vec<OsString> {
    let mut cmdline = KERNEL_CMDLINE.to_owned();
    if let (Accel::Tcg, Some(khz)) = (accel, tsc_khz) {
        cmdline.push_str(&format!(" tsc_early_khz={khz}"));
    }
    let memory = format!("{}M", config.memory_mib);
    let mut args: Vec<OsString> = Vec::new();
    let mut push = |items: &[&str]| args.extend(items.iter().map(OsString::from));
    // Without a PIT a TCG guest finds no clock to calibrate the TSC and the
    // LAPIC timer against, and hangs early in boot.
    push(&["-machine", "microvm,pit=on,memory-backend=mem"]);
    push(&["-accel", accel.as_str()]);
    push(&["-cpu", if accel == Accel::Kvm { "host" } else { "max" }]);
    push(&["-smp", &config.vcpus.to_string()]);
    push(&["-m", &memory]);
    push(&[
        "-object",
        &format!("memory-backend-memfd,id=mem,size={memory},share=on"),
    ]);
    push(&["-nodefaults", "-no-user-config", "-display", "none"]);
    push(&["-serial", "stdio", "-no-reboot"]);
    // QEMU's own seccomp filter: no obsolete system calls, no fork or
    // exec, no scheduler or affinity changes.
    push(&[
        "-sandbox",
        "on,obsolete=deny,elevateprivileges=allow,spawn=deny,resourcecontrol=deny",
    ]);
    // Root only for set-up: every file, socket, tap and the memfd are open
    // by the time QEMU (7.2) becomes this user, after the machine is built.
    // It drops the groups, the gid and the uid itself, after its filter
    // is installed: that is why the filter allows set*id calls
    // (`elevateprivileges=deny` kills QEMU at the drop). Once it is not
    // root, with no capabilities and no_new_privs, those calls can only
    // move between the ids it already has.
    push(&["-runas", &format!("{}:{}", run_as.uid, run_as.gid)]);
    push(&["-append", &cmdline]);
    push(&[
        "-chardev",
        &format!("socket,id=fs0,path={}", fs_socket.display()),
        "-device",
        &format!("vhost-user-fs-device,chardev=fs0,tag={SHARED_FS_TAG}"),
    ]);
    push(&[
        "-chardev",
        &format!("socket,id=vs0,path={}", vsock_socket.display()),
        "-device",
        "vhost-user-vsock-device,chardev=vs0",
    ]);
    for (index, (device, fd)) in config.net.iter().zip(tap_fds).enumerate() {
        push(&[
            "-netdev",
            &format!("tap,id=net{index},fd={fd}"),
            "-device",
            &format!(
                "virtio-net-device,netdev=net{index},mac={},host_mtu={}",
                device.mac_text(),
                device.mtu
            ),
        ]);
    }
    args.push("-kernel".into());
    args.push(config.kernel.clone().into());
    args.push("-initrd".into());
    args.push(config.initrd.clone().into());
    args
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn tcg_microvm_with_shared_memory_and_vhost_user_devices() {
        let config = VmConfig {
            kernel: "/k/vmlinux".into(),
            initrd: "/k/initrd".into(),
            vcpus: 1,
            memory_mib: 256,
            shared_dir: PathBuf::from("/s"),
            console_log: PathBuf::from("/l"),
            work_dir: PathBuf::from("/w"),
            net: vec![crate::NetDevice {
                tap: std::sync::Arc::new(std::fs::File::open("/dev/null").expect("fd").into()),
                mac: [2, 0, 0, 0, 0, 7],
                mtu: 1450,
            }],
            agent_ready_port: 1025,
        };
        let args: Vec<String> = qemu_args(
            &config,
            Accel::Tcg,
            Some(2_445_000),
            Path::new("/w/fs"),
            Path::new("/w/vs"),
            &[3],
            RunAs {
                uid: 1000,
                gid: 1001,
            },
        )
        .into_iter()
        .map(|a| a.into_string().expect("utf-8"))
        .collect();
        let line = args.join(" ");
        assert!(
            line.contains("-machine microvm,pit=on,memory-backend=mem"),
            "{line}"
        );
        assert!(line.contains("-accel tcg -cpu max"), "{line}");
        assert!(
            line.contains("-sandbox on,obsolete=deny,elevateprivileges=allow,spawn=deny"),
            "{line}"
        );
        assert!(line.contains("-runas 1000:1001"), "{line}");
        assert!(
            line.contains("memory-backend-memfd,id=mem,size=256M,share=on"),
            "{line}"
        );
        assert!(
            line.contains("vhost-user-fs-device,chardev=fs0,tag=hullfs"),
            "{line}"
        );
        assert!(line.contains("socket,id=vs0,path=/w/vs"), "{line}");
        assert!(
            line.contains("-netdev tap,id=net0,fd=3 -device virtio-net-device,netdev=net0,mac=02:00:00:00:00:07,host_mtu=1450"),
            "{line}"
        );
        assert!(
            line.ends_with("-kernel /k/vmlinux -initrd /k/initrd"),
            "{line}"
        );
        assert!(line.contains("panic=-1 tsc_early_khz=2445000"), "{line}");
        let kvm = qemu_args(
            &config,
            Accel::Kvm,
            Some(2_445_000),
            Path::new("/w/fs"),
            Path::new("/w/vs"),
            &[3],
            crate::confine::NOBODY,
        );
        assert!(kvm.iter().any(|a| a == "host"));
        // Under KVM, kvmclock tells the guest its TSC rate.
        assert!(
            !kvm.iter()
                .any(|a| a.to_string_lossy().contains("tsc_early_khz"))
        );
    }
}
