"""The beam-gradients job: options, graph assembly and the command line."""

import os

# Quiets TensorFlow's C++ warnings in the job's output; --debug turns Python
# logging up. Workers inherit this environment.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
