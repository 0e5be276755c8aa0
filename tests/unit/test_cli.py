"""embed-stream as a user runs it: options, summary, and --watch in a subprocess."""

import glob
import json
import os
import signal

import apache_beam as beam
import pytest
from apache_beam.io.gcp.pubsub import PubsubMessage
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from streaming import main
from streaming.sources.notifications import ParseNotifications
from tests import fixtures
from tools.processes import Child, python_module, wait_until


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--output_dir", "o"], "exactly one of"),
        (
            [
                "--input_dir",
                "i",
                "--input_topic",
                "projects/my-project/topics/topic",
                "--output_dir",
                "o",
            ],
            "exactly one of",
        ),
        (["--input_dir", "i"], "at least one of"),
        (
            [
                "--input_subscription",
                "projects/my-project/subscriptions/subs",
                "--watch",
                "--output_dir",
                "o",
            ],
            "--watch needs --input_dir",
        ),
        (
            [
                "--input_dir",
                "i",
                "--output_dir",
                "o",
                "--min_batch_size",
                "8",
                "--max_batch_size",
                "4",
            ],
            "min_batch_size",
        ),
    ],
)
def test_invalid_option_combinations_are_refused(argv, message):
    with pytest.raises(ValueError, match=message):
        main.make_options(argv)


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--input_dir", "i"], 8),  # a folder: no BatchElements ramp from 1
        (["--input_dir", "i", "--max_batch_size", "4"], 4),
        (["--input_subscription", "projects/my-project/subscriptions/subs", "--streaming"], 1),
        (["--input_dir", "i", "--min_batch_size", "2"], 2),
    ],
)
def test_minimum_batch_size_depends_on_the_source(argv, expected):
    from streaming.pipeline import min_batch_size

    assert min_batch_size(main.make_options(argv + ["--output_dir", "o"])) == expected


@pytest.mark.parametrize(
    "argv, expected",
    [
        # A folder runs full batches of 8 from the start, not a ramp from 1.
        (["--input_dir", "i"], {"min_batch_size": 8, "max_batch_size": 8}),
        # Streaming with a batch duration (Dataflow's default): refs are batched across
        # bundles upstream (streaming/stages/batching.py), so RunInference batches within
        # bundles and never holds pixels in state.
        (
            [
                "--input_subscription",
                "projects/my-project/subscriptions/subs",
                "--max_batch_duration_secs",
                "1",
            ],
            {"min_batch_size": 8, "max_batch_size": 8, "max_batch_duration_secs": None},
        ),
        # The local runner's default: within bundles only, from 1.
        (
            ["--input_subscription", "projects/my-project/subscriptions/subs"],
            {"min_batch_size": 1, "max_batch_size": 8, "max_batch_duration_secs": None},
        ),
        (
            [
                "--input_subscription",
                "projects/my-project/subscriptions/subs",
                "--max_batch_duration_secs",
                "0",
            ],
            {"min_batch_size": 1, "max_batch_size": 8, "max_batch_duration_secs": None},
        ),
        (
            ["--input_dir", "i", "--max_batch_size", "64"],
            {"min_batch_size": 8, "max_batch_size": 64},
        ),
    ],
)
def test_runinference_batches_as_the_options_say(argv, expected):
    from streaming.pipeline import model_handler

    kwargs = model_handler(main.make_options(argv + ["--output_dir", "o"])).batch_elements_kwargs()
    assert {k: kwargs.get(k) for k in expected} == expected


def test_summary_lists_dead_letters_by_reason_and_rate():
    text = main.summary(
        {
            "images_embedded": 20,
            "dead_letter.not_an_image": 2,
            "dead_letter.empty_object": 1,
            "skipped.type": 4,
        },
        10.0,
    )
    assert "images embedded: 20" in text and "dead letters: 3" in text
    assert "not_an_image: 2" in text and "empty_object: 1" in text
    assert "2.00 images/s" in text and "type=4" in text


