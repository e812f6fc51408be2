//! Mount propagation in the guest, for CRI's Bidirectional (`rshared`) and
//! HostToContainer (`rslave`) volumes.
//!
//! The shim binds such a volume once per pod (its `.volumes/<i>` in the
//! share), so every container of the pod that mounts it names the same
//! guest directory. Here that directory becomes a shared mount in the
//! agent's namespace before the container is created: a container's bind
//! of it then joins its peer group (as a peer for `rshared`, a slave for
//! `rslave`), and what one container mounts below an `rshared` volume shows
//! in every other container's view of it. The host is not part of it:
//! nothing a guest mounts reaches the host (docs/DESIGN.md).

use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use oci_spec::runtime::{Linux, Spec};

use crate::error::{AgentError, Result};

/// The propagation options that make a mount receive mounts.
const PROPAGATING: &[&str] = &["shared", "rshared", "slave", "rslave"];

/// Spells `linux.rootfsPropagation` as libcontainer reads it.
///
/// runc and the OCI spec take `rshared`, `rslave`, `rprivate` and
/// `runbindable` as well, and containerd's CRI writes `rshared` or `rslave`
/// for a container with a propagating volume. libcontainer 0.7 knows only
/// the short names, and applies each recursively anyway, so the recursive
/// names mean the same to it.
pub fn normalize_rootfs_propagation(linux: &mut Linux) -> Result<()> {
    let Some(value) = linux.rootfs_propagation().clone() else {
        return Ok(());
    };
    let short = match value.as_str() {
        "shared" | "rshared" => "shared",
        "slave" | "rslave" => "slave",
        "private" | "rprivate" => "private",
        "unbindable" | "runbindable" => "unbindable",
        other => {
            return Err(AgentError::invalid(
                "oci_spec_json.linux.rootfsPropagation",
                format!(
                    "{other:?} is not one of shared, slave, private, unbindable \
                     (or their recursive r-forms)"
                ),
            ));
        }
    };
    linux.set_rootfs_propagation(Some(short.to_owned()));
    Ok(())
}

/// The sources of the spec's bind mounts whose propagation is shared or
/// slave and that lie below `shared_dir` (the share, where the shim put
/// them). A source elsewhere is left as it is.
pub fn sources(spec: &Spec, shared_dir: &Path) -> Vec<PathBuf> {
    let mut sources: Vec<PathBuf> = spec
        .mounts()
        .iter()
        .flatten()
        .filter(|mount| {
            mount
                .options()
                .iter()
                .flatten()
                .any(|o| PROPAGATING.contains(&o.as_str()))
        })
        .filter_map(|mount| mount.source().clone())
        .filter(|source| {
            source.is_absolute()
                && source.starts_with(shared_dir)
                && source != shared_dir
                && !source
                    .components()
                    .any(|c| matches!(c, std::path::Component::ParentDir))
        })
        .collect();
    sources.sort();
    sources.dedup();
    sources
}

/// Makes `source` a shared mount of its own, once: bound on itself if it
/// is not a mount point yet (it is a directory of the virtio-fs mount),
/// then marked shared. Marking an already shared mount again is a no-op.
pub fn make_shared(source: &Path) -> Result<()> {
    let failed = |what: &str| {
        let context = format!("{what} {}", source.display());
        move |errno: nix::errno::Errno| AgentError::io(context, errno.into())
    };
    if !is_mount_point(source)? {
        nix::mount::mount(
            Some(source),
            source,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(failed("binding"))?;
    }
    nix::mount::mount(
        None::<&str>,
        source,
        None::<&str>,
        MsFlags::MS_SHARED,
        None::<&str>,
    )
    .map_err(failed("making shared"))
}

/// Whether `path` is a mount point in the agent's namespace.
fn is_mount_point(path: &Path) -> Result<bool> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|err| AgentError::io("reading /proc/self/mountinfo", err))?;
    Ok(mount_points(&mountinfo).any(|point| point == path))
}

/// The mount points of a mountinfo text, unescaped.
fn mount_points(mountinfo: &str) -> impl Iterator<Item = PathBuf> + '_ {
    mountinfo
        .lines()
        .filter_map(|line| line.split_whitespace().nth(4))
        .map(unescape)
}

/// mountinfo writes space, tab, newline and backslash as octal escapes.
fn unescape(field: &str) -> PathBuf {
    let mut out = Vec::with_capacity(field.len());
    let bytes = field.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && let Some(digits) = field.get(i + 1..i + 4)
            && let Ok(byte) = u8::from_str_radix(digits, 8)
        {
            out.push(byte);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    PathBuf::from(<std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn linux(propagation: &str) -> Linux {
        let mut linux = Linux::default();
        linux.set_rootfs_propagation(Some(propagation.to_owned()));
        linux
    }

    #[test]
    fn the_recursive_forms_cri_writes_are_accepted() {
        for (given, read) in [
            ("rshared", "shared"),
            ("rslave", "slave"),
            ("rprivate", "private"),
            ("runbindable", "unbindable"),
            ("shared", "shared"),
        ] {
            let mut linux = linux(given);
            normalize_rootfs_propagation(&mut linux).expect(given);
            assert_eq!(linux.rootfs_propagation().as_deref(), Some(read));
        }
        let err = normalize_rootfs_propagation(&mut linux("sideways")).expect_err("refused");
        assert!(err.to_string().contains("linux.rootfsPropagation"), "{err}");
    }

    #[test]
    fn only_propagating_binds_below_the_share_are_made_shared() {
        let spec: Spec = serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "mounts": [
                {"destination": "/a", "type": "bind", "source": "/share/.volumes/0", "options": ["rbind", "rshared"]},
                {"destination": "/b", "type": "bind", "source": "/share/.volumes/0", "options": ["rbind", "rslave"]},
                {"destination": "/c", "type": "bind", "source": "/share/c1/mounts/2", "options": ["rbind", "rprivate"]},
                {"destination": "/d", "type": "bind", "source": "/elsewhere", "options": ["rbind", "rshared"]},
                {"destination": "/e", "type": "bind", "source": "/share/../etc", "options": ["rbind", "rslave"]}
            ]
        }))
        .expect("spec");
        assert_eq!(
            sources(&spec, Path::new("/share")),
            vec![PathBuf::from("/share/.volumes/0")]
        );
    }

    #[test]
    fn mount_points_are_read_unescaped() {
        let info = "36 35 98:0 / /mnt/a\\040b rw,noatime master:1 - ext3 /dev/root rw\n";
        assert_eq!(
            mount_points(info).collect::<Vec<_>>(),
            vec![PathBuf::from("/mnt/a b")]
        );
    }
}
