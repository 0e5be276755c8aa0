"""New weights while the streaming job runs (--weights_watch on a gs:// prefix): uploads
before, during and after the switch each get exactly one row, with the fingerprint of
the weights that embedded it; the new weights' graph is built once, the switch logged
once, and the rows after it hold the new weights' vectors."""
import os
import time

import numpy as np
import pytest

from streaming.model import resnet50
from streaming.stages.load import decode_image
from tests import fixtures
from tests.integration.conftest import start_job, wait_until

OLD, NEW = resnet50.random_weights(0), resnet50.random_weights(1)


@pytest.fixture(scope="module")
def switching(cloud, tmp_path_factory):
    rid = cloud.run_id
    images = cloud.storage.create_bucket(f"switch-{rid}")
    models = cloud.storage.create_bucket(f"switch-models-{rid}")
    vectors = cloud.storage.create_bucket(f"switch-vec-{rid}")
    dataset = f"switch_{rid}"
    cloud.bq.create_dataset(dataset)
    sub = cloud.subscription("switch")
    cloud.subscriber.create_subscription(name=sub, topic=cloud.notify_topic,
                                         ack_deadline_seconds=60)
    work = tmp_path_factory.mktemp("switch")
    log = str(work / "job.log")
    job = start_job([
        "--input_subscription", sub, "--output_table", f"{cloud.project}:{dataset}.embeddings",
        "--output_gcs", f"gs://{vectors.name}/", "--buckets", images.name,
        # Only notifications: a start-up catch-up racing the first uploads would add a
        # second row for them (the current view's business, not this test's).
        "--catch_up", "never",
        "--weights", "random:0", "--weights_watch", f"gs://{models.name}/weights/",
        "--weights_watch_interval", "1", "--model_cache_dir", str(work / "model-cache"),
        "--local_endpoints", "--max_batch_duration_secs", "1", "--progress_interval", "1"],
        log)
    uploaded: dict[str, bytes] = {}

    def upload(name: str, seed: int) -> None:
        data = fixtures.jpeg(320, 240, seed=seed)
        images.blob(name).upload_from_string(data, content_type="image/jpeg")
        uploaded[name] = data

    def rows() -> list[dict]:
        from google.api_core.exceptions import NotFound
        try:
            return [dict(r) for r in cloud.bq.query(
                f"SELECT name, model_fingerprint, embedding, source, processing_time FROM "
                f"`{cloud.project}.{dataset}.embeddings` WHERE bucket = '{images.name}'"
            ).result()]
        except NotFound:
            return []

    def rows_for(names) -> list[dict]:
        return wait_until(lambda: (lambda r: r if {x["name"] for x in r} >= set(names)
                                   else None)(rows()),
                          timeout=300, what=f"rows for {len(names)} uploads", job=job)

    def new_weights() -> None:
        path = str(work / "v2.weights.h5")
        resnet50.write_weights_h5(path, NEW)
        models.blob("weights/v2.weights.h5").upload_from_filename(path)

    yield dict(job=job, upload=upload, rows=rows, rows_for=rows_for, uploaded=uploaded,
               new_weights=new_weights, models=models)
    job.stop()


def _direct(weights, images: list[bytes]) -> np.ndarray:
    import onnxruntime as ort
    session = ort.InferenceSession(resnet50.to_onnx(weights), providers=["CPUExecutionProvider"])
    return session.run(None, {"pixels": np.stack([decode_image(b).pixels for b in images])})[0]


def _cosines(a, b):
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_uploads_before_during_and_after_a_switch(switching):
    s = switching
    job = s["job"]
    before = [f"before/{i}.jpg" for i in range(3)]
    for i, name in enumerate(before):
        s["upload"](name, 10 + i)
    s["rows_for"](before)
    s["new_weights"]()
    during = [f"during/{i}.jpg" for i in range(6)]
    for i, name in enumerate(during):
        s["upload"](name, 20 + i)
        time.sleep(0.5)
    old_fp, new_fp = resnet50.fingerprint(OLD), resnet50.fingerprint(NEW)
    switched = f"Switched weights: {old_fp} -> {new_fp}"
    wait_until(lambda: switched in job.output(), timeout=300, what="the switch", job=job)
    after = [f"after/{i}.jpg" for i in range(3)]
    for i, name in enumerate(after):
        s["upload"](name, 30 + i)
    got = s["rows_for"](before + during + after)

    names = [r["name"] for r in got]
    assert sorted(names) == sorted(before + during + after), sorted(
        (r["name"], r["model_fingerprint"], r["source"], str(r["processing_time"])) for r in got)
    by_name = {r["name"]: r for r in got}
    assert {by_name[n]["model_fingerprint"] for n in before} == {old_fp}
    assert {by_name[n]["model_fingerprint"] for n in after} == {new_fp}
    assert {by_name[n]["model_fingerprint"] for n in during} <= {old_fp, new_fp}
    # Each row's vector is that of the weights it names, not only the label.
    for fp, weights in ((old_fp, OLD), (new_fp, NEW)):
        named = [n for n in names if by_name[n]["model_fingerprint"] == fp]
        vectors = np.array([by_name[n]["embedding"] for n in named], np.float32)
        want = _direct(weights, [s["uploaded"][n] for n in named])
        assert _cosines(vectors, want).min() >= 0.99999, fp

    output = job.output()
    assert output.count(switched) == 1
    assert output.count("Building the ONNX model for weights gs://") == 1
    assert job.poll() is None


def test_workers_sharing_a_gs_cache_claim_each_graph_once(cloud):
    """The create-only claim on Cloud Storage: one worker gets it, the others wait; a
    claim given back after a failed build can be taken again."""
    from streaming.model import onnx_runtime
    bucket = cloud.storage.create_bucket(f"switch-cache-{cloud.run_id}")
    cache, key = f"gs://{bucket.name}/onnx-cache/", "k1"
    assert onnx_runtime.claim_entry(cache, key)
    assert not onnx_runtime.claim_entry(cache, key)
    onnx_runtime.release_claim(cache, key)
    assert onnx_runtime.claim_entry(cache, key)
