//! Writing sysctls to the guest's own `/proc/sys`: the pod's network
//! sysctls, whose namespace is the guest's (see
//! [`crate::spec::take_guest_net_sysctls`]).

use std::path::{Path, PathBuf};

use crate::error::{AgentError, Result};

/// A sysctl key (`net.ipv4.ip_forward` or `net/ipv4/ip_forward`) names a
/// file under /proc/sys and nothing else: no empty, `.` or `..` part.
pub fn check_key(key: &str) -> std::result::Result<(), String> {
    let parts: Vec<&str> = key.split(['.', '/']).collect();
    let good = |part: &&str| {
        !part.is_empty()
            && part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    };
    if parts.len() < 2 || !parts.iter().all(good) {
        return Err(format!("{key:?} is not a sysctl name"));
    }
    Ok(())
}

/// The file of sysctl `key` under `proc_sys`.
fn path_of(proc_sys: &Path, key: &str) -> PathBuf {
    proc_sys.join(key.replace('.', "/"))
}

/// Writes each of `sysctls` (keys already checked) under `proc_sys`.
pub fn apply(proc_sys: &Path, sysctls: &[(String, String)]) -> Result<()> {
    for (key, value) in sysctls {
        let path = path_of(proc_sys, key);
        std::fs::write(&path, value).map_err(|err| {
            AgentError::invalid(
                format!("oci_spec_json.linux.sysctl.{key}"),
                format!("writing {value:?} to {}: {err}", path.display()),
            )
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_names_pass() {
        for good in [
            "net.ipv4.ip_forward",
            "net/core/somaxconn",
            "net.ipv4.conf.eth0.rp_filter",
        ] {
            check_key(good).expect(good);
        }
        for bad in [
            "net",
            "net..x",
            "net./../x",
            "net.ipv4/../../etc",
            "",
            "net.a b",
        ] {
            check_key(bad).expect_err(bad);
        }
    }

    #[test]
    fn each_is_written_to_its_file() {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::create_dir_all(dir.path().join("net/ipv4")).expect("dirs");
        apply(
            dir.path(),
            &[("net.ipv4.ip_unprivileged_port_start".into(), "500".into())],
        )
        .expect("written");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("net/ipv4/ip_unprivileged_port_start"))
                .expect("read"),
            "500"
        );
        let err = apply(dir.path(), &[("net.nope.x".into(), "1".into())]).expect_err("missing");
        assert!(
            err.to_string()
                .starts_with("oci_spec_json.linux.sysctl.net.nope.x: "),
            "{err}"
        );
    }
}
