#!/usr/bin/env bash
# Installs Hull on a node, or removes it: what the hull-deploy DaemonSet
# (deploy/hull-deploy.yaml) runs, and what an administrator can run by hand
# with HOST_ROOT=/ on a containerd-only machine.
#
#   install.sh install     copy the binaries and the guest image to
#                          /opt/hull/{bin,share}, link the binaries into
#                          /usr/local/bin (containerd's PATH), write
#                          /etc/hull/config.toml if there is none, add the
#                          `hull` runtime to /etc/containerd/config.toml
#                          between marker comments, restart containerd if
#                          that file changed, label the node
#   install.sh uninstall   undo all of that; a config.toml someone edited
#                          is kept
#   install.sh run         install, then wait for SIGTERM; uninstall then if
#                          HULL_UNINSTALL_ON_EXIT=true (the DaemonSet's
#                          entry point)
#
# Both are idempotent: installing twice leaves one runtime block.
#
# Environment:
#   HOST_ROOT               where the node's root is mounted (/host)
#   HULL_PAYLOAD            bin/ and share/ to install (payload/ beside this
#                           script, as deploy/Dockerfile lays it out)
#   HULL_LINK_DIR           the host directory in containerd's PATH that
#                           gets the links (/usr/local/bin)
#   HULL_NO_RESTART=1       never restart containerd
#   HULL_CONTAINERD_SERVICE the systemd unit to restart (containerd)
#   HULL_UNINSTALL_ON_EXIT  true: `run` uninstalls when it is stopped
#   HULL_READY_FILE         what `run` creates once installed
#                           (/tmp/hull-deploy.ready)
#   NODE_NAME               the node to label hull.dev/runtime=true, with
#                           kubectl or else the pod's service account
#
# The containerd runtime tables come from containerd/config-v2.toml or
# config-v3.toml beside this script, by the version the node's containerd
# config file says; a node with no config file gets a version 2 one (which
# containerd 1.6, 1.7 and 2.x all read).

set -euo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

host_root=${HOST_ROOT:-/host}
host_root=${host_root%/}
payload=${HULL_PAYLOAD:-$script_dir/payload}
link_dir=${HULL_LINK_DIR:-/usr/local/bin}
service=${HULL_CONTAINERD_SERVICE:-containerd}

readonly prefix=/opt/hull
readonly containerd_config=/etc/containerd/config.toml
readonly hull_config=/etc/hull/config.toml
readonly node_label=hull.dev/runtime
readonly binaries=(containerd-shim-hull-v2 hull-vmm virtiofsd vhost-device-vsock)
readonly guest_files=(vmlinux initramfs.cpio.gz)
readonly begin_marker="# BEGIN hull runtime: managed by hull's install.sh, do not edit"
readonly end_marker="# END hull runtime"

log() {
  printf 'hull-deploy: %s\n' "$*" >&2
}

die() {
  log "error: $*"
  exit 1
}

# A host path as this script sees it.
on_host() {
  printf '%s%s' "$host_root" "$1"
}

