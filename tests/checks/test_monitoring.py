"""The dashboard and alert policies of infra/ (monitoring.tf, dashboard.json) watch what the
job really emits: every Beam metric a chart or an alert names is a counter or a
distribution the job's code counts, every Pub/Sub query reads the job's subscription,
every alert notifies the channels variable and says what to do.

Terraform cannot run here, so the queries are read as text, as test_infra.py reads the
rest of infra/. The names the job emits are read from its code with `ast` (each
`metrics.count` / `metrics.dead_letter` / `metrics.skipped` call, and the dead-letter
reasons of `streaming/failures.py`), never listed here.
"""

import ast
import dataclasses
import json
import re

import pytest

from streaming import failures, metrics
from tests.checks.test_infra import INFRA, ROOT, attr, blocks, nested

DOC = ROOT / "docs" / "monitoring.md"
DOC_SECTION = "## Dashboard and alerts in infra/"

# Dataflow exports a Beam counter as this metric, its name in the label metric_name, and a
# Beam distribution as four of them, the name suffixed ("Custom metrics" in
# https://cloud.google.com/dataflow/docs/guides/using-cloud-monitoring). PromQL names of
# metric types: https://cloud.google.com/monitoring/promql/promql-mapping.
USER_COUNTER = "dataflow_googleapis_com:job_user_counter"
DISTRIBUTION_SUFFIXES = ("_MAX", "_MIN", "_MEAN", "_COUNT")
PUBSUB = {
    "pubsub_googleapis_com:subscription_oldest_unacked_message_age",
    "pubsub_googleapis_com:subscription_num_undelivered_messages",
}
LOG_METRIC = "logging_googleapis_com:user_"  # + the name of a google_logging_metric

SELECTOR = re.compile(r"([A-Za-z_:][\w:]*)\{([^{}]*)\}")
MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
METRIC_TYPE = re.compile(r"\b\w+_googleapis_com:\w+")
INTERPOLATION = re.compile(r"\$\{([^{}]*)\}")
FAMILY = re.compile(r"(\w+)\[\.\]\.\+")  # `dead_letter[.].+`: every counter named dead_letter.*


# --- What the job emits ------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Emitted:
    """The job's Beam metrics in namespace `metrics.NAMESPACE`."""

    counters: frozenset
    families: frozenset  # prefixes of names made at run time (`event.<eventType>`)
    distributions: frozenset


def _loop_values(tree: ast.AST) -> dict[str, set]:
    """{name: its literal values} for loop variables unpacked from a literal table:
    `for name, n in (("weights_switches", s), ("weights_rejected", r))`."""
    found: dict[str, set] = {}
    for node in ast.walk(tree):
        if not (
            isinstance(node, ast.For)
            and isinstance(node.target, ast.Tuple)
            and isinstance(node.iter, ast.Tuple | ast.List)
        ):
            continue
        for row in node.iter.elts:
            if isinstance(row, ast.Tuple) and len(row.elts) == len(node.target.elts):
                for target, value in zip(node.target.elts, row.elts):
                    if isinstance(target, ast.Name) and isinstance(value, ast.Constant):
                        found.setdefault(target.id, set()).add(value.value)
    return found


def _strings(node: ast.AST, in_metrics: bool, loops: dict[str, set]) -> set | None:
    """The names a metric-name argument can be where the code spells them: a literal, a
    constant of streaming.metrics, or a loop variable over literals; None otherwise."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        if node.value.id == "metrics" and isinstance(getattr(metrics, node.attr, None), str):
            return {getattr(metrics, node.attr)}
    if isinstance(node, ast.Name):
        if in_metrics and isinstance(getattr(metrics, node.id, None), str):
            return {getattr(metrics, node.id)}
        if node.id in loops:
            return set(loops[node.id])
    return None


def _callee(call: ast.Call, in_metrics: bool) -> str | None:
    """`count`, `dead_letter`, `skipped` (of streaming.metrics) or `Metrics.counter` /
    `Metrics.distribution` (Beam's), or None."""
    func = call.func
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
        if func.value.id == "metrics":
            return func.attr
        if func.value.id == "Metrics":
            return f"Metrics.{func.attr}"
    if isinstance(func, ast.Name) and in_metrics:
        return func.id
    return None


def scan(source: str, in_metrics: bool = False) -> Emitted:
    """The metrics one module of the job emits, where its code names them."""
    counters, families, distributions = set(), set(), set()
    tree = ast.parse(source)
    loops = _loop_values(tree)
    for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call)):
        callee = _callee(call, in_metrics)
        if callee == "dead_letter":  # its reason is always a code of the registry
            counters |= {metrics.DEAD_PREFIX + code for code in failures.REASONS}
            families.add(metrics.DEAD_PREFIX)
        elif callee in ("count", "skipped") and call.args:
            arg = call.args[0]
            names = _strings(arg, in_metrics, loops)
            wrap = metrics.skipped if callee == "skipped" else str
            if names is not None:
                counters |= {wrap(name) for name in names}
            elif isinstance(arg, ast.JoinedStr) and isinstance(arg.values[0], ast.Constant):
                families.add(wrap(arg.values[0].value))  # f"event.{...}"
            elif callee == "skipped":
                families.add(metrics.SKIPPED_PREFIX)
        elif callee in ("Metrics.counter", "Metrics.distribution") and len(call.args) == 2:
            namespace = _strings(call.args[0], in_metrics, loops)
            names = _strings(call.args[1], in_metrics, loops)
            if namespace == {metrics.NAMESPACE} and names:
                (distributions if callee.endswith("distribution") else counters).update(names)
    return Emitted(frozenset(counters), frozenset(families), frozenset(distributions))


