#!/usr/bin/env bash
# Installs what BestMatch needs on a fresh Debian/Ubuntu machine with Python 3.11:
# uv (if missing, and on PATH for new shells), the locked Python packages (uv sync), and
# redis-server and redis-cli (if missing: the tests' Redis Cluster is made with redis-cli).
# Sourced by scripts/demo.sh and scripts/test.sh; safe to run again.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf 'bootstrap: %s\n' "$*" >&2; }
die() { printf 'bootstrap: error: %s\n' "$*" >&2; exit 1; }

login_path="$PATH"
if ! command -v uv >/dev/null 2>&1; then
  export PATH="$HOME/.local/bin:$PATH"
fi
if ! command -v uv >/dev/null 2>&1; then
  say "installing uv"
  python3 -m pip install --quiet --user uv 2>/dev/null \
    || python3 -m pip install --quiet uv \
    || die "could not install uv with pip; install it (https://docs.astral.sh/uv/) and retry"
  hash -r
  command -v uv >/dev/null 2>&1 || die "uv was installed but is not on PATH; add ~/.local/bin to PATH"
fi

# `uv run bestmatch ...` must work in the user's next shell too: pip --user puts uv in
# ~/.local/bin, which a login shell (root's, or a minimal image's) may not have on PATH.
if ! PATH="$login_path" command -v uv >/dev/null 2>&1; then
  uv_bin="$(command -v uv)"
  linked=""
  for dir in /usr/local/bin "$HOME/bin"; do
    case ":$login_path:" in *":$dir:"*) ;; *) continue ;; esac
    if [ -d "$dir" ] && [ -w "$dir" ]; then
      ln -sf "$uv_bin" "$dir/uv"
      [ -x "$(dirname "$uv_bin")/uvx" ] && ln -sf "$(dirname "$uv_bin")/uvx" "$dir/uvx"
      say "linked $dir/uv to $uv_bin (so a new shell finds uv)"
      linked=1
      break
    fi
  done
  if [ -z "$linked" ]; then
    say "uv is in $(dirname "$uv_bin"), which is not on your PATH; for new shells, run:"
    say "  echo 'export PATH=\"$(dirname "$uv_bin"):\$PATH\"' >> ~/.profile"
  fi
fi

uv sync --frozen --python 3.11 --quiet || die "uv sync failed (is Python 3.11 installed?)"

if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
  say "installing redis-server and redis-cli from Debian's packages"
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; elif command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    die "redis-server is missing and this user cannot install it: apt-get install redis-server"
  fi
  command -v apt-get >/dev/null 2>&1 || die "redis-server is missing and apt-get is not available: install Redis 7"
  $SUDO apt-get update -qq >/dev/null || die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server redis-tools >/dev/null \
    || die "apt-get install redis-server redis-tools failed"
  # Debian's package may start a system-wide server; BestMatch starts its own where needed.
fi
