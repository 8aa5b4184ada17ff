#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install everything the project
# needs: torch/torchvision, Detectron2, the LVIS/COCO tools, the `efl` package, test tools.
#
# Safe to run twice: a stamp file keyed on this script and pyproject.toml makes a second
# run a no-op; change either (or delete .venv) to reinstall.
#
# Environment knobs:
#   EFL_VENV            where the venv lives                   (default: <repo>/.venv)
#   PYTHON              interpreter that creates the venv      (default: python3)
#   EFL_TORCH_PACKAGES  torch/torchvision requirement          (default below)
#   EFL_TORCH_PIP_ARGS  extra pip args for torch, e.g. a CUDA wheel index:
#       EFL_TORCH_PACKAGES="torch==2.5.1 torchvision==0.20.1" \
#       EFL_TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cu124" make test
#   EFL_D2_SOURCE       auto (default) | official | pypi-fallback
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${EFL_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
TORCH_PACKAGES="${EFL_TORCH_PACKAGES:-torch==2.14.1 torchvision==0.29.1}"
TORCH_PIP_ARGS="${EFL_TORCH_PIP_ARGS:-}"
D2_SOURCE="${EFL_D2_SOURCE:-auto}"
# Detectron2 main at a pinned commit (the official install builds from Git).
D2_REPO="https://github.com/facebookresearch/detectron2.git"
D2_COMMIT="ad26fb712e9022629bf44fb5728f40e453ec173d"
# Fallback: PyPI's source copy of the v0.6 release (ships without layers/csrc, see below).
D2_FALLBACK="pb1-detectron2==0.6"

STAMP_KEY="$(cat "$ROOT/scripts/setup_env.sh" "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)"
STAMP="$VENV/.efl-setup-$STAMP_KEY"
if [ -f "$STAMP" ]; then
  echo "[setup] environment up to date: $VENV ($(cat "$VENV/.efl-detectron2-source"))"
  exit 0
fi

log() { echo "[setup] $*"; }
if [ ! -x "$VENV/bin/python" ]; then
  log "creating virtual environment $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)

log "installing $TORCH_PACKAGES"
# setuptools: torch 2.14 needs >= 77; Detectron2's model_zoo imports pkg_resources,
# which setuptools 81 removed.
# shellcheck disable=SC2086
"${PIP[@]}" install -q $TORCH_PIP_ARGS $TORCH_PACKAGES "setuptools>=77,<81" wheel

# A Detectron2 whose native module lacks even the informational functions is an older
# stand-in of this script: rebuild it.
if "$VENV/bin/python" -c "import detectron2._C as C; C.get_compiler_version()" 2>/dev/null; then
  log "detectron2 already installed"
  [ -f "$VENV/.efl-detectron2-source" ] || echo "preinstalled Detectron2" > "$VENV/.efl-detectron2-source"
else
  installed=""
  if [ "$D2_SOURCE" != "pypi-fallback" ]; then
    if timeout 30 git ls-remote "$D2_REPO" HEAD >/dev/null 2>&1; then
      log "building official Detectron2 from Git at $D2_COMMIT"
      if "${PIP[@]}" install --no-build-isolation --no-deps "git+$D2_REPO@$D2_COMMIT"; then
        installed="official Detectron2 (git $D2_COMMIT)"
      else
        log "official build failed"
      fi
    else
      log "Detectron2's Git host is not reachable"
    fi
    if [ -z "$installed" ] && [ "$D2_SOURCE" = "official" ]; then
      echo "[setup] ERROR: EFL_D2_SOURCE=official but the official build failed" >&2; exit 1
    fi
  fi
  if [ -z "$installed" ]; then
    log "falling back to PyPI $D2_FALLBACK (v0.6 without native ops)"
    work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
    # Its setup.py imports torch even for metadata, hence --no-build-isolation.
    "${PIP[@]}" download -q --no-deps --no-build-isolation "$D2_FALLBACK" -d "$work"
    tar -xzf "$work"/pb1-detectron2-*.tar.gz -C "$work"
    src="$(find "$work" -maxdepth 1 -type d -name 'pb1-detectron2-*' | head -n1)"
    # The sdist lacks detectron2/layers/csrc. A stand-in module with only the two
    # informational functions (collect_env_info, run by default_setup, calls them) lets
    # it build; deformable conv, rotated boxes and the fast COCO eval stay missing, and
    # nothing in this project calls them.
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
    # v0.6 uses Image.LINEAR, removed in Pillow 10 (fixed on Detectron2 main).
    "${PIP[@]}" install -q "Pillow<10"
    installed="PyPI $D2_FALLBACK fallback (Detectron2 v0.6, no native ops)"
  fi
  echo "$installed" > "$VENV/.efl-detectron2-source"
fi

log "installing the efl package and its dependencies"
"${PIP[@]}" install -q --no-build-isolation -e "$ROOT[test]" $(
  # keep the Pillow pin of the v0.6 fallback
  grep -q fallback "$VENV/.efl-detectron2-source" && echo "Pillow<10")

"$VENV/bin/python" - <<'PY'
import detectron2, torch, lvis, efl
print(f"[setup] torch {torch.__version__}, detectron2 {detectron2.__version__} "
      f"({detectron2.__file__}), efl {efl.__version__}")
PY
log "Detectron2 source: $(cat "$VENV/.efl-detectron2-source")"
rm -f "$VENV"/.efl-setup-*
touch "$STAMP"
