"""pipeline/startup.py: Keras's import leaves pyplot unimported, and pyplot still works when used."""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROBE = """
import gc, sys
from pipeline import startup
startup.quick_start()
frozen = gc.get_freeze_count()
import keras  # imports matplotlib.pyplot for its plotting helpers
print("deferred", "matplotlib.figure" not in sys.modules, frozen > 0)
from keras.src.visualization import plot_image_gallery
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
figure = plt.figure()
print("real", type(figure).__module__, plot_image_gallery.plt.subplots is plt.subplots)
print("module", type(sys.modules["matplotlib.pyplot"]).__name__, sys.modules["matplotlib.pyplot"].figure is plt.figure)
"""


def test_keras_import_defers_pyplot_until_used():
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "deferred True True" in lines
    # the first use imported the real pyplot: Keras's reference and a later import both reach it
    assert "real matplotlib.figure True" in lines
    assert "module module True" in lines
