//! Section 5: I/O in a container's root filesystem, virtio-fs for hull.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use hull_tests::cri::{ContainerSpec, CriClient, PodSpec};
use hull_tests::image::{BUSYBOX_IMAGE, PAUSE_SCRIPT};

use crate::pod_start::remove;
use crate::report::{Report, ratio_of, show};
use crate::{Config, RUNTIMES};

/// Bounds each I/O script.
const IO_TIMEOUT: Duration = Duration::from_secs(600);

/// The I/O script: prints `<name> <seconds>` per step, timed with the
/// container's /proc/uptime (a VM's own clock for hull).
fn io_script(mib: u32, files: u32) -> String {
    format!(
        r#"set -e
t() {{ read up idle < /proc/uptime; echo $up; }}
step() {{ echo "$1 $(echo "$3 $2" | awk '{{printf "%.2f", $1 - $2}}')"; }}
rm -rf /bench.dat /bench.d
s=$(t); dd if=/dev/zero of=/bench.dat bs=1M count={mib} conv=fsync 2>/dev/null; e=$(t); step write $s $e
s=$(t); dd if=/bench.dat of=/dev/null bs=1M 2>/dev/null; e=$(t); step read $s $e
rm -f /bench.dat
mkdir /bench.d
s=$(t); i=0; while [ $i -lt {files} ]; do echo x > /bench.d/f$i; i=$((i+1)); done; e=$(t); step create $s $e
s=$(t); i=0; while [ $i -lt {files} ]; do [ -f /bench.d/f$i ]; i=$((i+1)); done; e=$(t); step stat $s $e
s=$(t); rm -r /bench.d; e=$(t); step delete $s $e
echo done
"#
    )
}

pub(crate) async fn io(report: &mut Report, config: &Config, client: &mut CriClient, logs: &Path) {
    let script = io_script(config.io_mib, config.files);
    let mut results: HashMap<&str, HashMap<String, f64>> = HashMap::new();
    let mut failures = Vec::new();
    for (name, handler) in RUNTIMES {
        let mut spec = PodSpec::new(&format!("io-{name}"), handler, logs);
        spec.host_network = false;
        let pod = match client.run_pod(&spec).await {
            Ok(pod) => pod,
            Err(err) => {
                failures.push(format!("{name} RunPodSandbox: {err}"));
                continue;
            }
        };
        let idle = ContainerSpec::new("io", BUSYBOX_IMAGE, &["sh", "-c", PAUSE_SCRIPT]);
        let outcome = match client.run_container(&pod, &idle).await {
            Ok(id) => client
                .exec_sync(&id, &["sh", "-c", &script], IO_TIMEOUT)
                .await
                .map_err(|err| err.to_string()),
            Err(err) => Err(err.to_string()),
        };
        match outcome {
            Ok(out) if out.stdout.contains("done") => {
                println!("  {name}: {}", out.stdout.trim().replace('\n', ", "));
                let steps = results.entry(name).or_default();
                for line in out.stdout.lines() {
                    if let Some((step, seconds)) = line.split_once(' ')
                        && let Ok(seconds) = seconds.parse::<f64>()
                    {
                        steps.insert(step.to_owned(), seconds);
                    }
                }
            }
            Ok(out) => failures.push(format!(
                "{name}: exit {} {} {}",
                out.exit_code, out.stdout, out.stderr
            )),
            Err(err) => failures.push(format!("{name}: {err}")),
        }
        remove(client, &pod).await;
    }
    report.section(5);
    report.line("## 5. I/O in the container's root filesystem");
    report.line("");
    report.line(&format!(
        "One exec (CRI ExecSync of busybox sh) per runtime, timed inside the container with \
         /proc/uptime (10 ms resolution; the guest's clock for hull). The root filesystem is \
         virtio-fs (virtiofsd) for hull, overlayfs on the host's disk for runc. dd of {mib} MiB \
         in 1 MiB blocks to `/bench.dat` with `conv=fsync`, then read back at once (so the \
         read may come from the page cache: the guest's for hull, the host's for runc); \
         {files} files of 2 bytes created with `echo x >` (the shell's own redirection, no \
         fork), tested with `[ -f ]` (one stat each), deleted with one `rm -r`. Speeds in \
         MiB/s and files per second; the ratio is hull's speed over runc's.",
        mib = config.io_mib,
        files = config.files
    ));
    report.line("");
    report.line("| | hull | runc | hull/runc |");
    report.line("| --- | ---: | ---: | ---: |");
    let rate = |name: &str, step: &str, amount: f64| -> Option<f64> {
        let seconds = *results.get(name)?.get(step)?;
        // /proc/uptime ticks in 10 ms: never divide by less.
        Some(amount / seconds.max(0.01))
    };
    let mib = f64::from(config.io_mib);
    let files = f64::from(config.files);
    for (label, step, amount) in [
        ("sequential write (MiB/s)", "write", mib),
        ("sequential read (MiB/s)", "read", mib),
        ("create (files/s)", "create", files),
        ("stat (files/s)", "stat", files),
        ("delete (files/s)", "delete", files),
    ] {
        let (hull, runc) = (rate("hull", step, amount), rate("runc", step, amount));
        report.line(&format!(
            "| {label} | {} | {} | {} |",
            show(hull, 1),
            show(runc, 1),
            ratio_of(hull, runc)
        ));
    }
    report.line("");
    for failure in failures {
        println!("  FAILED {failure}");
        report.line(&format!("- FAILED {failure}"));
    }
}
