//! OCI images built locally from a busybox root filesystem: nothing is
//! pulled. Each image is an OCI image layout with one gzip'd layer and one
//! tag, packed in a tarball for `ctr images import`. Its one manifest
//! carries the full name in `io.containerd.image.name`, so containerd names
//! the image after it and adds no `import-DATE:TAG` reference.
//!
//! The tarballs are cached under [`crate::cache_dir`], keyed by a hash of
//! what goes into them (the busybox binary and the image's config).

use std::io::Write;
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::write::GzEncoder;
use serde_json::json;
use sha2::{Digest, Sha256};

/// The busybox image: every applet on PATH, `sh` as its command.
pub const BUSYBOX_IMAGE: &str = "hull.test/busybox:1";

/// busybox with iptables and ip6tables, nft and legacy, taken from the
/// host's Debian packages with the libraries they load: for NET_ADMIN
/// containers that set up a netfilter table, as istio's init does.
pub const NET_TOOLS_IMAGE: &str = "hull.test/net-tools:1";

/// What [`NET_TOOLS_IMAGE`] adds to busybox: the two multi-call binaries
/// (their libraries follow), the extensions they load at run time, and the
/// protocol names `iptables -L` prints.
const NET_TOOLS_FILES: &[&str] = &[
    "/usr/sbin/xtables-nft-multi",
    "/usr/sbin/xtables-legacy-multi",
    "/usr/lib/x86_64-linux-gnu/xtables",
    "/etc/protocols",
];

/// The names the two multi-call binaries answer to, as Debian links them.
const NET_TOOLS_LINKS: &[(&str, &str)] = &[
    ("/usr/sbin/iptables", "xtables-nft-multi"),
    ("/usr/sbin/ip6tables", "xtables-nft-multi"),
    ("/usr/sbin/iptables-nft", "xtables-nft-multi"),
    ("/usr/sbin/ip6tables-nft", "xtables-nft-multi"),
    ("/usr/sbin/iptables-legacy", "xtables-legacy-multi"),
    ("/usr/sbin/ip6tables-legacy", "xtables-legacy-multi"),
];

/// The pod sandbox image that the harness's containerd configures as
/// `sandbox_image`: a shell that waits forever and exits 0 on SIGTERM.
pub const PAUSE_IMAGE: &str = "hull.test/pause:1";

/// The pause process: `wait` returns when a trapped signal arrives, so the
/// trap runs at once rather than after `sleep` ends.
pub const PAUSE_SCRIPT: &str = "trap 'exit 0' TERM INT; while :; do sleep 1000 & wait $!; done";

/// Bumped whenever the layout this module writes changes, so cached
/// tarballs from an older harness are not reused.
const FORMAT: &str = "hull-test-image-v3";

const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What an image is made of: a name and the process its config describes.
/// The root filesystem is always [`crate::rootfs::busybox`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSpec {
    /// Full reference, `host/repo:tag`; the tag alone goes into the layout.
    pub name: String,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    /// Host files and directories copied in at the same paths, with the
    /// shared libraries of each program among them.
    pub host_files: Vec<PathBuf>,
    /// Symlinks made in the image: (path, target).
    pub links: Vec<(PathBuf, PathBuf)>,
}

/// An image tarball on disk and the name to import it as.
#[derive(Debug, Clone)]
pub struct ImageTarball {
    pub name: String,
    pub path: PathBuf,
}

/// [`BUSYBOX_IMAGE`], built (or taken from the cache).
pub fn busybox() -> ImageTarball {
    build(&ImageSpec {
        name: BUSYBOX_IMAGE.into(),
        entrypoint: vec![],
        cmd: vec!["sh".into()],
        env: vec![PATH_ENV.into()],
        host_files: vec![],
        links: vec![],
    })
}

