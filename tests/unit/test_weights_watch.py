"""--weights_watch: the newest weights under a location replace the running model by one
swap, built beside it (never on a batch's path); a batch runs on one model; bad weights
keep the running one; workers sharing the cache build each graph once."""

import os
import threading
import time

import numpy as np
import pytest

from streaming import main
from streaming.config.cli import UsageError
from streaming.model import inference, onnx_runtime, resnet50, weights_watch
from streaming.model.spec import split_model_id


class FakeModel:
    """A model whose vectors are filled with its number, so rows show which model ran."""

    runtime_version = "fake-1"

    def __init__(self, n: int, during_call=None):
        self.n, self.fingerprint = n, f"{n:016x}"
        self.model_id = f"resnet50-avgpool@{self.fingerprint}"
        self._during_call = during_call

    def __call__(self, batch):
        if self._during_call:
            self._during_call()
        return np.full((len(batch), 2), float(self.n), np.float32)

    def warm_up(self):
        pass


BATCH = [np.zeros((224, 224, 3), np.uint8)] * 3


def _weights_file(folder, name: str, mtime: float) -> str:
    path = os.path.join(folder, name)
    with open(path, "wb") as f:
        f.write(b"weights")
    os.utime(path, (mtime, mtime))
    return path


def test_the_newest_weights_file_is_found_and_other_files_are_not(tmp_path):
    assert weights_watch.newest_weights(str(tmp_path)) is None
    _weights_file(tmp_path, "a.weights.h5", 1000)
    newest = _weights_file(tmp_path, "b.h5", 2000)
    _weights_file(tmp_path, "notes.txt", 3000)
    _weights_file(tmp_path, "c.keras.tmp", 3000)
    assert weights_watch.newest_weights(str(tmp_path)) == (newest, 2000, len(b"weights"))


def test_new_weights_are_built_beside_the_running_model_without_holding_a_batch(tmp_path):
    """While the next model builds, batches keep going through the current one: a
    build on a batch's path would hold this batch until the build ends."""
    building, release = threading.Event(), threading.Event()

    def build(path):
        building.set()
        release.wait(30)
        return FakeModel(2)

    watched = weights_watch.WatchedModel(FakeModel(1), str(tmp_path), 3600, build)
    try:
        _weights_file(tmp_path, "new.weights.h5", 1000)
        assert not watched.check_now()  # first seen: built once it is the same next time
        switch = threading.Thread(target=watched.check_now)
        switch.start()
        assert building.wait(10)
        during = []
        batch = threading.Thread(
            target=lambda: during.extend(inference.embed_batch(watched, BATCH))
        )
        batch.start()
        batch.join(10)
        assert not batch.is_alive(), "a batch waited for the new weights to build"
        assert {r.model_id for r in during} == {"resnet50-avgpool@0000000000000001+fake-1"}
        release.set()
        switch.join(10)
        after = inference.embed_batch(watched, BATCH)
        assert {r.model_id for r in after} == {"resnet50-avgpool@0000000000000002+fake-1"}
        assert all(r.inference[0] == 2.0 for r in after)
        assert watched.take_counts() == (1, 0) and watched.take_counts() == (0, 0)
        assert not watched.check_now()  # the same file again: no second build
    finally:
        release.set()
        watched.stop()


def test_a_file_still_changing_is_not_built_until_it_settles(tmp_path):
    built = []
    watched = weights_watch.WatchedModel(
        FakeModel(1), str(tmp_path), 3600, lambda p: built.append(p) or FakeModel(2)
    )
    try:
        _weights_file(tmp_path, "w.weights.h5", 1000)
        assert not watched.check_now()
        _weights_file(tmp_path, "w.weights.h5", 1001)  # still being written
        assert not watched.check_now() and built == []
        assert watched.check_now() and len(built) == 1
    finally:
        watched.stop()


def test_a_batch_runs_on_one_model_and_carries_its_id(tmp_path):
    """A switch landing while a batch runs: the batch's rows name the model that made
    their vectors, not the one that replaced it meanwhile."""
    watched = None
    old = FakeModel(1, during_call=lambda: setattr(watched, "_current", FakeModel(2)))
    watched = weights_watch.WatchedModel(old, str(tmp_path), 3600, lambda p: FakeModel(3))
    try:
        results = inference.embed_batch(watched, BATCH)
        assert {(r.model_id, float(r.inference[0])) for r in results} == {
            ("resnet50-avgpool@0000000000000001+fake-1", 1.0)
        }
    finally:
        watched.stop()


