"""2-D projections of embeddings for maps.

Rows are L2-normalised first, so that distances on the map follow the cosine distance
the search uses. PCA (numpy SVD) is the default: deterministic, fast, linear, and its
axes keep their meaning from one run to the next. t-SNE (scikit-learn, optional:
`pip install scikit-learn`) shows local neighbourhoods better but distorts global
distances and costs O(n^2) memory up to a few thousand points.
"""

from __future__ import annotations

import numpy as np

METHODS = ("pca", "tsne")


def normalise(embeddings: np.ndarray) -> np.ndarray:
    x = np.asarray(embeddings, np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return x / norms


def pca(embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, 2) coordinates and the fraction of variance of each of the two axes."""
    x = normalise(embeddings)
    n = x.shape[0]
    if n < 2:
        return np.zeros((n, 2)), np.zeros(2)
    x = x - x.mean(axis=0)
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    coords = u[:, :2] * s[:2]
    if coords.shape[1] < 2:
        coords = np.pad(coords, ((0, 0), (0, 2 - coords.shape[1])))
    # a deterministic sign: the largest-magnitude coordinate of each axis is positive
    for j in range(2):
        col = coords[:, j]
        if col.size and col[np.argmax(np.abs(col))] < 0:
            coords[:, j] = -col
    total = float((s**2).sum())
    explained = (s[:2] ** 2) / total if total > 0 else np.zeros(min(2, len(s)))
    return coords, np.pad(explained, (0, 2 - len(explained)))


def tsne(
    embeddings: np.ndarray, seed: int = 0, perplexity: float | None = None, max_iter: int = 1000
) -> np.ndarray:
    try:
        from sklearn.manifold import TSNE
    except ImportError:
        raise RuntimeError(
            "--method tsne needs scikit-learn (pip install "
            "'image-embeddings[analysis]' or scikit-learn); "
            "--method pca needs nothing more"
        ) from None
    x = normalise(embeddings)
    n = x.shape[0]
    if n < 5:
        return pca(embeddings)[0]
    perplexity = perplexity or max(2.0, min(30.0, (n - 1) / 3.0))
    model = TSNE(
        n_components=2,
        perplexity=perplexity,
        metric="cosine",
        init="pca",
        random_state=seed,
        max_iter=max_iter,
    )
    if n >= 1000:
        return model.fit_transform(x)
    # small inputs: OpenMP threads (next to TensorFlow's) cost more than they save
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        return model.fit_transform(x)


def project(embeddings: np.ndarray, method: str = "pca") -> tuple[np.ndarray, str]:
    """(n, 2) coordinates and a short description of the projection."""
    if method == "pca":
        coords, explained = pca(embeddings)
        return coords, (
            f"PCA of L2-normalised embeddings (axes explain "
            f"{explained[0]:.0%} and {explained[1]:.0%} of the variance)"
        )
    if method == "tsne":
        return tsne(embeddings), "t-SNE (cosine) of the embeddings"
    raise ValueError(f"method must be one of {METHODS}, not {method!r}")
