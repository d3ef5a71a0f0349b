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
if [ "$have" = "$want" ] && "$venv/bin/python" -c 'import numpy' 2>/dev/null; then
    if ! "$venv/bin/python" -c "import tensorboard as t; assert t.__version__ == '$tb'" 2>/dev/null; then
        echo "setup: adding tensorboard==$tb to $venv (for the tests)"
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "tensorboard==$tb"
    fi
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
"$venv/bin/python" -c 'import torch; print("setup: torch", torch.__version__)'
