#!/usr/bin/env bash
# Install cascade-gateway into the active Python environment: the one set of steps both images run
# (Dockerfile.cpu, Dockerfile.gpu), and that tests/test_images.py runs in a clean virtual environment.
#
#   deploy/docker/install.sh cpu|gpu [SOURCE]      SOURCE: the project folder (default: .)
#
# cpu: torch's CPU wheel (TORCH_INDEX_URL, default PyTorch's CPU index; set it empty to use pip's own
#      configuration, e.g. a mirror that carries the CPU wheel) and onnxruntime.
# gpu: torch's CUDA build (PyPI's Linux wheel) and onnxruntime-gpu in place of onnxruntime: they are
#      the same Python module, so never both in one environment.
set -euo pipefail

flavour=${1:?usage: install.sh cpu|gpu [SOURCE]}
source_dir=${2:-.}
torch_version=2.13.0
pip=(python -m pip install --no-cache-dir)

case "$flavour" in
    cpu)
        index=${TORCH_INDEX_URL-https://download.pytorch.org/whl/cpu}
        "${pip[@]}" ${index:+--index-url "$index"} "torch==${torch_version}"
        "${pip[@]}" "$source_dir"
        ;;
    gpu)
        "${pip[@]}" "torch==${torch_version}"
        "${pip[@]}" "$source_dir"
        ort_version=$(python -c 'import importlib.metadata as m; print(m.version("onnxruntime"))')
        python -m pip uninstall -y onnxruntime
        "${pip[@]}" "onnxruntime-gpu==${ort_version}"
        ;;
    *)
        echo "install.sh: flavour must be cpu or gpu, got '$flavour'" >&2
        exit 2
        ;;
esac

# What was installed is what the flavour promises: one ONNX Runtime, the right torch, a working CLI.
python - "$flavour" <<'PY'
import importlib.metadata as metadata
import sys

flavour = sys.argv[1]
installed = {d.metadata["Name"].lower() for d in metadata.distributions()}
runtimes = sorted(installed & {"onnxruntime", "onnxruntime-gpu"})
expected = ["onnxruntime-gpu"] if flavour == "gpu" else ["onnxruntime"]
if runtimes != expected:
    sys.exit(f"install.sh: expected ONNX Runtime {expected}, found {runtimes}")
import torch

if flavour == "cpu" and torch.version.cuda is not None:
    sys.exit(f"install.sh: the CPU image got torch's CUDA build ({torch.__version__})")
import router, serving, distill  # noqa: E401,F401 - the packages import
print(f"cascade-gateway installed ({flavour}): torch {torch.__version__}, {runtimes[0]}")
PY
cascade --help >/dev/null
