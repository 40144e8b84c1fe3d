#!/usr/bin/env bash
# The peer library's own venv for bench/methods.py: xplique 2.0.2 pins TensorFlow <= 2.20, older than ours,
# so it gets a venv of its own (bench/.xplique-venv, ignored by git). It runs the Keras 3 models our venv saves.
#
#     bash bench/xplique_venv.sh            # creates or completes it; safe to rerun
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${XPLIQUE_VENV:-$here/.xplique-venv}"
python="${PYTHON:-python3}"
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/pip" install -q --disable-pip-version-check)
# TensorFlow 2.20 for the CPU (xplique asks for tensorflow[and-cuda], which would pull CUDA wheels we do not use),
# Keras 3 as in our venv, and xplique's other requirements at versions inside its pins.
"${pip[@]}" "tensorflow-cpu==2.20.0" "tf-keras==2.20.1" "keras==3.15.1" "tensorflow-probability==0.25.0" \
    "deprecated" "einops" "matplotlib" "opencv-python-headless" "scikit-image==0.25.2" "scikit-learn==1.7.2" \
    "scipy==1.15.3" "pyarrow"
# Its own requirements are met above; --no-deps keeps pip from swapping in tensorflow[and-cuda].
"${pip[@]}" --no-deps "xplique==2.0.2"
"$venv/bin/python" -c "import xplique, tensorflow as tf, keras; print('xplique', xplique.__version__, 'tf', tf.__version__, 'keras', keras.__version__)"
