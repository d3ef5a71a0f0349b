#!/usr/bin/env bash
# Creates, idempotently, the Python venv whose PyTorch 2.11.0 wheel provides LibTorch.
set -euo pipefail
if [ -n "${LIBTORCH:-}" ]; then
    echo "setup: using LIBTORCH=$LIBTORCH"
    exit 0
fi
venv="${REPRISE_VENV:-$HOME/.cache/reprise/venv}"
want="2.11.0"
have="$("$venv/bin/python" -c 'import torch; print(torch.__version__.split("+")[0])' 2>/dev/null || true)"
# tensorboard: only the tests use it, to read back the event files runs write.
tb="2.21.0"
# The headers the NCCL backend of crates/dist is compiled against, beside those the wheel's CUDA
# packages ship: the CUDA 13.0 runtime headers include crt/ and nv/ (small header-only wheels).
cuda_headers() {
    local cu
    cu="$("$venv/bin/python" -c 'import torch; print(torch.version.cuda or "")' 2>/dev/null || true)"
    [ "$cu" = "13.0" ] || return 0
    local inc
    inc="$("$venv/bin/python" -c 'import os, torch; print(os.path.join(os.path.dirname(os.path.dirname(torch.__file__)), "nvidia", "cu13", "include"))')"
    if [ ! -e "$inc/crt/host_config.h" ] || [ ! -e "$inc/nv/target" ]; then
        echo "setup: adding the CUDA 13.0 crt and cccl headers to $venv (for the NCCL backend)"
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
            "nvidia-cuda-crt==13.0.88" "nvidia-cuda-cccl==13.0.85"
    fi
}
if [ "$have" = "$want" ] && "$venv/bin/python" -c 'import numpy' 2>/dev/null; then
    if ! "$venv/bin/python" -c "import tensorboard as t; assert t.__version__ == '$tb'" 2>/dev/null; then
        echo "setup: adding tensorboard==$tb to $venv (for the tests)"
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "tensorboard==$tb"
    fi
    cuda_headers
    echo "setup: torch $have in $venv"
    exit 0
fi
if [ -n "$have" ]; then
    echo "setup: $venv holds torch $have; installing torch==$want" >&2
fi
echo "setup: creating $venv with torch==$want (about 4.6 GB, a few minutes the first time)"
mkdir -p "$(dirname "$venv")"
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "torch==$want" numpy "tensorboard==$tb"
cuda_headers
"$venv/bin/python" -c 'import torch; print("setup: torch", torch.__version__)'
