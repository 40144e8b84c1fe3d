# Worker image for Dataflow and Flink: TensorFlow with CUDA, Beam's SDK harness, this package.
# The versions must match setup.py's pins (tests/test_dockerfile.py checks that they do).
#   docker build -t REGION-docker.pkg.dev/PROJECT/beam/beam-gradients:0.1.0 .
ARG PYTHON_VERSION=3.11
ARG BEAM_VERSION=2.77.0

# Beam's SDK harness (the boot program that starts the Python worker), from Beam's own image.
FROM apache/beam_python${PYTHON_VERSION}_sdk:${BEAM_VERSION} AS beam

FROM python:${PYTHON_VERSION}-slim
ARG TENSORFLOW_VERSION=2.21.0
ARG KERAS_VERSION=3.15.1
COPY --from=beam /opt/apache/beam /opt/apache/beam

# setup.py installs `tensorflow` (CUDA-capable) instead of `tensorflow-cpu` when this is set.
ENV BEAM_GRADIENTS_TENSORFLOW=tensorflow
WORKDIR /opt/beam-gradients
COPY setup.py README.md ./
COPY pipeline pipeline
COPY transforms transforms
# One resolve: TensorFlow with its CUDA libraries, and the package with its pins (apache-beam among them).
RUN pip install --no-cache-dir "tensorflow[and-cuda]==${TENSORFLOW_VERSION}" "keras==${KERAS_VERSION}" . \
    && cd / && python -c "import apache_beam, keras, tensorflow, pipeline.run"

# Dataflow and Flink start workers through Beam's boot; `--worker_pool` makes it an external worker pool.
ENTRYPOINT ["/opt/apache/beam/boot"]
