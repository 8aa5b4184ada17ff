#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install everything the project
# needs: torch/torchvision, Detectron2 (official, with its native ops), the LVIS/COCO tools,
# the `efl` package and the test tools.
#
# Safe to run twice: a stamp keyed on this script, pyproject.toml and the requested
# Detectron2 source makes a second run a no-op; a change of source rebuilds Detectron2.
# Without any EFL_D2_* variable, the Detectron2 already in the venv is kept.
#
# Environment knobs:
#   EFL_VENV            where the venv lives                      (default: <repo>/.venv)
#   PYTHON              interpreter that creates the venv         (default: python3)
#   EFL_TORCH_PACKAGES  torch/torchvision requirement             (default below)
#   EFL_TORCH_PIP_ARGS  extra pip args for torch, e.g. a CUDA wheel index
#   EFL_D2_SOURCE       where Detectron2 comes from:
#       auto (default)  Git (below) if reachable, else the PyPI v0.6 fallback
#       <path>          a local Detectron2 checkout or source archive (air-gapped machines)
#       official        Git only; fail if it cannot be built
#       pypi-fallback   PyPI's copy of v0.6 (pb1-detectron2) without native ops
#   EFL_D2_GIT_URL      Detectron2's Git repository, or a mirror  (default: GitHub)
#   EFL_D2_COMMIT       the commit built from Git                 (default: the pin below)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${EFL_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
TORCH_PACKAGES="${EFL_TORCH_PACKAGES:-torch==2.14.1 torchvision==0.29.1}"
TORCH_PIP_ARGS="${EFL_TORCH_PIP_ARGS:-}"
D2_SOURCE="${EFL_D2_SOURCE:-auto}"
D2_GIT_URL="${EFL_D2_GIT_URL:-https://github.com/facebookresearch/detectron2.git}"
# Detectron2 main, 2026-06-06: built and tested here (move it only to a tested commit).
D2_COMMIT="${EFL_D2_COMMIT:-02b5c4e295e990042a714712c21dc79b731e8833}"
D2_FALLBACK="pb1-detectron2==0.6"

log() { echo "[setup] $*"; }
die() { echo "[setup] ERROR: $*" >&2; exit 1; }

# What was asked for; a different request rebuilds Detectron2.
case "$D2_SOURCE" in
  auto|official) REQUEST="$D2_SOURCE $D2_GIT_URL@$D2_COMMIT" ;;
  pypi-fallback) REQUEST="pypi-fallback $D2_FALLBACK" ;;
  *)
    [ -e "$D2_SOURCE" ] || die "EFL_D2_SOURCE=$D2_SOURCE is neither auto, official, pypi-fallback nor an existing path to a Detectron2 checkout or source archive."
    D2_PATH="$(cd "$(dirname "$D2_SOURCE")" && pwd)/$(basename "$D2_SOURCE")"
    if [ -f "$D2_PATH" ]; then
      REQUEST="path $D2_PATH sha256:$(sha256sum "$D2_PATH" | cut -c1-16)"
    else
      REQUEST="path $D2_PATH $(git -C "$D2_PATH" rev-parse HEAD 2>/dev/null || echo unversioned)"
    fi ;;
esac

# Nothing asked for explicitly: keep the Detectron2 an earlier run installed (e.g. from
# EFL_D2_SOURCE=<path>), so the README's plain commands never swap it.
if [ -z "${EFL_D2_SOURCE:-}${EFL_D2_GIT_URL:-}${EFL_D2_COMMIT:-}" ] && [ -f "$VENV/.efl-detectron2-request" ]; then
  REQUEST="$(cat "$VENV/.efl-detectron2-request")"
fi

STAMP_KEY="$(cat "$ROOT/scripts/setup_env.sh" "$ROOT/pyproject.toml" <(echo "$REQUEST") | sha256sum | cut -c1-16)"
STAMP="$VENV/.efl-setup-$STAMP_KEY"
if [ -f "$STAMP" ]; then
  log "environment up to date: $VENV"
  log "Detectron2: $(cat "$VENV/.efl-detectron2-installed")"
  exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
  log "creating virtual environment $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check)

log "installing $TORCH_PACKAGES"
# setuptools: torch 2.14 needs >= 77; Detectron2's model_zoo (v0.6 and main) imports
# pkg_resources, which setuptools 81 removed.
# shellcheck disable=SC2086
"${PIP[@]}" install -q $TORCH_PIP_ARGS $TORCH_PACKAGES "setuptools>=77,<81" wheel

# --- Detectron2 ----------------------------------------------------------------------
build_official() {  # $1: pip requirement (path, archive or git+URL@commit); $2: description
  log "building official Detectron2 from $2 (native ops; about 3 minutes on 2 cores)"
  "${PIP[@]}" uninstall -q -y detectron2 pb1-detectron2 >/dev/null 2>&1 || true
  MAX_JOBS="${MAX_JOBS:-2}" "${PIP[@]}" install -q --no-build-isolation --no-deps "$1"
}