scratch=()
temp=
cleanup() {
  if ((${#scratch[@]})); then
    rm -f -- "${scratch[@]}"
  fi
  scratch=()
}
trap cleanup EXIT

# Sets temp to a new temporary file next to $1, so that a rename onto $1 is
# atomic; it goes when the script ends.
temp_beside() {
  temp=$(mktemp "$(dirname "$1")/.$(basename "$1").hull.XXXXXX")
  scratch+=("$temp")
}

# Copies $1 onto $2 through a rename: a running binary stays intact.
copy_file() {
  local source=$1 target=$2 mode=$3
  mkdir -p "$(dirname "$target")"
  temp_beside "$target"
  cp -- "$source" "$temp"
  chmod "$mode" "$temp"
  mv -f -- "$temp" "$target"
}

install_files() {
  local name
  for name in "${binaries[@]}"; do
    [[ -f $payload/bin/$name ]] || die "$payload/bin/$name is missing"
  done
  for name in "${guest_files[@]}"; do
    [[ -f $payload/share/$name ]] || die "$payload/share/$name is missing"
  done
  for name in "${binaries[@]}"; do
    copy_file "$payload/bin/$name" "$(on_host "$prefix/bin/$name")" 0755
  done
  for name in "${guest_files[@]}"; do
    copy_file "$payload/share/$name" "$(on_host "$prefix/share/$name")" 0644
  done
  log "installed ${binaries[*]} ${guest_files[*]} in $prefix"
}

remove_files() {
  local name
  for name in "${binaries[@]}"; do
    rm -f -- "$(on_host "$prefix/bin/$name")"
  done
  for name in "${guest_files[@]}"; do
    rm -f -- "$(on_host "$prefix/share/$name")"
  done
  rmdir -- "$(on_host "$prefix/bin")" "$(on_host "$prefix/share")" 2>/dev/null || true
  rmdir -- "$(on_host "$prefix")" 2>/dev/null || true
  log "removed $prefix"
}

# Links each binary into containerd's PATH; a file there that is not one of
# ours is left alone (and then that one is what the shim runs).
link_binaries() {
  local name link target
  mkdir -p "$(on_host "$link_dir")"
  for name in "${binaries[@]}"; do
    link=$(on_host "$link_dir/$name")
    target=$prefix/bin/$name
    if [[ -L $link ]]; then
      [[ $(readlink -- "$link") == "$target" ]] && continue
      if [[ $(readlink -- "$link") != "$prefix"/* ]]; then
        log "warning: $link_dir/$name links to $(readlink -- "$link"), not $target: left alone"
        continue
      fi
    elif [[ -e $link ]]; then
      log "warning: $link_dir/$name exists and is not Hull's: left alone, containerd will run it"
      continue
    fi
    ln -sfn -- "$target" "$link"
  done
}

unlink_binaries() {
  local name link
  for name in "${binaries[@]}"; do
    link=$(on_host "$link_dir/$name")
    if [[ -L $link && $(readlink -- "$link") == "$prefix/bin/$name" ]]; then
      rm -f -- "$link"
    fi
  done
}

# The shim's configuration as this installer writes it: deploy/config.toml
# pointed at the installed files.
hull_config_text() {
  sed -e "s|^kernel = .*|kernel = \"$prefix/share/vmlinux\"|" \
    -e "s|^initrd = .*|initrd = \"$prefix/share/initramfs.cpio.gz\"|" \
    -e "s|^hull_vmm = .*|hull_vmm = \"$prefix/bin/hull-vmm\"|" \
    -- "$script_dir/config.toml"
}

write_hull_config() {
  local file
  file=$(on_host "$hull_config")
  if [[ -e $file ]]; then
    log "$hull_config exists: kept as it is"
    return
  fi
  mkdir -p "$(dirname "$file")"
  temp_beside "$file"
  hull_config_text >"$temp"
  chmod 0644 "$temp"
  mv -f -- "$temp" "$file"
  log "wrote $hull_config"
}

remove_hull_config() {
  local file
  file=$(on_host "$hull_config")
  [[ -e $file ]] || return 0
  if cmp -s -- "$file" <(hull_config_text); then
    rm -f -- "$file"
    rmdir -- "$(dirname "$file")" 2>/dev/null || true
    log "removed $hull_config"
  else
    log "$hull_config was edited: kept"
  fi
}

# Prints file $1 without the managed block; fails on a broken one.
without_block() {
  awk -v begin="$begin_marker" -v end="$end_marker" '
    $0 == begin { if (inside) broken = 1; inside = 1; next }
    $0 == end { if (!inside) broken = 1; inside = 0; next }
    !inside { print }
    END { if (inside || broken) exit 3 }
  ' "$1" || die "$containerd_config: unmatched hull marker comments; fix them by hand"
}

# The top-level `version = N` of TOML file $1, or nothing.
config_version() {
  awk '
    /^[[:space:]]*\[/ { exit }
    /^[[:space:]]*version[[:space:]]*=/ {
      sub(/^[^=]*=[[:space:]]*/, "")
      sub(/[^0-9].*$/, "")
      print
      exit
    }
  ' "$1"
}

# The managed block for a config of version $1; with $2 = fresh, for a file
# that has nothing else, it keeps the snippet's `version = N` line.
runtime_block() {
  local version=$1 fresh=$2 snippet
  snippet=$script_dir/containerd/config-v$version.toml
  [[ -f $snippet ]] || die "$snippet is missing"
  printf '%s\n' "$begin_marker"
  # The snippet without its comments, blank lines squeezed, and without its
  # version line unless the file is fresh.
  awk -v fresh="$fresh" '
    /^[[:space:]]*#/ { next }
    /^version[[:space:]]*=/ && fresh != "fresh" { next }
    /^[[:space:]]*$/ { blank = started; next }
    { if (blank) print ""; blank = 0; started = 1; print }
  ' "$snippet"
  printf '%s\n' "$end_marker"
}

# Rewrites the containerd config with the block added ($1 = add) or taken
# out ($1 = remove); sets config_changed when the file changed.
patch_containerd_config() {
  local action=$1 file stripped next version fresh=not-fresh
  file=$(on_host "$containerd_config")
  config_changed=false
  if [[ ! -e $file ]]; then
    [[ $action == add ]] || return 0
    mkdir -p "$(dirname "$file")"
    : >"$file"
  fi
  temp_beside "$file"
  stripped=$temp
  temp_beside "$file"
  next=$temp
  without_block "$file" >"$stripped"
  if [[ $action == add ]]; then
    if ! grep -qvE '^[[:space:]]*(#.*)?$' -- "$stripped"; then
      fresh=fresh
      version=2
    else
      version=$(config_version "$stripped")
      case $version in
        2 | 3) ;;
        "") die "$containerd_config has no top-level 'version = 2' or 'version = 3': a version 1 file is not supported; migrate it first" ;;
        *) die "$containerd_config is version $version: only 2 (containerd 1.6, 1.7) and 3 (containerd 2.x) are supported" ;;
      esac
      if grep -qE 'runtimes\.("hull"|hull)([].]|[[:space:]]*=)' -- "$stripped"; then
        die "$containerd_config already configures a 'hull' runtime outside hull's markers; remove it first"
      fi
    fi
    {
      cat -- "$stripped"
      runtime_block "$version" "$fresh"
    } >"$next"
  else
    cp -- "$stripped" "$next"
  fi
  if cmp -s -- "$file" "$next"; then
    log "$containerd_config already as wanted"
    return 0
  fi
  chmod --reference="$file" -- "$next"
  if [[ $action == remove ]] && ! grep -qvE '^[[:space:]]*$' -- "$next"; then
    rm -f -- "$file"
  else
    mv -f -- "$next" "$file"
  fi
  config_changed=true
  if [[ $action == add ]]; then
    log "$containerd_config: hull runtime added (version $version)"
  else
    log "$containerd_config: hull runtime removed"
  fi
}