def emitted() -> Emitted:
    """What the whole job emits: `scan` of every module of streaming/."""
    parts = [
        scan(path.read_text(), in_metrics=path == ROOT / "streaming" / "metrics.py")
        for path in sorted((ROOT / "streaming").rglob("*.py"))
    ]
    return Emitted(
        frozenset().union(*(p.counters for p in parts)),
        frozenset().union(*(p.families for p in parts)),
        frozenset().union(*(p.distributions for p in parts)),
    )


EMITTED = emitted()


def test_the_emitted_names_are_read_from_the_code():
    assert metrics.EMBEDDED in EMITTED.counters
    assert {metrics.DEAD_PREFIX + code for code in failures.REASONS} <= EMITTED.counters
    assert metrics.LATENCY in EMITTED.distributions
    assert "event." in EMITTED.families
    # A local tally only, never a Beam counter: no chart may ask Dataflow for it.
    assert metrics.INFERRED not in EMITTED.counters


def test_the_scan_reads_each_way_the_code_names_a_metric():
    source = """
metrics.count("bigquery.stalled")
metrics.count(metrics.EMBEDDED)
for name, n in (("weights_switches", 1), ("weights_rejected", 2)):
    metrics.count(name, n)
metrics.count(f"event.{ref.event_type}")
metrics.count(where.reason)
metrics.dead_letter(error.reason)
SKIPPED_TYPE = metrics.skipped("type")
"""
    found = scan(source)
    dead = {metrics.DEAD_PREFIX + code for code in failures.REASONS}
    named = {"bigquery.stalled", metrics.EMBEDDED, "weights_switches", "weights_rejected"}
    assert found.counters == named | {metrics.skipped("type")} | dead
    assert found.families == {"event.", metrics.DEAD_PREFIX}
    in_metrics = scan("Metrics.distribution(NAMESPACE, LATENCY).update(1)", in_metrics=True)
    assert in_metrics.distributions == {metrics.LATENCY}


# --- The queries -------------------------------------------------------------------------
def _job_subscription() -> str:
    """The subscription the job reads: the one infra/ hands it as input_subscription."""
    value = attr(blocks("output")["input_subscription"], "value")
    return re.fullmatch(r"google_pubsub_subscription\.(\w+)\.id", value).group(1)


def heredocs(body: str, name: str) -> list[str]:
    """The text of each `name = <<-EOT ... EOT` attribute of a block."""
    return [
        m.group(2)
        for m in re.finditer(rf"^\s*{name}\s*=\s*<<-?(\w+)\n(.*?)\n\s*\1\s*$", body, re.M | re.S)
    ]


def dashboard_template() -> tuple[str, dict]:
    """The dashboard's JSON text and {template variable: Terraform expression}."""
    ((_, body),) = blocks("resource", "google_monitoring_dashboard").items()
    m = re.search(r'templatefile\("\$\{path\.module\}/([^"]+)",\s*\{(.*?)\}\)', body, re.S)
    assert m, 'dashboard_json = templatefile("${path.module}/FILE", {...})'
    variables = dict(re.findall(r"^\s*(\w+)\s*=\s*(\S+)\s*$", m.group(2), re.M))
    return (INFRA / m.group(1)).read_text(), variables


def charts() -> list[dict]:
    """Every widget of the dashboard."""
    text, _ = dashboard_template()
    return [tile["widget"] for tile in json.loads(text)["mosaicLayout"]["tiles"]]


