# Shared by the hack/ scripts: a project virtualenv in .venv, refreshed when pyproject changes.
# shellcheck shell=bash

repo_root() { cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd; }

# ensure_venv EXTRAS: create .venv if needed and (re)install the project with the given extras
# whenever pyproject.toml changed since the last install.
ensure_venv() {
  local extras="$1" root stamp want
  root="$(repo_root)"
  stamp="$root/.venv/.concord-installed-$extras"
  if [ ! -x "$root/.venv/bin/python" ]; then
    local py="${PYTHON:-python3}"
    "$py" -m venv "$root/.venv"
    "$root/.venv/bin/python" -m pip install --quiet --upgrade pip
  fi
  want="$(sha256sum "$root/pyproject.toml" | cut -d' ' -f1)"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "installing concord[$extras] into .venv ..." >&2
    "$root/.venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "$root[$extras]"
    echo "$want" >"$stamp"
  fi
}

# ensure_etcd: the integration tests start a real etcd server; install Debian's etcd-server when
# the binary is missing (as root, or through sudo).
ensure_etcd() {
  command -v etcd >/dev/null 2>&1 && return 0
  echo "installing etcd (Debian package etcd-server) ..." >&2
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends etcd-server >/dev/null
  command -v etcd >/dev/null 2>&1 || { echo "etcd still missing after install" >&2; return 1; }
}
