"""The catch-up's pure core: merging a listing with what the tables hold."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streaming.sources import catch_up
from tests import fixtures


def res(name, generation):
    return {"name": name, "generation": str(generation), "bucket": "b"}


def row(name, generation, **state):
    """What the tables hold: by default an embedding row (embedded, finalized)."""
    state = state or {"embedded": True, "finalized": True}
    return catch_up.Known(name, generation, **state)


def dead(name, generation, attempts=1, final=False):
    return catch_up.Known(name, generation, dead_final=final, attempts=attempts)


def to_embed(listing, known, **kw):
    return [
        (f.resource["name"], int(f.resource["generation"]), f.attempt)
        for f in catch_up.compare(listing, known, "b", **kw)
        if f.action == catch_up.EMBED
    ]


def gone(listing, known, **kw):
    return [
        (f.resource["name"], int(f.resource["generation"]))
        for f in catch_up.compare(listing, known, "b", **kw)
        if f.action == catch_up.GONE
    ]


def test_generations_with_neither_row_nor_dead_letter_are_embedded():
    listing = [res("a.jpg", 1), res("b.jpg", 5), res("c.jpg", 2), res("d.jpg", 9)]
    known = [row("a.jpg", 1), row("b.jpg", 4), row("c.jpg", 1), row("c.jpg", 2), row("zz.jpg", 1)]
    assert to_embed(listing, known) == [("b.jpg", 5, 0), ("d.jpg", 9, 0)]


def test_every_listed_generation_has_one_finding_in_name_order():
    listing = [res("a.jpg", 1), res("b.jpg", 5), res("c.jpg", 2)]
    known = [row("a.jpg", 1), dead("c.jpg", 2, final=True)]
    findings = list(catch_up.compare(listing, known, "b"))
    assert [(f.resource["name"], f.action) for f in findings] == [
        ("a.jpg", catch_up.DONE),
        ("b.jpg", catch_up.EMBED),
        ("c.jpg", catch_up.DONE),
    ]


def test_current_rows_whose_generation_is_gone_get_a_tombstone():
    listing = [res("b.jpg", 5), res("m.jpg", 1)]
    known = [
        row("a.jpg", 1),  # deleted: gone
        row("b.jpg", 4),
        row("b.jpg", 5),  # replaced: 4 is gone, 5 is live
        row("k.jpg", 2),  # deleted, its tombstone written
        row("k.jpg", 2, deleted=True),
        row("m.jpg", 1),
        row("z.jpg", 3),
    ]  # z: deleted, after the last listed
    assert gone(listing, known) == [("a.jpg", 1), ("b.jpg", 4), ("z.jpg", 3)]
    assert to_embed(listing, known) == []


def test_dead_letters_only_are_not_gone_when_missing():
    """A generation with only dead letters has no current row to hide."""
    assert gone([], [dead("a.jpg", 1), dead("b.jpg", 2, final=True)]) == []


def test_retryable_dead_letters_are_embedded_again_up_to_the_limit():
    listing = [res("a.jpg", 1), res("b.jpg", 1), res("c.jpg", 1), res("d.jpg", 1)]
    known = [
        dead("a.jpg", 1, attempts=1),  # one try so far: again
        dead("b.jpg", 1, attempts=catch_up.failures.MAX_ATTEMPTS),  # used up
        dead("c.jpg", 1, final=True),  # final: left alone
        dead("d.jpg", 1, attempts=2),
        row("d.jpg", 1),
    ]  # a later try made its row
    assert to_embed(listing, known) == [("a.jpg", 1, 1)]
    assert to_embed(listing, known, retry_dead_letters=True) == [
        ("a.jpg", 1, 1),
        ("b.jpg", 1, 3),
        ("c.jpg", 1, 1),
    ]


def test_a_row_and_a_dead_letter_of_one_generation_merge():
    merged = row("a", 1).merged(dead("a", 1, attempts=2))
    assert merged.embedded and merged.attempts == 2


def test_out_of_order_inputs_fail_loudly_instead_of_missing_matches():
    with pytest.raises(ValueError, match="listing out of name order"):
        list(catch_up.compare([res("b", 1), res("a", 1)], [], "b"))
    with pytest.raises(ValueError, match="query out of name order"):
        list(catch_up.compare([res("c", 1)], [row("b", 1), row("a", 1)], "b"))


names = st.text(alphabet="ab/é.", min_size=1, max_size=4)


@given(st.dictionaries(names, st.integers(1, 3)), st.sets(st.tuples(names, st.integers(1, 3))))
def test_merge_equals_set_differences(live, known):
    listing = [res(n, g) for n, g in sorted(live.items())]
    rows = [row(n, g) for n, g in sorted(known)]
    assert [(n, g) for n, g, _ in to_embed(listing, rows)] == [
        (n, g) for n, g in sorted(live.items()) if (n, g) not in known
    ]
    assert gone(listing, rows) == [(n, g) for n, g in sorted(known) if live.get(n) != g]


def test_merge_reads_the_known_stream_lazily():
    """Bounded memory: the query's rows are pulled as the listing advances."""
    pulled = []

    def known():
        for i in range(1_000_000):
            pulled.append(i)
            yield row(f"{i:07d}", 1)

    listing = (res(f"{i:07d}", 2) for i in range(0, 1_000_000, 100_000))
    findings = catch_up.compare(listing, known(), "b")
    first = next(findings)
    assert first.action == catch_up.GONE and first.resource["name"] == "0000000"
    assert len(pulled) <= 3


