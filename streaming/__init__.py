"""Streaming image-embedding pipeline: storage notifications or a local folder in,
ResNet50 embeddings out to BigQuery rows, .npy vectors and dead letters."""
