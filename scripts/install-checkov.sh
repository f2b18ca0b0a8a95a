#!/usr/bin/env bash
# Install checkov into its own virtualenv (.tools/checkov) and print the path
# of the `checkov` executable. checkov pins packaging<24, which conflicts with
# pytest>=9 in the project's environment, so it never goes there.
# Idempotent: reuses an existing install. Uses `checkov` from PATH if present.
# Env: TOOLS_DIR (default <repo>/.tools), CHECKOV_VERSION (default: newest).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools_dir="${TOOLS_DIR:-$repo_root/.tools}"
venv="$tools_dir/checkov"

if command -v checkov >/dev/null 2>&1; then
  command -v checkov
  exit 0
fi
if [[ -x "$venv/bin/checkov" ]] && "$venv/bin/checkov" --version >/dev/null 2>&1; then
  echo "$venv/bin/checkov"
  exit 0
fi

python="$(command -v python3)"
echo "install-checkov: creating $venv" >&2
rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/pip" install --quiet "checkov${CHECKOV_VERSION:+==$CHECKOV_VERSION}" >&2
"$venv/bin/checkov" --version >&2
echo "$venv/bin/checkov"
