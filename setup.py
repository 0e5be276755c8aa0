"""Installs the embedding service for users and on Dataflow workers (--setup_file)."""
import setuptools

setuptools.setup(
    name="image-embeddings",
    version="0.1.0",
    description="Streaming ResNet50 image embeddings on Apache Beam: GCS notifications "
                "to BigQuery and .npy vectors.",
    python_requires=">=3.11,<3.12",
    packages=setuptools.find_packages(include=["streaming", "streaming.*", "publisher",
                                               "publisher.*", "schemas", "schemas.*",
                                               "analysis", "analysis.*"]),
    package_data={"schemas": ["*.json", "sql/*.sql"]},
    install_requires=[
        "apache-beam[gcp]==2.77.0",
        "tensorflow==2.21.0",
        # >=10.3 fixes the known decoder CVEs (e.g. CVE-2024-28219, CVE-2023-50447).
        "pillow==12.3.0",
        "numpy==2.4.6",
        "google-cloud-pubsub==2.44.0",
        "google-cloud-storage==3.17.1",
        "google-cloud-bigquery==3.47.0",
        "tqdm==4.70.1",
        # Encodes a row's 2048 floats in 0.1 ms (json.dumps: 1.8 ms, 2% of the
        # end-to-end time per image on 2 cores).
        "orjson==3.13.0",
    ],
    extras_require={
        # embed-search / embed-map; scikit-learn only for `embed-map --method tsne`.
        "analysis": ["duckdb==1.5.5", "pyarrow==25.0.1", "matplotlib==3.11.2",
                     "scikit-learn==1.9.1"],
        "dev": ["pytest==9.2.0", "hypothesis==6.170.17", "duckdb==1.5.5", "pyarrow==25.0.1",
                "matplotlib==3.11.2"],
    },
    entry_points={
        "console_scripts": [
            "embed-stream=streaming.main:main",
            "embed-samples=streaming.samples:main",
            "embed-backfill=publisher.backfill:main",
            "embed-search=analysis.search:main",
            "embed-map=analysis.map:main",
        ],
    },
)
