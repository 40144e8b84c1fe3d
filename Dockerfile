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
# The dependencies first, in a layer of their own, so an edit to the code does not reinstall TensorFlow.
# One resolve: TensorFlow with its CUDA libraries, and setup.py's other pins (apache-beam among them);
# with no code copied yet, `.` here is the package's dependencies and an empty shell of it.
COPY setup.py ./
RUN pip install --no-cache-dir "tensorflow[and-cuda]==${TENSORFLOW_VERSION}" "keras==${KERAS_VERSION}" .
COPY pipeline pipeline
COPY transforms transforms
RUN pip install --no-cache-dir --no-deps --force-reinstall . \
    && cd / && python -c "import apache_beam, keras, tensorflow, pipeline.run"

# Dataflow and Flink start workers through Beam's boot; `--worker_pool` makes it an external worker pool.
ENTRYPOINT ["/opt/apache/beam/boot"]