/// [`NET_TOOLS_IMAGE`], built (or taken from the cache).
pub fn net_tools() -> ImageTarball {
    build(&ImageSpec {
        name: NET_TOOLS_IMAGE.into(),
        entrypoint: vec![],
        cmd: vec!["sh".into()],
        env: vec![PATH_ENV.into()],
        host_files: NET_TOOLS_FILES.iter().map(PathBuf::from).collect(),
        links: NET_TOOLS_LINKS
            .iter()
            .map(|(path, target)| (PathBuf::from(path), PathBuf::from(target)))
            .collect(),
    })
}

/// [`PAUSE_IMAGE`], built (or taken from the cache).
pub fn pause() -> ImageTarball {
    build(&ImageSpec {
        name: PAUSE_IMAGE.into(),
        entrypoint: vec!["/bin/sh".into(), "-c".into(), PAUSE_SCRIPT.into()],
        cmd: vec![],
        env: vec![PATH_ENV.into()],
        host_files: vec![],
        links: vec![],
    })
}

/// The image `spec` describes as an OCI layout tarball, from the cache when
/// one was built from the same inputs.
pub fn build(spec: &ImageSpec) -> ImageTarball {
    let config = image_config(spec);
    let busybox = std::fs::read("/bin/busybox")
        .expect("/bin/busybox is missing: the test set-up installs busybox-static");
    let mut key = Sha256::new();
    key.update(FORMAT);
    key.update(&spec.name);
    key.update(serde_json::to_vec(&config).expect("config json"));
    key.update(Sha256::digest(&busybox));
    for file in crate::rootfs::host_files(&spec.host_files) {
        key.update(file.as_os_str().as_encoded_bytes());
        key.update(Sha256::digest(std::fs::read(&file).expect("host file")));
    }
    for (path, target) in &spec.links {
        key.update(path.as_os_str().as_encoded_bytes());
        key.update(target.as_os_str().as_encoded_bytes());
    }
    let key = hex(&key.finalize());

    let dir = crate::cache_dir().join("images");
    std::fs::create_dir_all(&dir).expect("image cache directory");
    let file_name: String = spec
        .name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let path = dir.join(format!("{file_name}-{}.tar", &key[..16]));
    if !path.exists() {
        let staging = tempfile::Builder::new()
            .prefix(".image-")
            .tempdir_in(&dir)
            .expect("staging directory");
        let tarball = staging.path().join("image.tar");
        write_layout_tarball(spec, config, &staging.path().join("rootfs"), &tarball);
        // Rename is atomic: parallel tests either see the whole tarball or
        // build their own and one rename wins.
        std::fs::rename(&tarball, &path).expect("move image into the cache");
    }
    ImageTarball {
        name: spec.name.clone(),
        path,
    }
}

/// The image config without its `rootfs`, which the layer fills in.
fn image_config(spec: &ImageSpec) -> serde_json::Value {
    let mut process = serde_json::Map::new();
    process.insert("Env".into(), json!(spec.env));
    if !spec.entrypoint.is_empty() {
        process.insert("Entrypoint".into(), json!(spec.entrypoint));
    }
    if !spec.cmd.is_empty() {
        process.insert("Cmd".into(), json!(spec.cmd));
    }
    process.insert("WorkingDir".into(), json!("/"));
    json!({
        "architecture": "amd64",
        "os": "linux",
        "config": process,
    })
}

