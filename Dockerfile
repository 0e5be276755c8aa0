# syntax=docker/dockerfile:1
# The job's one image. Dataflow workers run it (--sdk_container_image) and the Flex Template
# launcher runs it (gcloud dataflow flex-template build --image), so a job is submitted with
# exactly the packages it runs with, and no worker installs anything at start-up.
# docker-compose.yml runs it locally against the emulators. docs/dataflow.md builds it:
#
#   tools/pin_images.sh                                       # once: pin the bases (below)
#   docker build -t IMAGE .                                   # CPU workers
#   docker build --build-arg EXTRAS=gpu -t IMAGE-gpu .        # GPU workers (CUDA wheels)
#   docker build --build-arg WEIGHTS=models/resnet50_notop.weights.h5 -t IMAGE .
#       # bakes that file (a path in the build context) and its ONNX conversion into the
#       # image; run the job with --weights /opt/image-embeddings/weights/resnet50_notop.weights.h5
#
# What it holds: Debian's slim CPython 3.11 (the lock's interpreter); Beam's worker boot
# program, /opt/apache/beam, copied from Beam's SDK image of the locked apache-beam release
# (Dataflow's documented "custom base image"; none of that image's Python packages come
# along); the Flex Template launcher binary; and exactly requirements.lock
# (+ requirements-gpu.lock with EXTRAS=gpu) and this package. The build fails unless
# `pip freeze` is the lock (tools/lock_check.py, which CI runs on its virtualenv too).
#
# The base images are named here once each, pinned by digest (name:tag@sha256:...), and
# the build stops at its first step while one is not: tools/pin_images.sh looks up the
# digest each tag names now and writes it below. Run it after changing a tag, or to take
# a rebuilt base (security fixes), and commit the result.

# The lock's interpreter, CPython 3.11 (tools/lock.sh), on Debian 12 (bookworm) slim.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# Only for /opt/apache/beam. The Beam release pinned in setup.py and requirements.lock
# (tests/checks/test_container.py checks that they agree): the worker harness in the image
# and the SDK must match.
ARG BEAM_IMAGE=apache/beam_python3.11_sdk:2.77.0
# Only for its launcher binary; the Flex Template base images are listed at
# https://cloud.google.com/dataflow/docs/reference/flex-templates-base-images
ARG LAUNCHER_IMAGE=gcr.io/dataflow-templates-base/python311-template-launcher-base:latest

FROM ${BEAM_IMAGE} AS beam
FROM ${LAUNCHER_IMAGE} AS launcher
FROM ${PYTHON_IMAGE}

ARG PYTHON_IMAGE BEAM_IMAGE LAUNCHER_IMAGE
RUN unpinned=""; \
    for image in "$PYTHON_IMAGE" "$BEAM_IMAGE" "$LAUNCHER_IMAGE"; do \
      echo "$image" | grep -Eq '^[^@ ]+:[^@/: ]+@sha256:[0-9a-f]{64}$' || \
        unpinned="$unpinned $image"; \
    done; \
    if [ -n "$unpinned" ]; then \
      echo "Dockerfile: base images not pinned by digest (run tools/pin_images.sh):$unpinned" >&2; \
      exit 1; \
    fi

# Beam's worker boot (the entrypoint below). It runs `python` from PATH (/usr/local/bin
# here, as in Beam's image), makes a venv with --system-site-packages per worker (the
# python image has venv and ensurepip) and asks pip whether apache-beam is installed.
COPY --from=beam /opt/apache/beam /opt/apache/beam
COPY --from=launcher /opt/google/dataflow/python_template_launcher \
     /opt/google/dataflow/python_template_launcher

WORKDIR /template

# Exactly the lock, no resolver: the set CI installs too. EXTRAS=gpu adds
# requirements-gpu.lock (tensorflow[and-cuda]'s CUDA wheels). Before the sources, so a
# change to the code reuses this layer.
COPY requirements.lock requirements-gpu.lock ./
ARG EXTRAS=""
RUN pip install --no-cache-dir --no-deps -r requirements.lock ${EXTRAS:+-r requirements-$EXTRAS.lock}

COPY setup.py pyproject.toml ./
COPY tools/lock_check.py tools/lock_check.py
COPY streaming streaming
COPY publisher publisher
COPY schemas schemas
COPY analysis analysis
COPY flex_template flex_template

# This package without its dependencies (they are the lock), built with the lock's
# setuptools; then the set must be consistent (pip check) and be the lock, no more.
RUN pip install --no-cache-dir --no-deps --no-build-isolation . && \
    rm -rf build image_embeddings.egg-info && \
    pip check && \
    python tools/lock_check.py requirements.lock ${EXTRAS:+requirements-$EXTRAS.lock}

# The default --model_cache_dir (converted ONNX models) is under XDG_CACHE_HOME. Baked
# weights get their conversion here too, so workers load it without TensorFlow.
ENV XDG_CACHE_HOME=/opt/image-embeddings/cache
ARG WEIGHTS=""
RUN --mount=type=bind,target=/context \
    if [ -n "$WEIGHTS" ]; then \
      install -D -m 0444 "/context/$WEIGHTS" "/opt/image-embeddings/weights/$(basename "$WEIGHTS")" && \
      python -c "import sys; from streaming.model import inference; inference.load_embedding_model(sys.argv[1], 'onnx')" \
        "/opt/image-embeddings/weights/$(basename "$WEIGHTS")"; \
    fi

# GPU workers: TensorFlow takes GPU memory as it needs it instead of all of it at start-up
# (the model handler also turns memory growth on).
ENV TF_FORCE_GPU_ALLOW_GROWTH=true

# The flags every Dataflow job starts with (one SDK process per VM, thread counts, and on
# GPU workers TensorFlow with batches of 64) are in streaming/main.py (WORKER_DEFAULTS),
# not in this image's environment: a launch from a checkout and a Flex Template launch
# from this image are the same job.

# The launcher imports this package from the image; the workers already have it, so no
# FLEX_TEMPLATE_PYTHON_REQUIREMENTS_FILE / _SETUP_FILE (they would reinstall at launch).
ENV FLEX_TEMPLATE_PYTHON_PY_FILE=/template/flex_template/main.py

# Beam's worker boot: the image is an SDK container first.
ENTRYPOINT ["/opt/apache/beam/boot"]
