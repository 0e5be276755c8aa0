"""The catch-up's pure core: merging a listing with what the tables hold."""
import pytest
from hypothesis import given, strategies as st

from streaming import reconcile


def res(name, generation):
    return {"name": name, "generation": str(generation), "bucket": "b"}


def test_unprocessed_keeps_generations_with_neither_row_nor_dead_letter():
    listing = [res("a.jpg", 1), res("b.jpg", 5), res("c.jpg", 2), res("d.jpg", 9)]
    known = [("a.jpg", 1), ("b.jpg", 4), ("c.jpg", 1), ("c.jpg", 2), ("zz.jpg", 1)]
    assert [r["name"] for r in reconcile.unprocessed(listing, known)] == ["b.jpg", "d.jpg"]


def test_known_names_missing_from_the_listing_are_passed_over():
    listing = [res("m.jpg", 1)]
    known = [("a.jpg", 1), ("b.jpg", 1), ("m.jpg", 1)]
    assert list(reconcile.unprocessed(listing, known)) == []


def test_out_of_order_inputs_fail_loudly_instead_of_missing_matches():
    with pytest.raises(ValueError, match="listing out of name order"):
        list(reconcile.unprocessed([res("b", 1), res("a", 1)], []))
    with pytest.raises(ValueError, match="query out of name order"):
        list(reconcile.unprocessed([res("c", 1)], [("b", 1), ("a", 1)]))


names = st.text(alphabet="ab/é.", min_size=1, max_size=4)


@given(st.dictionaries(names, st.integers(1, 3)), st.sets(st.tuples(names, st.integers(1, 3))))
def test_merge_equals_a_set_difference(live, known):
    listing = [res(n, g) for n, g in sorted(live.items())]
    got = [(r["name"], int(r["generation"]))
           for r in reconcile.unprocessed(listing, sorted(known))]
    assert got == [(n, g) for n, g in sorted(live.items()) if (n, g) not in known]


def test_merge_reads_the_known_stream_lazily():
    """Bounded memory: the query's rows are pulled as the listing advances."""
    pulled = []

    def known():
        for i in range(1_000_000):
            pulled.append(i)
            yield (f"{i:07d}", 1)

    listing = (res(f"{i:07d}", 2) for i in range(0, 1_000_000, 100_000))
    first = next(reconcile.unprocessed(listing, known()))
    assert first["name"] == "0000000" and len(pulled) <= 2


def test_scopes_cover_each_bucket_and_prefix():
    assert reconcile.scopes(["x", "y"], ["p/", "q/"]) == [
        reconcile.Scope("x", "p/"), reconcile.Scope("x", "q/"),
        reconcile.Scope("y", "p/"), reconcile.Scope("y", "q/")]
    assert reconcile.scopes(["x"], None) == [reconcile.Scope("x", "")]


def test_known_query_unions_rows_and_dead_letters_in_name_order():
    sql = reconcile.known_query("my-project:ds.embeddings", "my-project:ds.dead_letters",
                                fingerprint="abc", after="k")
    assert "`my-project.ds.embeddings`" in sql and "`my-project.ds.dead_letters`" in sql
    assert "UNION ALL" in sql and sql.endswith("ORDER BY name, generation")
    assert "@fingerprint" in sql and sql.count("name > @after") == 2
    plain = reconcile.known_query("my-project:ds.embeddings")
    assert "UNION" not in plain and "@fingerprint" not in plain and "@after" not in plain


def test_a_catch_up_ref_is_what_the_notification_would_give():
    resource = {"bucket": "b", "name": "x/cat.jpg", "generation": "17", "size": "10",
                "contentType": "image/jpeg", "updated": "2026-01-01T00:00:00Z"}
    ref = reconcile.ref_of(resource, "catchup")
    assert (ref.bucket, ref.name, ref.generation, ref.size) == ("b", "x/cat.jpg", 17, 10)
    assert ref.content_type == "image/jpeg" and ref.source == "catchup"


def catch_up_opts(*extra):
    from streaming.main import make_options
    return make_options(["--input_subscription", "projects/my-project/subscriptions/images",
                         "--output_table", "my-project:ds.t", *extra])


@pytest.mark.parametrize("extra, runner, expected", [
    (["--buckets", "b"], None, True),  # local runner: messages acked when pulled
    (["--buckets", "b"], "DataflowRunner", False),  # Dataflow redelivers by itself
    (["--buckets", "b", "--catch_up", "always"], "DataflowRunner", True),
    (["--buckets", "b", "--catch_up", "never"], None, False),
    ([], None, False),  # nothing to list
])
def test_catch_up_runs_where_the_runner_acks_before_processing(extra, runner, expected):
    from streaming.pipeline import catch_up_enabled
    opts = catch_up_opts(*extra, *(["--runner", runner] if runner else []))
    assert catch_up_enabled(opts) is expected


def test_periodic_catch_up_is_refused_on_the_local_runner_in_one_line():
    from streaming.pipeline import catch_up_enabled
    with pytest.raises(ValueError, match="--catch_up_every_minutes runs on Dataflow"):
        catch_up_enabled(catch_up_opts("--buckets", "b", "--catch_up_every_minutes", "5"))


def test_a_dataflow_job_can_catch_up_at_start_and_periodically():
    import apache_beam as beam
    from streaming.pipeline import build_pipeline
    opts = catch_up_opts(
        "--buckets", "my-images", "--include_prefix", "uploads/", "--catch_up", "always",
        "--catch_up_every_minutes", "60", "--runner", "DataflowRunner", "--dry_run", "True",
        "--project", "my-project", "--region", "us-central1",
        "--temp_location", "gs://my-temp-bucket/tmp", "--weights", "random:0")
    pipeline = beam.Pipeline(options=opts)
    build_pipeline(pipeline, opts)
    names = {t.unique_name for t in
             pipeline.run().job.proto_pipeline.components.transforms.values()}
    assert {"Catch up/Every interval", "Catch up/Find unprocessed",
            "Notified and missed"} <= names
