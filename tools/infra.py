"""infra/*.tf read as text: blocks, attributes and the IAM grants they declare.

Terraform cannot download its provider here, so nothing evaluates the configuration;
these readers cover what the checks and the least-privilege proxy need (resource
blocks, simple attributes, `*_iam_member` grants with their conditions, custom roles).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"


def text() -> str:
    return "\n".join(p.read_text() for p in sorted(INFRA.glob("*.tf")))


TEXT = text()


def body(source: str, start: int) -> str:
    """The text of the block whose `{` ends just before `start`."""
    depth, i = 1, start
    while depth:
        depth += {"{": 1, "}": -1}.get(source[i], 0)
        i += 1
    return source[start : i - 1]


def blocks(kind: str, type_: str | None = None, source: str = TEXT) -> dict[str, str]:
    """{name: body} of `kind "type" "name" {...}` (or `variable "name"`) blocks."""
    found = {}
    for m in re.finditer(rf'^{kind}\s+((?:"[^"]*"\s*)+)\{{', source, re.M):
        labels = re.findall(r'"([^"]*)"', m.group(1))
        if type_ is None or labels[0] == type_:
            found[labels[-1]] = body(source, m.end())
    return found


def attr(block: str, name: str) -> str | None:
    m = re.search(rf"^\s*{name}\s*=\s*(.+?)\s*(#.*)?$", block, re.M)
    return m.group(1) if m else None


def nested(block: str, name: str) -> str:
    m = re.search(rf"^\s*{name}\s*\{{", block, re.M)
    assert m, f"no {name} block"
    return body(block, m.end())


def has_nested(block: str, name: str) -> bool:
    return re.search(rf"^\s*{name}\s*\{{", block, re.M) is not None


# Who a grant's member is: the job's and the backfill's service accounts, and the
# people of var.deployers and var.analysts (`for_each = toset(var.x)`, `each.value`).
MEMBERS = {"local.embedder": "job", "local.backfill": "backfill"}
PEOPLE = {"var.deployers": "deployer", "var.analysts": "analyst"}


@dataclasses.dataclass(frozen=True)
class Grant:
    member: str  # as written: local.embedder, each.value, "serviceAccount:..."
    role: str  # roles/x, or google_project_iam_custom_role.NAME for a custom role
    target: str  # the resource granted on: var.project_id, google_storage_bucket.vectors, ...
    condition: str | None = None  # the IAM condition's CEL expression, as written
    people: str | None = None  # var.deployers / var.analysts for `each.value`
    kind: str = ""  # google_storage_bucket, google_project, ...

    @property
    def identity(self) -> str | None:
        """job, backfill, deployer, analyst (None for a Google service agent)."""
        if self.member == "each.value":
            return PEOPLE.get(self.people or "")
        return MEMBERS.get(self.member)


_TARGET_KEYS = (
    "topic",
    "subscription",
    "bucket",
    "dataset_id",
    "repository",
    "service_account_id",
    "project",
)


def iam_grants(source: str = TEXT) -> list[Grant]:
    """Every `*_iam_member` grant of infra/."""
    grants = []
    for m in re.finditer(r'^resource\s+"(google_\w+)_iam_member"\s+"\w+"\s*\{', source, re.M):
        block = body(source, m.end())
        target = next((v for k in _TARGET_KEYS if (v := attr(block, k))), None)
        target = re.sub(r"\.(id|name|dataset_id|email)$", "", target)
        role = attr(block, "role")
        role = role.strip('"') if role.startswith('"') else re.sub(r"\.(id|name)$", "", role)
        condition = None
        if has_nested(block, "condition"):
            condition = json.loads(attr(nested(block, "condition"), "expression"))
        people = re.search(r"for_each\s*=\s*toset\((var\.\w+)\)", block)
        grants.append(
            Grant(
                member=attr(block, "member"),
                role=role,
                target=target,
                condition=condition,
                people=people.group(1) if people else None,
                kind=m.group(1),
            )
        )
    return grants


def custom_roles(source: str = TEXT) -> dict[str, set[str]]:
    """{google_project_iam_custom_role.NAME: permissions} of infra/."""
    found = {}
    for name, block in blocks("resource", "google_project_iam_custom_role", source).items():
        listed = re.search(r"permissions\s*=\s*\[(.*?)\]", block, re.S).group(1)
        found[f"google_project_iam_custom_role.{name}"] = set(re.findall(r'"([^"]+)"', listed))
    return found
