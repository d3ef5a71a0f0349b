# Sourced by the justfile's recipes: makes LibTorch visible to cargo and to the binaries it builds.
# A user with libtorch elsewhere sets LIBTORCH; otherwise the venv made by `just setup` provides it.
REPRISE_VENV="${REPRISE_VENV:-$HOME/.cache/reprise/venv}"
export REPRISE_VENV
if [ -n "${LIBTORCH:-}" ]; then
    export LD_LIBRARY_PATH="$LIBTORCH/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
else
    if [ ! -x "$REPRISE_VENV/bin/python" ]; then
        echo "error: no venv at $REPRISE_VENV; run 'just setup' (or set LIBTORCH to a libtorch folder)" >&2
        return 1 2>/dev/null || exit 1
    fi
    # shellcheck disable=SC1091
    . "$REPRISE_VENV/bin/activate"
    export LIBTORCH_USE_PYTORCH=1
    torch_lib="$(python -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"
    export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