def test_parse_stage_in_a_pipeline_splits_refs_and_dead_letters():
    good = PubsubMessage(
        b"",
        {
            "eventType": "OBJECT_FINALIZE",
            "bucketId": "b",
            "objectId": "x.jpg",
            "objectGeneration": "5",
            "payloadFormat": "NONE",
        },
    )
    junk = PubsubMessage(b"hello", {"some": "thing"})
    with TestPipeline(runner="BundleBasedDirectRunner") as p:
        out = p | beam.Create([good, junk]) | ParseNotifications()
        assert_that(
            out.refs | beam.Map(lambda r: (r.bucket, r.name, r.generation)),
            equal_to([("b", "x.jpg", 5)]),
            label="refs",
        )
        assert_that(
            out.dead_letters | beam.Map(lambda d: (d.stage, d.reason)),
            equal_to([("parse", "not_a_notification")]),
            label="dead",
        )


@pytest.mark.slow
def test_watch_embeds_files_that_appear_later(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    (src / "first.jpg").write_bytes(fixtures.jpeg(seed=1))

    def rows(n):
        got = sorted(os.path.basename(p) for p in glob.glob(str(out / "rows" / "*" / "*")))
        return got if len(got) >= n else None

    def dead_letters():
        return [json.load(open(p)) for p in glob.glob(str(out / "dead_letters" / "*.json"))]

    with Child(
        python_module(
            "streaming.main",
            "--input_dir",
            str(src),
            "--output_dir",
            str(out),
            "--weights",
            "random:0",
            "--watch",
            "--watch_interval",
            "1",
            "--progress_interval",
            "1",
        )
    ) as job:
        wait_until(lambda: rows(1), timeout=180, what="the first row", job=job)
        # Written aside and renamed in, as a careful copier does: a file listed while
        # half-written is `superseded` at read (a race on a loaded machine), which
        # test_load_stage checks.
        for name, data in (("later.png", fixtures.png(seed=2)), ("later-bad.jpg", b"not an image")):
            (tmp_path / name).write_bytes(data)
            os.replace(tmp_path / name, src / name)
        got = wait_until(lambda: rows(2), timeout=60, what="the later file's row", job=job)
        assert [g.split("@")[0] for g in got] == ["first.jpg", "later.png"]
        dead = wait_until(dead_letters, timeout=30, what="the dead letter", job=job)
        assert [(d["name"], d["reason"]) for d in dead] == [("later-bad.jpg", "not_an_image")]
        # The periodic line shows the same numbers while the job keeps watching.
        line = "INFO embed-stream: embedded 2, dead letters 1 (not_an_image=1)"
        wait_until(lambda: line in job.output(), timeout=30, what="the periodic line", job=job)
        # SIGTERM: a clean stop with the summary so far, exit 0.
        assert job.stop() == 0, job.log_tail()
        text = job.output()
    assert "Traceback" not in text
    # Start-up noise of TensorFlow (C++) and Beam stays out of normal output.
    for noise in ("cuda", "cuInit", "absl::InitializeLog", "Resource module is not available"):
        assert noise not in text, text[-2000:]


@pytest.mark.slow
def test_ctrl_c_on_a_folder_run_prints_the_summary_so_far(tmp_path):
    """SIGINT mid-run: exit 130, the summary of what was done, no traceback."""
    src = tmp_path / "in"
    src.mkdir()
    for i in range(200):  # far more than embeds before the first progress line
        (src / f"{i:03d}.jpg").write_bytes(fixtures.jpeg(64, 48, seed=i))
    with Child(
        python_module(
            "streaming.main",
            "--input_dir",
            str(src),
            "--output_dir",
            str(tmp_path / "out"),
            "--weights",
            "random:0",
            "--progress_interval",
            "0.5",
        )
    ) as job:
        wait_until(
            lambda: "/200 files:" in job.output(),
            timeout=180,
            what="a progress line",
            job=job,
            interval=0.2,
        )
        job.send_signal(signal.SIGINT)
        assert job.wait(timeout=120) == 130, job.log_tail()
        output = job.output()
    assert "images embedded:" in output and "interrupted: stopped before the end" in output
    assert "Traceback" not in output and "KeyboardInterrupt" not in output
