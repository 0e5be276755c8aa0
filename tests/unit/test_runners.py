"""One rule for which runner a job is on."""

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from streaming.config import runners


@pytest.mark.parametrize(
    "runner, remote, dataflow",
    [
        ("DirectRunner", False, False),
        ("BundleBasedDirectRunner", False, False),
        ("PrismRunner", False, False),
        ("DataflowRunner", True, True),
        ("TestDataflowRunner", True, True),
        ("FlinkRunner", True, False),
    ],
)
def test_runner_kinds(runner, remote, dataflow):
    opts = PipelineOptions(["--runner", runner])
    assert runners.is_remote(opts) is remote
    assert runners.on_dataflow(opts) is dataflow