fn write_layout_tarball(
    spec: &ImageSpec,
    mut config: serde_json::Value,
    rootfs: &Path,
    out: &Path,
) {
    crate::rootfs::busybox(rootfs);
    crate::rootfs::add_host_files(rootfs, &spec.host_files);
    for (path, target) in &spec.links {
        let link = rootfs.join(path.strip_prefix("/").expect("absolute link"));
        std::fs::create_dir_all(link.parent().expect("parent")).expect("link directory");
        std::os::unix::fs::symlink(target, &link).expect("image symlink");
    }
    let layer_tar = layer_tar(rootfs);
    let diff_id = format!("sha256:{}", hex(&Sha256::digest(&layer_tar)));
    let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
    gz.write_all(&layer_tar).expect("gzip layer");
    let layer = gz.finish().expect("gzip layer");

    config["rootfs"] = json!({ "type": "layers", "diff_ids": [diff_id] });
    let config = serde_json::to_vec(&config).expect("config json");
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": descriptor("application/vnd.oci.image.config.v1+json", &config),
        "layers": [descriptor("application/vnd.oci.image.layer.v1.tar+gzip", &layer)],
    }))
    .expect("manifest json");
    let tag = spec
        .name
        .rsplit_once(':')
        .filter(|(_, tag)| !tag.contains('/'))
        .map_or("latest", |(_, tag)| tag);
    let mut manifest_descriptor =
        descriptor("application/vnd.oci.image.manifest.v1+json", &manifest);
    // The full name as containerd's own annotation too: `ctr import` then
    // names the manifest after it instead of adding an `import-DATE:TAG`
    // reference, which CRI's image cache trips over.
    manifest_descriptor["annotations"] = json!({
        "org.opencontainers.image.ref.name": tag,
        "io.containerd.image.name": spec.name,
    });
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [manifest_descriptor],
    }))
    .expect("index json");

    let file = std::fs::File::create(out).expect("image tarball");
    let mut tar = tar::Builder::new(std::io::BufWriter::new(file));
    let mut add = |path: &str, data: &[u8]| {
        tar.append_data(&mut file_header(data.len(), 0o644), path, data)
            .expect("write image tarball");
    };
    add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    for blob in [&layer, &config, &manifest] {
        add(
            &format!("blobs/sha256/{}", hex(&Sha256::digest(blob))),
            blob,
        );
    }
    add("index.json", &index);
    tar.into_inner()
        .expect("finish image tarball")
        .flush()
        .expect("flush image tarball");
}

fn descriptor(media_type: &str, blob: &[u8]) -> serde_json::Value {
    json!({
        "mediaType": media_type,
        "digest": format!("sha256:{}", hex(&Sha256::digest(blob))),
        "size": blob.len(),
    })
}

/// An uncompressed layer holding `rootfs`: sorted, owned by root, mtime 0,
/// symlinks kept as links.
fn layer_tar(rootfs: &Path) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut entries = Vec::new();
    walk(rootfs, rootfs, &mut entries);
    entries.sort();
    for (relative, path) in entries {
        let meta = std::fs::symlink_metadata(&path).expect("rootfs entry");
        let mut header = tar::Header::new_ustar();
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&path).expect("read link");
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_mode(0o777);
            header.set_size(0);
            tar.append_link(&mut header, &relative, target)
                .expect("layer symlink");
        } else if meta.is_dir() {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(if relative == "tmp" { 0o1777 } else { 0o755 });
            header.set_size(0);
            tar.append_data(&mut header, format!("{relative}/"), std::io::empty())
                .expect("layer directory");
        } else {
            use std::os::unix::fs::PermissionsExt;
            let data = std::fs::read(&path).expect("rootfs file");
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(meta.permissions().mode() & 0o7777);
            header.set_size(data.len() as u64);
            tar.append_data(&mut header, &relative, data.as_slice())
                .expect("layer file");
        }
    }
    tar.into_inner().expect("finish layer")
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) {
    for entry in std::fs::read_dir(dir).expect("read rootfs") {
        let path = entry.expect("rootfs entry").path();
        let relative = path
            .strip_prefix(root)
            .expect("under rootfs")
            .to_str()
            .expect("utf-8 rootfs path")
            .to_owned();
        let is_dir = std::fs::symlink_metadata(&path)
            .expect("rootfs entry")
            .is_dir();
        out.push((relative, path.clone()));
        if is_dir {
            walk(root, &path, out);
        }
    }
}

fn file_header(size: usize, mode: u32) -> tar::Header {
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(size as u64);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
