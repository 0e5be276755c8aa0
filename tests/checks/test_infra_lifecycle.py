"""infra/ over the months: pinned providers, soft delete where it pays, ordered grants.

Like test_infra.py these read the .tf files and the lock file as text: the provider
versions Terraform will install, which buckets keep soft-deleted objects, and that the
bucket notification waits for its publisher grant, granted to the service agent of the
project that holds the images bucket.
"""

import re
import subprocess

import pytest

from tests.checks.test_infra import INFRA, ROOT, attr, blocks, nested, only

LOCK = INFRA / ".terraform.lock.hcl"
# google_storage_bucket's soft_delete_policy first shipped in this release.
SOFT_DELETE_SINCE = (5, 22, 0)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def _padded(version: tuple[int, ...]) -> tuple[int, ...]:
    return (version + (0, 0, 0))[:3]


def parse_constraints(text: str) -> list[tuple[str, tuple[int, ...]]]:
    """Terraform's version constraint syntax: `>= 6.0, < 7.0`, `~> 6.50`, `6.50.0`."""
    parsed = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*(~>|>=|<=|!=|>|<|=)?\s*(\d+(?:\.\d+){0,2})\s*", part)
        assert m, f"unreadable constraint {part!r} in {text!r}"
        parsed.append((m.group(1) or "=", _version(m.group(2))))
    return parsed


def satisfies(version: str, constraints: str) -> bool:
    v = _padded(_version(version))
    for op, bound in parse_constraints(constraints):
        b = _padded(bound)
        if op == "~>":
            # ~> 6.50 allows 6.50 up to 7.0; ~> 6.50.1 allows 6.50.1 up to 6.51.
            top = bound[:-1] if len(bound) > 1 else bound
            upper = _padded(top[:-1] + (top[-1] + 1,))
            ok = b <= v < upper
        else:
            ok = {
                "=": v == b,
                "!=": v != b,
                ">": v > b,
                ">=": v >= b,
                "<": v < b,
                "<=": v <= b,
            }[op]
        if not ok:
            return False
    return True


def canonical(constraints: str) -> set[str]:
    """The constraints as `terraform init` writes them into the lock file: three-part
    versions, except that `~>` keeps the precision it was given."""
    return {
        f"{op} {'.'.join(map(str, bound if op == '~>' else _padded(bound)))}"
        for op, bound in parse_constraints(constraints)
    }


def required_providers() -> dict[str, str]:
    """{registry address: version constraint} from versions.tf."""
    body = nested((INFRA / "versions.tf").read_text(), "required_providers")
    found = {}
    for m in re.finditer(r"^\s*\w+\s*=\s*\{([^}]*)\}", body, re.M):
        source = attr(m.group(1), "source").strip('"')
        if source.count("/") == 1:
            source = f"registry.terraform.io/{source}"
        found[source] = attr(m.group(1), "version").strip('"')
    return found


def locked_providers() -> dict[str, dict]:
    """{registry address: {"version", "constraints", "hashes"}} from the lock file."""
    text = LOCK.read_text()
    found = {}
    for m in re.finditer(r'^provider\s+"([^"]+)"\s*\{', text, re.M):
        body = text[m.end() : text.index("\n}", m.end())]
        found[m.group(1)] = {
            "version": attr(body, "version").strip('"'),
            "constraints": (attr(body, "constraints") or "").strip('"'),
            "hashes": re.findall(r'"((?:h1|zh):[^"]+)"', body),
        }
    return found


@pytest.mark.parametrize(
    "version, constraints, expected",
    [
        ("6.50.0", "~> 6.50", True),
        ("6.99.3", "~> 6.50", True),
        ("7.0.0", "~> 6.50", False),
        ("6.49.9", "~> 6.50", False),
        ("6.50.9", "~> 6.50.1", True),
        ("6.51.0", "~> 6.50.1", False),
        ("0.13.1", "~> 0.13", True),
        ("1.0.0", "~> 0.13", False),
        ("7.2.0", ">= 6.0, < 8.0", True),
        ("6.50.0", "6.50.0", True),
        ("6.50.0", "!= 6.50.0", False),
    ],
)
def test_constraint_reader(version, constraints, expected):
    assert satisfies(version, constraints) is expected


def test_every_required_provider_is_locked_and_nothing_else():
    assert set(locked_providers()) == set(required_providers())