def test_scopes_cover_each_bucket_and_prefix():
    assert catch_up.scopes(["x", "y"], ["p/", "q/"]) == [
        catch_up.Scope("x", "p/"),
        catch_up.Scope("x", "q/"),
        catch_up.Scope("y", "p/"),
        catch_up.Scope("y", "q/"),
    ]
    assert catch_up.scopes(["x"], None) == [catch_up.Scope("x", "")]


def test_known_query_unions_rows_and_dead_letters_in_name_order():
    sql = catch_up.known_query(
        "my-project:ds.embeddings", "my-project:ds.dead_letters", fingerprint="abc", after="k"
    )
    assert "`my-project.ds.embeddings`" in sql and "`my-project.ds.dead_letters`" in sql
    assert "UNION ALL" in sql and sql.endswith("ORDER BY name, generation")
    assert "@fingerprint" in sql and sql.count("name > @after") == 2
    assert "GROUP BY name, generation" in sql and "retryable" in sql
    plain = catch_up.known_query("my-project:ds.embeddings")
    assert "UNION" not in plain and "@fingerprint" not in plain and "@after" not in plain


def test_a_catch_up_ref_is_what_the_notification_would_give():
    resource = {
        "bucket": "b",
        "name": "x/cat.jpg",
        "generation": "17",
        "size": "10",
        "contentType": "image/jpeg",
        "updated": "2026-01-01T00:00:00Z",
    }
    ref = catch_up.ref_of(resource, "catchup")
    assert (ref.bucket, ref.name, ref.generation, ref.size) == ("b", "x/cat.jpg", 17, 10)
    assert ref.content_type == "image/jpeg" and ref.source == "catchup"
    again = catch_up.finding_ref(catch_up.Finding(resource, catch_up.EMBED, 2), "catchup")
    assert again.attempt == 2 and again.event_type == "OBJECT_FINALIZE"
    deletion = catch_up.finding_ref(
        catch_up.Finding({"bucket": "b", "name": "x/cat.jpg", "generation": "17"}, catch_up.GONE),
        "catchup",
    )
    assert deletion.event_type == "OBJECT_DELETE" and deletion.generation == 17


def catch_up_opts(*extra):
    from streaming.main import make_options

    return make_options(
        [
            "--input_subscription",
            "projects/my-project/subscriptions/images",
            "--output_table",
            "my-project:ds.t",
            *extra,
        ]
    )


@pytest.mark.parametrize(
    "extra, runner, expected",
    [
        (["--buckets", "b"], None, True),  # local runner: messages acked when pulled
        (["--buckets", "b"], "DataflowRunner", False),  # Dataflow redelivers by itself
        (["--buckets", "b", "--catch_up", "always"], "DataflowRunner", True),
        (["--buckets", "b", "--catch_up", "never"], None, False),
        ([], None, False),  # nothing to list
    ],
)
def test_catch_up_runs_where_the_runner_acks_before_processing(extra, runner, expected):
    from streaming.pipeline import catch_up_enabled

    opts = catch_up_opts(*extra, *(["--runner", runner] if runner else []))
    assert catch_up_enabled(opts) is expected


def test_periodic_catch_up_is_refused_on_the_local_runner_in_one_line():
    from streaming.pipeline import catch_up_enabled

    with pytest.raises(ValueError, match="--catch_up_every_minutes runs on Dataflow"):
        catch_up_enabled(catch_up_opts("--buckets", "b", "--catch_up_every_minutes", "5"))


def dataflow_step_names(*extra) -> set[str]:
    """The step names of a Dataflow job's graph (a dry run) with the catch-up on."""
    import apache_beam as beam

    from streaming.pipeline import build_pipeline

    opts = catch_up_opts(
        "--buckets",
        "my-images",
        "--catch_up",
        "always",
        *extra,
        *fixtures.DATAFLOW_DRY_RUN,
        "--weights",
        "random:0",
    )
    pipeline = beam.Pipeline(options=opts)
    build_pipeline(pipeline, opts)
    transforms = pipeline.run().job.proto_pipeline.components.transforms.values()
    return {t.unique_name for t in transforms}


def test_a_dataflow_job_can_catch_up_at_start_and_periodically():
    names = dataflow_step_names("--include_prefix", "uploads/", "--catch_up_every_minutes", "60")
    assert {"Catch up/Every interval", "Catch up/Find unprocessed", "Notified and missed"} <= names
