#!/usr/bin/env bash
# Every mcp-gatekeeper benchmark, one command: installs what the bench needs, runs bench/run.py, which writes
# bench/README.md, bench/results.json and the PNG plots next to them.
#
#   bash bench/run.sh             # the full run (~6-8 min on 2 cores)
#   bash bench/run.sh --quick     # smoke run (~1-2 min), written to bench/.out/quick/
#   bash bench/run.sh --only policy,decision --no-peers
#
# Python: $PYTHON if set, else the project venv .venv/ if present, else the active venv ($VIRTUAL_ENV), else
# python3 on PATH; it must have mcp-gatekeeper installed (bash .ci/setup makes .venv/).
# Peers (mcp-server-time ...): $GK_PEERS, else ./.peers, else ~/.cache/mcp-peers; if none exists, .ci/setup
# installs ./.peers. The proxies compared against get their own venvs under bench/.venvs/.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
PIP_QUIET="-q --disable-pip-version-check"

have_peers() {
  for d in "${GK_PEERS:-}" "$ROOT/.peers" "$HOME/.cache/mcp-peers"; do
    if [ -n "$d" ] && [ -d "$d" ]; then return 0; fi
  done
  return 1
}
if ! have_peers; then
  echo "bench: no MCP peers found (GK_PEERS, ./.peers, ~/.cache/mcp-peers); running .ci/setup" >&2
  bash .ci/setup >&2
fi

if [ -n "${PYTHON:-}" ]; then PY="$PYTHON"
elif [ -x .venv/bin/python ]; then PY=.venv/bin/python
elif [ -n "${VIRTUAL_ENV:-}" ] && [ -x "$VIRTUAL_ENV/bin/python" ]; then PY="$VIRTUAL_ENV/bin/python"
else PY="$(command -v python3)"
fi
if ! "$PY" -c "import mcp_gatekeeper" 2>/dev/null; then
  echo "bench: $PY cannot import mcp_gatekeeper; run 'bash .ci/setup' (makes .venv/) or activate the project venv" >&2
  exit 2
fi

# the [bench] extra of pyproject.toml: plots and the sampling profiler
if ! "$PY" -c "import matplotlib" 2>/dev/null || [ ! -x "$(dirname "$PY")/py-spy" ]; then
  "$PY" -m pip install $PIP_QUIET "matplotlib>=3.8" "py-spy>=0.4" 2>&1 | grep -v -E "^WARNING: Location|^$" || true
fi

# other MCP proxies to compare with, each in its own venv (a failure only drops that row)
mkdir -p bench/.venvs
peer_venv() {  # name, pip requirement, executable that proves it is installed
  local name="$1" req="$2" exe="$3"
  if [ ! -x "bench/.venvs/$name/bin/$exe" ]; then
    echo "bench: installing $req into bench/.venvs/$name" >&2
    (python3 -m venv "bench/.venvs/$name" && "bench/.venvs/$name/bin/pip" install $PIP_QUIET "$req" 2>&1 \
      | grep -v -E "^WARNING: Location|^$") || echo "bench: could not install $req; its row is skipped" >&2
  fi
}
if [ "${GK_BENCH_NO_PEER_INSTALL:-0}" != "1" ]; then
  peer_venv mcp-proxy "mcp-proxy==0.13.0" mcp-proxy
  peer_venv fastmcp "fastmcp==4.2.3" fastmcp
fi

exec "$PY" bench/run.py "$@"
