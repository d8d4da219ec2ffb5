# Shared helpers for scripts/up, scripts/down and scripts/test (sourced, not run).
# shellcheck shell=bash
NUBIS_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$NUBIS_ROOT/.venv"
PY="$VENV/bin/python"

say() { printf 'nubis: %s\n' "$*"; }
die() { printf 'nubis: FAILED: %s\n' "$*" >&2; exit 1; }

# Create the virtual environment and (re)install the package when pyproject.toml changed.
ensure_venv() {  # ensure_venv EXTRAS   e.g. ensure_venv "[dev]"
  local extras=${1:-} stamp="$VENV/.nubis-installed" want
  if [ ! -x "$PY" ]; then
    python3 -m venv "$VENV" || die "python3 -m venv $VENV failed"
    say "created virtual environment $VENV"
  fi
  want="$(sha256sum "$NUBIS_ROOT/pyproject.toml" | cut -c1-16)$extras"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    say "installing nubis$extras into $VENV (pip)"
    local log="$VENV/pip-install.log"
    if ! { "$PY" -m pip install --disable-pip-version-check --upgrade pip \
           && "$PY" -m pip install --disable-pip-version-check -e "$NUBIS_ROOT$extras"; } >"$log" 2>&1; then
      tail -n 15 "$log" >&2
      die "pip install -e .$extras failed (the last lines of $log are above)"
    fi
    printf '%s' "$want" > "$stamp"
  else
    say "virtual environment up to date"
  fi
}

# Is a TCP port on 127.0.0.1 accepting connections?
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Run the host bootstrap (root or sudo).
bootstrap_host() { "$NUBIS_ROOT/scripts/bootstrap-host" || die "host bootstrap failed (see above)"; }