def queries() -> dict[str, tuple[str, dict]]:
    """{where: (PromQL, {placeholder: Terraform expression})} of every chart and alert."""
    found = {}
    _, variables = dashboard_template()
    for widget in charts():
        for i, data_set in enumerate(widget.get("xyChart", {}).get("dataSets", [])):
            query = data_set["timeSeriesQuery"]["prometheusQuery"]
            text, refs = _placeholders(query)
            unknown = set(refs.values()) - set(variables)
            assert not unknown, f"{widget['title']}: no template variable {unknown}"
            terraform = {word: variables[name] for word, name in refs.items()}
            found[f"chart {widget['title']!r} #{i}"] = (text, terraform)
    for name, body in blocks("resource", "google_monitoring_alert_policy").items():
        for i, query in enumerate(heredocs(body, "query")):
            found[f"alert {name} #{i}"] = _placeholders(query)
    return found


def _placeholders(text: str) -> tuple[str, dict]:
    """The text with each `${expr}` replaced by a word (`TFREF0X`), and {word: expr}."""
    refs: dict[str, str] = {}

    def word(m: re.Match) -> str:
        key = f"TFREF{len(refs)}X"
        refs[key] = m.group(1).strip()
        return key

    return INTERPOLATION.sub(word, text), refs


def problems(query: str, refs: dict, emitted: Emitted = EMITTED) -> list[str]:
    """What is wrong with one PromQL query of the dashboard or an alert: a Beam metric the
    job does not emit, another job's or subscription's metrics, a metric no one exports."""
    found = []
    selectors = SELECTOR.findall(query)
    if not selectors:
        found.append("reads no metric")
    bare = {m.group(0) for m in METRIC_TYPE.finditer(query)} - {s for s, _ in selectors}
    found += [f"{metric} without a selector" for metric in sorted(bare)]
    for metric, body in selectors:
        labels = {name: (op, value) for name, op, value in MATCHER.findall(body)}
        resource = labels.get("monitored_resource")
        if metric == USER_COUNTER:
            if resource != ("=", "dataflow_job"):
                found.append(f"{metric}: monitored_resource is not dataflow_job")
            if _reference(labels, refs, "job_name") != "var.job_name":
                found.append(f"{metric}: job_name is not var.job_name")
            if "metric_name" not in labels:
                found.append(f"{metric}: no metric_name")
            else:
                found += beam_name_problems(*labels["metric_name"], emitted)
        elif metric in PUBSUB:
            subscription = f"google_pubsub_subscription.{_job_subscription()}.name"
            if resource != ("=", "pubsub_subscription"):
                found.append(f"{metric}: monitored_resource is not pubsub_subscription")
            if _reference(labels, refs, "subscription_id") != subscription:
                found.append(f"{metric}: subscription_id is not {subscription}")
        elif metric.startswith(LOG_METRIC):
            expr = refs.get(metric.removeprefix(LOG_METRIC), "")
            declared = blocks("resource", "google_logging_metric")
            m = re.fullmatch(r"google_logging_metric\.(\w+)\.name", expr)
            if not (m and m.group(1) in declared):
                found.append(f"{metric}: not the name of a google_logging_metric of infra/")
            if resource != ("=", "dataflow_step"):
                found.append(f"{metric}: monitored_resource is not dataflow_step")
        else:
            found.append(f"{metric}: not a metric these checks know")
    return found


def _reference(labels: dict, refs: dict, label: str) -> str | None:
    """The Terraform expression that `label="${...}"` holds, if it is matched so."""
    op, value = labels.get(label, ("", ""))
    return refs.get(value) if op == "=" else None


def beam_name_problems(op: str, value: str, emitted: Emitted) -> list[str]:
    if op == "=":
        exported = set(emitted.counters) | {
            name + suffix for name in emitted.distributions for suffix in DISTRIBUTION_SUFFIXES
        }
        if value not in exported:
            return [f"metric_name {value!r}: the job emits no such counter or distribution"]
        return []
    m = FAMILY.fullmatch(value) if op == "=~" else None
    if not m:
        return [f'metric_name {op}{value!r}: only = or =~"family[.].+" can be checked']
    family = m.group(1) + "."
    if family in emitted.families or any(c.startswith(family) for c in emitted.counters):
        return []
    return [f"metric_name=~{value!r}: the job emits no counter named {family}*"]


QUERIES = queries()


@pytest.mark.parametrize("where", sorted(QUERIES))
def test_every_query_reads_what_the_job_emits(where):
    assert problems(*QUERIES[where]) == []


