# syntax=docker/dockerfile:1
# The job's one image. Dataflow workers run it (--sdk_container_image) and the Flex Template
# launcher runs it (gcloud dataflow flex-template build --image), so a job is submitted with
# exactly the packages it runs with, and no worker installs anything at start-up.
# docker-compose.yml runs it locally against the emulators. docs/dataflow.md builds it:
#
#   docker build -t IMAGE .                                   # CPU workers
#   docker build --build-arg EXTRAS=gpu -t IMAGE-gpu .        # GPU workers (CUDA wheels)
#   docker build --build-arg WEIGHTS=models/resnet50_notop.weights.h5 -t IMAGE .
#       # bakes that file (a path in the build context) and its ONNX conversion into the
#       # image; run the job with --weights /opt/image-embeddings/weights/resnet50_notop.weights.h5

# Only for its launcher binary; the Flex Template base images are listed at
# https://cloud.google.com/dataflow/docs/reference/flex-templates-base-images
ARG LAUNCHER_IMAGE=gcr.io/dataflow-templates-base/python311-template-launcher-base:latest
FROM ${LAUNCHER_IMAGE} AS launcher

# The Beam release pinned in setup.py and requirements.lock (tests/checks/test_container.py
# checks that they agree): the worker harness in the image and the SDK must match.
FROM apache/beam_python3.11_sdk:2.77.0

COPY --from=launcher /opt/google/dataflow/python_template_launcher \
     /opt/google/dataflow/python_template_launcher

WORKDIR /template
COPY requirements.lock setup.py ./
COPY streaming streaming
COPY publisher publisher
COPY schemas schemas
COPY analysis analysis
COPY flex_template flex_template

# The exact set CI installs (requirements.lock); EXTRAS=gpu adds tensorflow[and-cuda].
ARG EXTRAS=""
RUN pip install --no-cache-dir -c requirements.lock ".${EXTRAS:+[$EXTRAS]}" && pip check

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
