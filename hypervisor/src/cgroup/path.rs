//! Where an OCI `linux.cgroupsPath` puts a sandbox, below the root of each
//! cgroup hierarchy, for the two forms a kubelet's runtime writes:
//!
//! - cgroupfs: an absolute path, `/kubepods/burstable/pod<uid>/<id>`;
//! - systemd: `<slice>:<prefix>:<name>`, which systemd's convention lays out
//!   as the slice's ancestors, the slice, then the unit:
//!   `kubepods-burstable-pod<uid>.slice:cri-containerd:<id>` is
//!   `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice/cri-containerd-<id>.scope`.
//!
//! Pure string work, so every form is unit-tested without a cgroup in sight.

use std::path::PathBuf;

use super::CgroupError;

/// The sandbox's cgroup relative to a hierarchy's root.
pub fn resolve(cgroups_path: &str) -> Result<PathBuf, CgroupError> {
    let bad = |reason: &str| CgroupError::BadPath {
        path: cgroups_path.to_owned(),
        reason: reason.to_owned(),
    };
    if cgroups_path.contains('\0') || cgroups_path.contains('\n') {
        return Err(bad("holds a NUL or newline"));
    }
    if cgroups_path.contains(':') {
        let parts: Vec<&str> = cgroups_path.split(':').collect();
        let [slice, prefix, name] = parts[..] else {
            return Err(bad(
                "is neither an absolute cgroupfs path nor systemd's slice:prefix:name",
            ));
        };
        return systemd(slice, prefix, name).map_err(|reason| bad(&reason));
    }
    if !cgroups_path.starts_with('/') {
        return Err(bad(
            "is relative: a cgroupfs path must be absolute (or use systemd's slice:prefix:name)",
        ));
    }
    let mut relative = PathBuf::new();
    for component in cgroups_path.split('/').filter(|c| !c.is_empty()) {
        if component == "." || component == ".." {
            return Err(bad("has a . or .. component"));
        }
        relative.push(component);
    }
    if relative.as_os_str().is_empty() {
        return Err(bad("names the root cgroup, which a sandbox cannot own"));
    }
    Ok(relative)
}

/// `<slice>:<prefix>:<name>` laid out as systemd does.
fn systemd(slice: &str, prefix: &str, name: &str) -> Result<PathBuf, String> {
    // runc's default, for a spec that leaves the slice out.
    let slice = if slice.is_empty() {
        "system.slice"
    } else {
        slice
    };
    let mut path = expand_slice(slice)?;
    for (what, part) in [("prefix", prefix), ("name", name)] {
        if part.contains('/') || part == "." || part == ".." {
            return Err(format!("its {what} {part:?} is not a unit name"));
        }
    }
    if name.is_empty() {
        return Err("its name (after the second ':') is empty".to_owned());
    }
    // A name that is itself a slice is the unit; otherwise the unit is a
    // scope named after the prefix and the name.
    let unit = if name.ends_with(".slice") {
        name.to_owned()
    } else if prefix.is_empty() {
        format!("{name}.scope")
    } else {
        format!("{prefix}-{name}.scope")
    };
    path.push(unit);
    Ok(path)
}

/// `a-b-c.slice` is `a.slice/a-b.slice/a-b-c.slice`; `-.slice` is the root.
fn expand_slice(slice: &str) -> Result<PathBuf, String> {
    let Some(stem) = slice.strip_suffix(".slice") else {
        return Err(format!("its slice {slice:?} does not end in .slice"));
    };
    if slice.contains('/') {
        return Err(format!("its slice {slice:?} holds a '/'"));
    }
    let mut path = PathBuf::new();
    if stem == "-" {
        return Ok(path);
    }
    if stem.is_empty() || stem.starts_with('-') || stem.ends_with('-') || stem.contains("--") {
        return Err(format!(
            "its slice {slice:?} is not a systemd slice name (empty, or a stray '-')"
        ));
    }
    let mut ancestor = String::new();
    for part in stem.split('-') {
        if !ancestor.is_empty() {
            ancestor.push('-');
        }
        ancestor.push_str(part);
        path.push(format!("{ancestor}.slice"));
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cgroupfs_path_is_relative_to_each_root() {
        assert_eq!(
            resolve("/kubepods/burstable/pod1234/abcd").unwrap(),
            PathBuf::from("kubepods/burstable/pod1234/abcd")
        );
        assert_eq!(
            resolve("//default///c1/").unwrap(),
            PathBuf::from("default/c1")
        );
    }

    #[test]
    fn a_systemd_path_expands_its_slice_and_names_a_scope() {
        assert_eq!(
            resolve("kubepods-burstable-pod1234.slice:cri-containerd:abcd").unwrap(),
            PathBuf::from(
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234.slice/cri-containerd-abcd.scope"
            )
        );
        assert_eq!(
            resolve("kubepods.slice:cri-containerd:abcd").unwrap(),
            PathBuf::from("kubepods.slice/cri-containerd-abcd.scope")
        );
        assert_eq!(
            resolve("-.slice:docker:x").unwrap(),
            PathBuf::from("docker-x.scope")
        );
        assert_eq!(
            resolve(":cri-containerd:abcd").unwrap(),
            PathBuf::from("system.slice/cri-containerd-abcd.scope")
        );
        assert_eq!(
            resolve("user.slice::work.slice").unwrap(),
            PathBuf::from("user.slice/work.slice")
        );
    }

    #[test]
    fn a_bad_path_is_refused_naming_the_field() {
        for path in [
            "relative/path",
            "/",
            "/a/../../etc",
            "/a/./b",
            "a:b",
            "a.slice:b:c:d",
            "kubepods:cri-containerd:abcd",
            "kube--pods.slice:p:n",
            "-kube.slice:p:n",
            "a/b.slice:p:n",
            "kubepods.slice:p:",
            "kubepods.slice:p:../x",
            "/a\nb",
        ] {
            let err = resolve(path).expect_err(path).to_string();
            assert!(err.starts_with("linux.cgroupsPath: "), "{path}: {err}");
        }
    }
}
