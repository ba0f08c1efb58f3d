#!/usr/bin/env bash
# Creates (or refreshes) the development environment in .venv: the CPU torch wheel, every package
# of the monorepo installed editable, and the test tools. Idempotent and quick when nothing changed:
# a stamp holds the hash of the files that define the environment.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="${ILLUME_VENV:-$root/.venv}"
python="${PYTHON:-python3}"
packages=(illume-core illume-eval illume-tokenizer illume-detokenizer illume-mllm illume-trainer illume-runtime illume)

inputs=("$root/tools/bootstrap.sh" "$root/tools/constraints.txt" "$root/tools/requirements-dev.txt" "$root/tools/requirements-lmms-eval.txt")
for p in "${packages[@]}"; do inputs+=("$root/packages/$p/pyproject.toml"); done
want=$(cat "${inputs[@]}" | sha256sum | cut -d' ' -f1)
if [ -f "$venv/.illume-env" ] && [ "$(cat "$venv/.illume-env")" = "$want" ]; then
    exit 0
fi

echo "illume: setting up the development environment in $venv (first run takes a minute or two)" >&2
"$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check -c "$root/tools/constraints.txt")
# torch first and pinned: the CPU build on local disk; a bare `torch` would pull a CUDA build.
"${pip[@]}" torch==2.13.0
"${pip[@]}" -r "$root/tools/requirements-dev.txt"
editable=()
for p in "${packages[@]}"; do editable+=(-e "$root/packages/$p"); done
# ONNX Runtime's CPU wheel, the way a user gets it (`illume-runtime[cpu]`), for the ONNX tests
editable+=(-e "$root/packages/illume-runtime[cpu]")
"${pip[@]}" --no-build-isolation "${editable[@]}"
# lmms-eval and what its command line needs, not its whole dependency list (see the file); last,
# so that no later install lists the dependencies it was installed without
"${pip[@]}" --no-deps -r "$root/tools/requirements-lmms-eval.txt"
echo "$want" > "$venv/.illume-env"