@pytest.mark.parametrize("source", sorted(required_providers()))
def test_locked_version_satisfies_versions_tf(source):
    constraint = required_providers()[source]
    lock = locked_providers()[source]
    assert satisfies(lock["version"], constraint), (lock["version"], constraint)
    # `terraform init` rewrites a lock whose recorded constraints differ from the config.
    assert canonical(lock["constraints"]) == canonical(constraint)
    # h1: the package as installed on one platform; zh: the registry's signed zip
    # checksums for every platform, which let init verify any other platform's package.
    assert any(h.startswith("h1:") for h in lock["hashes"])
    assert any(h.startswith("zh:") for h in lock["hashes"])


def test_google_provider_has_soft_delete_policy():
    constraint = required_providers()["registry.terraform.io/hashicorp/google"]
    lower = [_padded(b) for op, b in parse_constraints(constraint) if op in ("~>", ">=", "=")]
    assert lower and max(lower) >= SOFT_DELETE_SINCE, constraint


def test_lock_file_is_committed():
    run = subprocess.run(
        ["git", "check-ignore", "--no-index", "-q", str(LOCK.relative_to(ROOT))], cwd=ROOT
    )
    assert run.returncode == 1, f"{LOCK.name} is ignored by git"


def test_dataflow_bucket_keeps_no_soft_deleted_files():
    """Temp and staging files are deleted all the time: soft delete would bill each for
    the retention window, and Beam warns about it at every launch."""
    bucket = blocks("resource", "google_storage_bucket")["dataflow"]
    policy = nested(bucket, "soft_delete_policy")
    assert attr(policy, "retention_duration_seconds") == "0"


def test_vectors_bucket_keeps_soft_delete():
    """The vectors are data: a deleted .npy stays restorable for the bucket's window."""
    bucket = blocks("resource", "google_storage_bucket")["vectors"]
    if re.search(r"^\s*soft_delete_policy\s*\{", bucket, re.M):
        seconds = attr(nested(bucket, "soft_delete_policy"), "retention_duration_seconds")
        assert int(seconds) >= 7 * 86400


def _depends_on(body: str) -> set[str]:
    value = attr(body, "depends_on") or "[]"
    return {ref.strip() for ref in value.strip("[]").split(",") if ref.strip()}


def test_notification_waits_for_the_publisher_grant_to_propagate():
    """IAM grants take typically 2 minutes to take effect, and Cloud Storage refuses a
    notification whose service agent cannot publish yet."""
    _, note = only("google_storage_notification")
    waits = {ref.split(".")[1] for ref in _depends_on(note) if ref.startswith("time_sleep.")}
    assert len(waits) == 1, _depends_on(note)
    wait = blocks("resource", "time_sleep")[waits.pop()]

    duration = re.fullmatch(r'"(\d+)([sm])"', attr(wait, "create_duration"))
    assert duration, attr(wait, "create_duration")
    seconds = int(duration.group(1)) * {"s": 1, "m": 60}[duration.group(2)]
    assert seconds >= 120

    grants = {
        name
        for name, body in blocks("resource", "google_pubsub_topic_iam_member").items()
        if "data.google_storage_project_service_account." in attr(body, "member")
    }
    assert len(grants) == 1, grants
    grant = f"google_pubsub_topic_iam_member.{grants.pop()}"
    # Through triggers (a new grant waits again) or depends_on: either orders the two.
    assert re.search(rf"\b{re.escape(grant)}\b", wait), wait


def test_service_agent_is_the_images_buckets_projects():
    assert "images_project" in blocks("variable")
    assert attr(blocks("variable")["images_project"], "default") == "null"
    agents = blocks("data", "google_storage_project_service_account")
    assert len(agents) == 1
    (agent,) = agents.values()
    assert attr(agent, "project") == "coalesce(var.images_project, var.project_id)"


def test_tfvars_example_shows_images_project():
    example = (INFRA / "terraform.tfvars.example").read_text()
    # Commented out: the default (project_id) suits a bucket of the job's own project.
    assert re.search(r"^#\s*images_project\s*=", example, re.M)
    names = set(re.findall(r"^#?\s*(\w+)\s*=", example, re.M))
    assert names <= set(blocks("variable")), names - set(blocks("variable"))