def test_weights_that_cannot_load_keep_the_running_model(tmp_path):
    def build(path):
        raise inference.WeightsUnavailableError(f"Cannot load ResNet50 weights from {path!r}")

    watched = weights_watch.WatchedModel(FakeModel(1), str(tmp_path), 3600, build)
    try:
        _weights_file(tmp_path, "broken.weights.h5", 1000)
        assert not watched.check_now() and not watched.check_now()
        assert watched.current().n == 1 and watched.take_counts() == (0, 1)
    finally:
        watched.stop()


@pytest.mark.slow
def test_the_watch_switches_by_itself_to_real_weights(tmp_path, capsys):
    """The watch thread, real weights files and the job's own builder: the vectors after
    the switch are those of the new weights' graph."""
    cache = str(tmp_path / "cache")
    watch = tmp_path / "watch"
    watch.mkdir()
    build = lambda spec: inference.build_embedding_model(spec, "onnx", cache)
    watched = weights_watch.WatchedModel(build("random:0"), str(watch), 0.2, build)
    try:
        new = resnet50.random_weights(1)
        resnet50.write_weights_h5(str(tmp_path / "v2.weights.h5"), new)
        os.replace(tmp_path / "v2.weights.h5", watch / "v2.weights.h5")  # appears whole
        deadline = time.monotonic() + 120
        while watched.current().fingerprint != resnet50.fingerprint(new):
            assert time.monotonic() < deadline, "no switch within 120 s"
            time.sleep(0.2)
        pixels = np.random.default_rng(0).integers(0, 255, (2, 224, 224, 3), np.uint8)
        import onnxruntime as ort

        direct = ort.InferenceSession(resnet50.to_onnx(new), providers=["CPUExecutionProvider"])
        [r0, r1] = inference.embed_batch(watched, list(pixels))
        np.testing.assert_allclose(
            np.stack([r0.inference, r1.inference]),
            direct.run(None, {"pixels": pixels})[0],
            rtol=1e-4,
            atol=1e-4,
        )
        assert split_model_id(r0.model_id)[1] == resnet50.fingerprint(new)
    finally:
        watched.stop()
    assert capsys.readouterr().err.count(" once; ") == 2  # random:0, then v2: once each


@pytest.mark.slow
def test_workers_sharing_a_cache_build_each_graph_once(tmp_path, monkeypatch):
    """The entry another process claimed is waited for and loaded, not built again."""
    cache, spec = str(tmp_path), "random:4"
    key = onnx_runtime.cache_key(onnx_runtime.weights_source_id(spec))
    assert onnx_runtime.claim_entry(cache, key)  # the other worker's claim
    assert not onnx_runtime.claim_entry(cache, key)  # ours: taken
    graph = resnet50.to_onnx(resnet50.random_weights(4))

    def other_worker_finishes():
        time.sleep(1.0)
        onnx_runtime.write_entry(cache, key, graph, {"fingerprint": "f" * 16, "weights": spec})

    def no_second_build(*args, **kwargs):
        raise AssertionError("built a graph another worker was building")

    monkeypatch.setattr(resnet50, "to_onnx", no_second_build)
    threading.Thread(target=other_worker_finishes).start()
    loaded = inference.build_embedding_model(spec, "onnx", cache)
    assert loaded.fingerprint == "f" * 16


def test_a_claim_whose_builder_died_is_taken_over(tmp_path):
    key = "k"
    assert onnx_runtime.claim_entry(str(tmp_path), key)
    marker = tmp_path / key / "building"
    os.utime(marker, (time.time() - 600, time.time() - 600))
    assert onnx_runtime.claim_entry(str(tmp_path), key, stale_after=300)


@pytest.mark.parametrize("lost", [["model.onnx"], ["meta.json"], ["model.onnx", "meta.json"]])
def test_an_entry_that_lost_a_file_is_built_again_not_trusted(tmp_path, lost):
    """A lifecycle rule or an operator deletes an entry's objects one by one, in any
    order: a worker that starts in between builds the entry again and runs."""
    cache, spec = str(tmp_path), "random:5"
    first = inference.build_embedding_model(spec, "onnx", cache)
    key = onnx_runtime.cache_key(onnx_runtime.weights_source_id(spec))
    assert onnx_runtime.read_entry(cache, key) is not None
    for name in lost:
        (tmp_path / key / name).unlink()
    assert onnx_runtime.read_entry(cache, key) is None
    assert not (tmp_path / key / "building").exists()  # given back once built
    again = inference.build_embedding_model(spec, "onnx", cache)
    assert again.fingerprint == first.fingerprint
    assert onnx_runtime.read_entry(cache, key) is not None


