"""Installs the `pipeline` and `transforms` packages with pinned dependencies.

The same file is Dataflow's `--setup_file`: workers install this package from it.
"""

import os

from setuptools import find_packages, setup

# The worker image for GPUs installs TensorFlow with CUDA itself and sets this to
# "tensorflow"; everywhere else the CPU wheel is enough (and a tenth of the size).
TENSORFLOW = os.environ.get("BEAM_GRADIENTS_TENSORFLOW", "tensorflow-cpu")
TENSORFLOW_VERSION = "2.21.0"
DASK = ["apache-beam[dask]==2.77.0", "dask==2026.8.0", "distributed==2026.8.0"]

setup(
    name="beam-gradients",
    version="0.1.0",
    description="Per-example gradients of Keras models over Parquet datasets of any size, on Apache Beam.",
    packages=find_packages(include=["pipeline", "pipeline.*", "transforms", "transforms.*"]),
    python_requires=">=3.11",
    install_requires=[
        f"{TENSORFLOW}=={TENSORFLOW_VERSION}",
        "keras==3.15.1",
        "apache-beam[gcp]==2.77.0",
        "pyarrow==25.0.1",
        "gcsfs==2026.10.1",
        "fsspec==2026.9.0",
        "numpy==2.4.6",
        "pyyaml==6.0.3",
        "matplotlib==3.11.2",  # the report's figures (`beam-gradients report`, and --demo's report)
    ],
    extras_require={
        # Beam's Dask runner and a Dask cluster's scheduler and workers (`dask scheduler`, `dask worker`).
        "dask": DASK,
        "tests": [
            *DASK,  # tests/test_dask.py runs the job on a real Dask cluster
            "pytest==9.0.3",
            "pytest-timeout==2.4.0",
            "gcp-storage-emulator==2026.7.19",
            # tests/test_airflow_dag.py runs dags/gradients_dag.py in this same venv. The Beam
            # provider's operator refuses to construct without the Google provider installed.
            "apache-airflow==3.3.2",
            "apache-airflow-providers-apache-beam==6.3.1",
            "apache-airflow-providers-google==22.8.0",
        ],
    },
    entry_points={"console_scripts": ["beam-gradients=pipeline.cli:main"]},
)
