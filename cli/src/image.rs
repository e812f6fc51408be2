//! `hull image build`: runs the repository's guest-image/build.sh, whose
//! progress goes straight to the terminal.

use std::path::PathBuf;
use std::process::Command;

/// Names the source tree when the binary has moved away from the one it was
/// built in.
pub const SOURCE_ENV: &str = "HULL_SOURCE";

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(
        "{} is missing: `hull image build` needs Hull's source tree; set ${SOURCE_ENV} to it",
        .0.display()
    )]
    ScriptMissing(PathBuf),

    #[error("starting {}: {source}", script.display())]
    Spawn {
        script: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{} failed ({status}); its output above says why", script.display())]
    Failed {
        script: PathBuf,
        status: std::process::ExitStatus,
    },
}

/// The build script: under `$HULL_SOURCE`, else in the tree this binary was
/// built from.
pub fn build_script() -> PathBuf {
    match std::env::var_os(SOURCE_ENV) {
        Some(source) => PathBuf::from(source).join("guest-image/build.sh"),
        None => PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../guest-image/build.sh"
        )),
    }
}

/// Runs the build script with `args` (its optional AGENT binary), its
/// output inherited so that the kernel build's progress streams through.
pub fn build(args: &[String]) -> Result<(), ImageError> {
    let script = build_script();
    if !script.is_file() {
        return Err(ImageError::ScriptMissing(script));
    }
    let status = Command::new("bash")
        .arg(&script)
        .args(args)
        .status()
        .map_err(|source| ImageError::Spawn {
            script: script.clone(),
            source,
        })?;
    if status.success() {
        Ok(())
    } else {
        Err(ImageError::Failed { script, status })
    }
}