def test_the_check_refuses_a_metric_the_job_does_not_emit():
    def query(metric_name: str) -> str:
        return (
            f'sum({USER_COUNTER}{{monitored_resource="dataflow_job", job_name="TFREF0X", '
            f"metric_name{metric_name}}})"
        )

    refs = {"TFREF0X": "var.job_name"}
    for right in ('="images_embedded"', '="notification_to_row_ms_MEAN"', '=~"dead_letter[.].+"'):
        assert problems(query(right), refs) == [], right
    for wrong in ('="images_embeded"', '="notification_to_row_ms"', '=~"dead_leter[.].+"'):
        assert problems(query(wrong), refs) != [], wrong
    assert problems(query('="images_embedded"'), {"TFREF0X": "var.other_job"}) != []
    assert problems("sum(pubsub_googleapis_com:subscription_num_undelivered_messages)", {})


def test_the_queries_cover_what_operators_watch():
    read = set()
    for query, _ in QUERIES.values():
        for metric, body in SELECTOR.findall(query):
            read.add(metric.split("TFREF")[0])
            for name, _, value in MATCHER.findall(body):
                if name == "metric_name":
                    family = FAMILY.fullmatch(value)
                    read.add(family.group(1) + "." if family else value)
    assert {*PUBSUB, USER_COUNTER, LOG_METRIC} <= read
    assert {
        metrics.EMBEDDED,
        metrics.DEAD_PREFIX,
        metrics.LATENCY + "_MEAN",
        "catch_up.abandoned",
        "bigquery.stalled",
    } <= read


# --- The dashboard -----------------------------------------------------------------------
def test_dashboard_parses_and_every_chart_has_a_title():
    text, variables = dashboard_template()
    dashboard = json.loads(text)
    assert dashboard["displayName"]
    assert set(INTERPOLATION.findall(text)) == set(variables)
    assert all(widget.get("title", "").strip() for widget in charts())
    for widget in charts():
        for data_set in widget.get("xyChart", {}).get("dataSets", []):
            assert data_set["timeSeriesQuery"]["prometheusQuery"].strip(), widget["title"]


# --- The alerts --------------------------------------------------------------------------
ALERTS = blocks("resource", "google_monitoring_alert_policy")


def test_notification_channels_are_a_variable():
    channels = blocks("variable")["alert_notification_channels"]
    assert attr(channels, "type") == "list(string)"
    assert json.loads(attr(channels, "default")) == []


@pytest.mark.parametrize("name", sorted(ALERTS))
def test_alert_notifies_the_channels_and_says_what_to_do(name):
    body = ALERTS[name]
    assert attr(body, "notification_channels") == "var.alert_notification_channels"
    assert attr(body, "display_name").strip('"')
    (content,) = heredocs(nested(body, "documentation"), "content")
    assert len(content.split()) >= 20 and "docs/monitoring.md" in content
    assert heredocs(body, "query"), "an alert without a PromQL condition"


@pytest.mark.parametrize("name", sorted(ALERTS))
def test_alert_thresholds_and_windows_are_variables(name):
    """A figure in a query is a variable with a default that says why, or zero."""
    for query in heredocs(ALERTS[name], "query"):
        text, _ = _placeholders(query)
        literal = re.findall(r"(?:[<>]=?|==)\s*([\d.]+)|\[(\d+\w)\]|offset\s+(\d+\w)", text)
        assert all(m[0] in ("", "0") and not m[1] and not m[2] for m in literal), literal


def test_worker_errors_count_the_jobs_error_lines():
    ((_, body),) = blocks("resource", "google_logging_metric").items()
    log_filter = json.loads(attr(body, "filter"))
    assert 'resource.type="dataflow_step"' in log_filter
    assert 'resource.labels.job_name="${var.job_name}"' in log_filter
    assert "severity>=ERROR" in log_filter


def test_monitoring_and_logging_apis_are_enabled():
    services = re.findall(r'"([\w.]+\.googleapis\.com)"', (INFRA / "apis.tf").read_text())
    assert {"monitoring.googleapis.com", "logging.googleapis.com"} <= set(services)


def test_docs_name_every_chart_and_alert():
    section = DOC.read_text().partition(DOC_SECTION)[2]
    assert section, f"{DOC.name} has no section {DOC_SECTION!r}"
    titles = [w["title"] for w in charts() if "xyChart" in w] + [
        attr(body, "display_name").strip('"') for body in ALERTS.values()
    ]
    missing = [title for title in titles if title not in section]
    assert not missing, missing