def test_an_entry_whose_model_is_not_its_metas_is_built_again(tmp_path):
    cache, key = str(tmp_path), "k"
    onnx_runtime.write_entry(cache, key, b"graph", {"fingerprint": "f" * 16})
    assert onnx_runtime.read_entry(cache, key)[0] == b"graph"
    (tmp_path / key / "model.onnx").write_bytes(b"grap")  # cut short, or another's
    assert onnx_runtime.read_entry(cache, key) is None


class _Claims:
    """gs:// claims as Cloud Storage keeps them: create-only, generations, delete at
    a generation."""

    def __init__(self):
        import datetime as dt

        self.objects, self.generation, self._dt = {}, 0, dt

    def bucket(self, bucket):
        return self

    def blob(self, name):
        return _ClaimBlob(self, name)

    def get_blob(self, name):
        return _ClaimBlob(self, name) if name in self.objects else None

    def age(self, name, seconds):
        generation, _, when = self.objects[name]
        self.objects[name] = (generation, _, when - self._dt.timedelta(seconds=seconds))


class _ClaimBlob:
    def __init__(self, store, name):
        self._store, self.name = store, name
        held = store.objects.get(name)
        self.generation, self.updated = (held[0], held[2]) if held else (None, None)

    def upload_from_string(self, data, content_type=None, if_generation_match=None, retry=None):
        from google.api_core import exceptions as gexc

        if if_generation_match == 0 and self.name in self._store.objects:
            raise gexc.PreconditionFailed("exists")
        self._store.generation += 1
        now = self._store._dt.datetime.now(self._store._dt.UTC)
        self._store.objects[self.name] = (self._store.generation, data, now)

    def delete(self, if_generation_match=None):
        from google.api_core import exceptions as gexc

        held = self._store.objects.get(self.name)
        if held is None:
            raise gexc.NotFound(self.name)
        if if_generation_match is not None and held[0] != if_generation_match:
            raise gexc.PreconditionFailed("generation")
        del self._store.objects[self.name]


def test_a_gcs_claim_whose_builder_died_goes_stale_and_one_worker_takes_it_over(monkeypatch):
    from streaming.support import clients

    store = _Claims()
    monkeypatch.setattr(clients, "worker_storage_client", lambda *a, **k: store)
    cache = "gs://dataflow/image-embeddings/onnx"
    assert onnx_runtime.claim_entry(cache, "k", stale_after=300)
    assert not onnx_runtime.claim_entry(cache, "k", stale_after=300)  # being built
    store.age("image-embeddings/onnx/k/building", 600)  # its builder died
    takers = [onnx_runtime.claim_entry(cache, "k", stale_after=300) for _ in range(3)]
    assert takers == [True, False, False]  # the fresh claim is the taker's


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--weights_watch", "/no/such/folder"], "--weights_watch /no/such/folder: not a folder"),
        (["--weights_watch", "gs://b/w/"], "--weights_watch: not a Cloud Storage bucket name"),
        (["--weights_watch_interval", "0"], "--weights_watch_interval must be positive, not 0.0"),
        (
            ["--weights_watch", "/models", "--runner", "DataflowRunner"],
            "--weights_watch /models: Dataflow workers cannot see a local folder",
        ),
    ],
)
def test_a_wrong_watch_is_one_line_naming_it(tmp_path, argv, message):
    with pytest.raises(UsageError, match=message):
        main.make_options(
            ["--input_dir", str(tmp_path), "--output_dir", str(tmp_path / "o")] + argv
        )


def test_a_failed_build_gives_its_claim_back(tmp_path, monkeypatch):
    """Weights that fail to build must not leave a claim that makes the next process
    (a restarted job, another worker) wait for a graph nobody builds."""
    cache, spec = str(tmp_path), "random:9"
    key = onnx_runtime.cache_key(onnx_runtime.weights_source_id(spec))

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(resnet50, "to_onnx", broken)
    with pytest.raises(RuntimeError, match="out of memory"):
        inference.build_embedding_model(spec, "onnx", cache)
    assert not (tmp_path / key / "building").exists()
    assert onnx_runtime.claim_entry(cache, key)
