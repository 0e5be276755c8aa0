"""Installs the embedding service for users and on Dataflow workers (--setup_file)."""

import setuptools

setuptools.setup(
    name="image-embeddings",
    version="0.1.0",
    description="Streaming ResNet50 image embeddings on Apache Beam: GCS notifications "
    "to BigQuery and .npy vectors.",
    python_requires=">=3.11,<3.12",
    packages=setuptools.find_packages(
        include=[
            "streaming",
            "streaming.*",
            "publisher",
            "publisher.*",
            "schemas",
            "schemas.*",
            "analysis",
            "analysis.*",
        ]
    ),
    package_data={"schemas": ["*.json", "sql/*.sql"]},
    # Compatible ranges: the package installs next to other code. The exact set that CI,
    # the worker image and the Flex Template launcher install is requirements.lock
    # (regenerate it with tools/lock.sh).
    install_requires=[
        # The worker image's tag (Dockerfile) must name the same Beam release.
        "apache-beam[gcp]>=2.77,<2.78",
        "tensorflow>=2.21,<2.22",
        "keras>=3.15,<4",
        # --runtime onnx (the default): ONNX Runtime runs ResNet50, whose graph is written
        # with onnx's helpers from the weights once per weights (streaming/model/resnet50.py).
        "onnxruntime>=1.32,<2",
        "onnx>=1.23,<2",
        # >=10.3 fixes the known decoder CVEs (e.g. CVE-2024-28219, CVE-2023-50447).
        "pillow>=10.3,<13",
        "numpy>=2.0,<3",
        "google-cloud-pubsub>=2.44,<3",
        "google-cloud-storage>=3.17,<4",
        "google-cloud-bigquery>=3.47,<4",
        "tqdm>=4.66,<5",
        # Encodes the rows' 2048 floats (faster than json.dumps).
        "orjson>=3.10,<4",
    ],
    extras_require={
        # embed-search / embed-map; scikit-learn only for `embed-map --method tsne`.
        "analysis": [
            "duckdb>=1.5,<1.6",
            "pyarrow>=21,<26",
            "matplotlib>=3.9,<4",
            "scikit-learn>=1.5,<2",
        ],
        "dev": [
            "pytest>=9.2,<10",
            "hypothesis>=6.170,<7",
            "duckdb>=1.5,<1.6",
            "pyarrow>=21,<26",
            "matplotlib>=3.9,<4",
            "scikit-learn>=1.5,<2",
            "sqlglot>=30.11,<31",
            # benchmarks/vs_script.py: process trees' memory and the machine's load.
            "psutil>=7,<8",
            # benchmarks/first_run.py: the Keras -> tf2onnx conversion, for comparison.
            "tf2onnx>=1.17,<1.18",
            # tests/unit/test_analysis_map.py opens embed-map's HTML page in headless
            # Chromium (Debian's chromium and chromium-driver packages).
            "selenium>=4.40,<5",
            # Lint and format ([tool.ruff] in pyproject.toml); CI runs both.
            "ruff>=0.17,<0.18",
        ],
        # GPU workers (Dockerfile --build-arg EXTRAS=gpu): TensorFlow with its CUDA wheels.
        "gpu": ["tensorflow[and-cuda]>=2.21,<2.22"],
    },
    entry_points={
        "console_scripts": [
            "embed-stream=streaming.main:main",
            "embed-backfill=publisher.backfill:main",
            "embed-search=analysis.search:main",
            "embed-map=analysis.map:main",
        ],
    },
)
