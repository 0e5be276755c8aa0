"""A worker's peak memory from its options: the rule behind the machine-type advice in
docs/performance.md, checked by tests/unit/test_memory_budget.py on the local
multi-process runner.

The peak is every SDK process's resident set at rest (Python, Beam, TensorFlow and one
ResNet50 each) plus every image that can be decoded at once at the largest allowed size.
In one SDK process each bundle thread (Beam's `--number_of_worker_harness_threads`) has
its own load DoFn with `--decode_threads` decoding; one decode holds the object's bytes
(at most `--max_bytes`) and its pixels (at most `--max_pixels`, up to
`DECODE_BYTES_PER_PIXEL` bytes each while Pillow decodes and converts them). The decode
window holds only 224x224 arrays.
"""

from __future__ import annotations

# Counted from the arrays `decode.to_rgb` holds at once: Pillow keeps RGB as 4 bytes a
# pixel; RGBA composited over white holds the RGBA decode (4), its alpha (1) and the RGB
# result (4); 16-bit grey about 10, 32-bit grey 14, 32-bit float grey 18.
DECODE_BYTES_PER_PIXEL = 20
WINDOW_BYTES_PER_IMAGE = 224 * 224 * 3


def decode_bytes(max_pixels: int, max_bytes: int) -> int:
    """The most one decode holds: the object's bytes and its pixels while converted."""
    return max_bytes + DECODE_BYTES_PER_PIXEL * max_pixels


def peak_bytes(
    *,
    processes: int,
    harness_threads: int,
    decode_threads: int,
    decode_window: int,
    max_pixels: int,
    max_bytes: int,
    base_mib: float,
) -> int:
    """A worker's peak resident bytes with the largest allowed images arriving at once.

    Args:
      processes: SDK processes on the worker (one per vCPU by default on Dataflow, one
        with --experiments=no_use_multiple_sdk_containers).
      harness_threads: bundles one SDK process runs at once.
      decode_threads, decode_window, max_pixels, max_bytes: the job's options.
      base_mib: one SDK process at rest, measured (docs/performance.md).
    """
    per_thread = (
        decode_threads * decode_bytes(max_pixels, max_bytes)
        + decode_window * WINDOW_BYTES_PER_IMAGE
    )
    return int(processes * (base_mib * 2**20 + harness_threads * per_thread))