build_fallback() {
  cat <<'MSG'
[setup] ======================================================================
[setup] FALLBACK: installing PyPI's pb1-detectron2==0.6, a copy of the Detectron2
[setup] v0.6 release (October 2021), because official Detectron2 could not be built
[setup] (its Git host is not reachable and no local source was given).
[setup] Its sdist lacks Detectron2's native ops (detectron2/layers/csrc): deformable
[setup] convolution, rotated boxes, ROIAlignRotated and the C++ COCO evaluator are
[setup] missing (training and evaluation do not use them), model export
[setup] (tools/export_model.py) is unavailable (v0.6's detectron2.export needs caffe2),
[setup] and efl/compat.py's v0.6 workarounds are active. Pillow is pinned < 10 on this
[setup] path (v0.6 uses Image.LINEAR). For the official build: EFL_D2_SOURCE=<Detectron2
[setup] checkout or archive>, or EFL_D2_GIT_URL=<mirror URL>; see docs/setup.md.
[setup] ======================================================================
MSG
  "${PIP[@]}" uninstall -q -y detectron2 pb1-detectron2 >/dev/null 2>&1 || true
  local work src
  work="$(mktemp -d)"
  # Its setup.py imports torch even for metadata, hence --no-build-isolation.
  "${PIP[@]}" download -q --no-deps --no-build-isolation "$D2_FALLBACK" -d "$work"
  tar -xzf "$work"/pb1-detectron2-*.tar.gz -C "$work"
  src="$(find "$work" -maxdepth 1 -type d -name 'pb1-detectron2-*' | head -n1)"
  # A stand-in native module with only the informational functions that
  # collect_env_info (run by default_setup) calls; the real ops stay missing.
  mkdir -p "$src/detectron2/layers/csrc"
  cat > "$src/detectron2/layers/csrc/vision.cpp" <<'CPP'
#include <torch/extension.h>
// Stand-in for Detectron2's native ops, which PyPI's pb1-detectron2 does not ship.
std::string get_compiler_version() { return "GCC " __VERSION__ " (native ops not built)"; }
std::string get_cuda_version() { return "not built"; }
bool has_cuda() { return false; }
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("get_compiler_version", &get_compiler_version);
  m.def("get_cuda_version", &get_cuda_version);
  m.def("has_cuda", &has_cuda);
}
CPP
  MAX_JOBS=2 "${PIP[@]}" install -q --no-build-isolation --no-deps "$src"
  rm -rf "$work"
}

if [ -f "$VENV/.efl-detectron2-request" ] && [ "$(cat "$VENV/.efl-detectron2-request")" = "$REQUEST" ] \
   && "$PY" -c "import detectron2" 2>/dev/null; then
  log "Detectron2 already installed: $(cat "$VENV/.efl-detectron2-installed")"
else
  rm -f "$VENV/.efl-detectron2-request"
  installed=""
  case "$D2_SOURCE" in
    auto|official)
      if timeout 60 git ls-remote "$D2_GIT_URL" >/dev/null 2>&1; then
        if build_official "git+$D2_GIT_URL@$D2_COMMIT" "Git: $D2_GIT_URL at $D2_COMMIT"; then
          installed="official Detectron2 main at $D2_COMMIT (Git: $D2_GIT_URL)"
        else
          log "the official build from Git failed (output above)"
        fi
      else
        log "Detectron2's Git repository is not reachable: $D2_GIT_URL"
      fi
      if [ -z "$installed" ]; then
        [ "$D2_SOURCE" = official ] && die "EFL_D2_SOURCE=official, but official Detectron2 could not be built from $D2_GIT_URL at $D2_COMMIT. Check the URL (EFL_D2_GIT_URL) and the commit (EFL_D2_COMMIT), or point EFL_D2_SOURCE at a local Detectron2 checkout or archive."
        build_fallback
        installed="FALLBACK: PyPI $D2_FALLBACK (Detectron2 v0.6, no native ops)"
      fi ;;
    pypi-fallback)
      build_fallback
      installed="FALLBACK: PyPI $D2_FALLBACK (Detectron2 v0.6, no native ops)" ;;
    *)
      commit=""
      if [ -f "$D2_PATH" ]; then  # git archive records its commit in the tar header
        case "$D2_PATH" in
          *.gz|*.tgz) commit="$(gzip -dc "$D2_PATH" 2>/dev/null | git get-tar-commit-id 2>/dev/null || true)" ;;
          *) commit="$(git get-tar-commit-id < "$D2_PATH" 2>/dev/null || true)" ;;
        esac
      else
        commit="$(git -C "$D2_PATH" rev-parse HEAD 2>/dev/null || true)"
      fi
      build_official "$D2_PATH" "local source $D2_PATH${commit:+ (commit $commit)}" \
        || die "could not build Detectron2 from EFL_D2_SOURCE=$D2_PATH (output above)."
      installed="official Detectron2 from $D2_PATH${commit:+ at $commit}" ;;
  esac
  echo "$installed" > "$VENV/.efl-detectron2-installed"
  echo "$REQUEST" > "$VENV/.efl-detectron2-request"
fi

log "installing the efl package and its dependencies"
pillow="Pillow>=10"
grep -q FALLBACK "$VENV/.efl-detectron2-installed" && pillow="Pillow<10"  # v0.6: Image.LINEAR
"${PIP[@]}" install -q --no-build-isolation -e "$ROOT[test]" "$pillow"

"$PY" - <<'PY'
import detectron2, torch, lvis, efl
from efl import compat
ops = "native ops built" if compat.HAS_NATIVE_OPS else "NO native ops"
print(f"[setup] torch {torch.__version__}, detectron2 {detectron2.__version__} "
      f"({detectron2.__file__}, {ops}), efl {efl.__version__}")
PY
log "Detectron2: $(cat "$VENV/.efl-detectron2-installed")"
rm -f "$VENV"/.efl-setup-*
touch "$STAMP"