restart_containerd() {
  if [[ ${HULL_NO_RESTART:-} == 1 ]]; then
    log "HULL_NO_RESTART=1: not restarting $service"
    return
  fi
  log "restarting $service"
  nsenter -t 1 -m -u -i -n -p -- systemctl restart "$service"
}

# Sets ($1 = true) or removes ($1 = null) the node label.
label_node() {
  local value=$1 api token
  if [[ -z ${NODE_NAME:-} ]]; then
    log "NODE_NAME is not set: the node is not labelled"
    return
  fi
  if command -v kubectl >/dev/null; then
    if [[ $value == true ]]; then
      kubectl label node "$NODE_NAME" "$node_label=true" --overwrite >/dev/null
    else
      kubectl label node "$NODE_NAME" "$node_label-" >/dev/null
    fi
  else
    api=/var/run/secrets/kubernetes.io/serviceaccount
    if [[ ! -r $api/token || -z ${KUBERNETES_SERVICE_HOST:-} ]] || ! command -v curl >/dev/null; then
      log "neither kubectl nor a service account with curl: the node is not labelled"
      return
    fi
    token=$(<"$api/token")
    if [[ $value == true ]]; then
      value='"true"'
    fi
    curl --silent --show-error --fail --output /dev/null \
      --cacert "$api/ca.crt" \
      --header "Authorization: Bearer $token" \
      --header "Content-Type: application/merge-patch+json" \
      --request PATCH \
      --data "{\"metadata\":{\"labels\":{\"$node_label\":$value}}}" \
      "https://$KUBERNETES_SERVICE_HOST:${KUBERNETES_SERVICE_PORT:-443}/api/v1/nodes/$NODE_NAME"
  fi
  log "node $NODE_NAME: $node_label=$value"
}

do_install() {
  install_files
  link_binaries
  write_hull_config
  patch_containerd_config add
  if [[ $config_changed == true ]]; then
    restart_containerd
  fi
  label_node true
  cleanup
  log "installed"
}

do_uninstall() {
  # The label first, so that no new hull pod lands here meanwhile.
  label_node null
  patch_containerd_config remove
  if [[ $config_changed == true ]]; then
    restart_containerd
  fi
  unlink_binaries
  remove_hull_config
  remove_files
  cleanup
  log "uninstalled"
}

# A SIGTERM at any point ends the wait, or skips it.
stop=false
sleeper=
do_run() {
  trap 'stop=true; if [[ -n $sleeper ]]; then kill "$sleeper" 2>/dev/null || true; fi' TERM INT
  do_install
  sleep infinity &
  sleeper=$!
  # The DaemonSet's readiness probe looks for it.
  touch "${HULL_READY_FILE:-/tmp/hull-deploy.ready}"
  if [[ $stop == false ]]; then
    wait "$sleeper" || true
  fi
  kill "$sleeper" 2>/dev/null || true
  if [[ ${HULL_UNINSTALL_ON_EXIT:-false} == true ]]; then
    do_uninstall
  fi
}

case ${1:-} in
  install) do_install ;;
  uninstall) do_uninstall ;;
  run) do_run ;;
  *)
    printf 'usage: %s install|uninstall|run\n' "$0" >&2
    exit 2
    ;;
esac
