"""The worker image and the lock agree with setup.py: checks that need no Docker engine.

Building the image needs an engine; what can go wrong without one is checked here: the
base tag names the Beam release the package pins, the image installs from the lock that
CI installs from, the entrypoint is Beam's worker boot, and the template's entry file is
in the image.
"""

import ast
import pathlib
import re
import shlex

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE)
    lines = [
        ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")
    ]
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in lines]


def setup_kwargs() -> dict:
    tree = ast.parse((ROOT / "setup.py").read_text())
    call = next(
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and getattr(n.func, "attr", "") == "setup"
    )
    return {k.arg: k.value for k in call.keywords}


def literal(name: str):
    return ast.literal_eval(setup_kwargs()[name])


def lock() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = Version(version)
    return pins


def test_lock_pins_every_requirement_inside_its_range():
    pins = lock()
    reqs = literal("install_requires") + [
        r for extra in literal("extras_require").values() for r in extra
    ]
    for req in map(Requirement, reqs):
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not in requirements.lock (run tools/lock.sh)"
        assert pins[name] in req.specifier, f"lock has {req.name}=={pins[name]}, setup.py {req}"
    assert "image-embeddings" not in pins  # the project itself is installed from source
    assert "tensorflow-hub" not in pins


def test_lock_lines_are_exact_pins():
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        assert not line or line.startswith("#") or re.fullmatch(r"[A-Za-z0-9._-]+==[^\s;@]+", line)


def test_ci_and_the_image_install_from_the_lock():
    assert re.search(r"pip install .*-c requirements\.lock", (ROOT / ".ci" / "run").read_text())
    runs = [args for op, args in instructions() if op == "RUN" and "pip install" in args]
    assert runs and all("-c requirements.lock" in r for r in runs)


def test_base_image_is_the_pinned_beam_release():
    stages = [args.split()[0] for op, args in instructions() if op == "FROM"]
    match = re.fullmatch(r"apache/beam_python(\d+\.\d+)_sdk:(\S+)", stages[-1])
    assert match, f"final stage must be Beam's SDK image, is {stages[-1]}"
    python, beam = match.groups()
    assert Version(beam) == lock()["apache-beam"]
    beam_req = next(
        Requirement(r)
        for r in literal("install_requires")
        if canonicalize_name(Requirement(r).name) == "apache-beam"
    )
    assert Version(beam) in beam_req.specifier
    assert Version(python + ".0") in Requirement("python" + literal("python_requires")).specifier


def test_entrypoint_is_beams_worker_boot():
    entrypoints = [args for op, args in instructions() if op == "ENTRYPOINT"]
    assert ast.literal_eval(entrypoints[-1]) == ["/opt/apache/beam/boot"]


def test_image_holds_every_package_and_the_template_entry_file():
    copied = {
        shlex.split(args)[0]
        for op, args in instructions()
        if op == "COPY" and not args.startswith("--from")
    }
    packages = {
        p.split(".")[0]
        for p in ast.literal_eval(
            next(k.value for k in setup_kwargs()["packages"].keywords if k.arg == "include")
        )
    }
    assert packages <= copied, f"not copied into the image: {packages - copied}"
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(a for op, a in instructions() if op == "ENV")))
    workdir = [a for op, a in instructions() if op == "WORKDIR"][-1]
    entry = pathlib.PurePosixPath(env["FLEX_TEMPLATE_PYTHON_PY_FILE"]).relative_to(workdir)
    assert (ROOT / entry).is_file() and entry.parts[0] in copied


def test_gpu_build_arg_names_an_extra():
    assert re.search(r"\[\$EXTRAS\]", DOCKERFILE)
    assert "gpu" in literal("extras_require")
    assert "EXTRAS=gpu" in DOCKERFILE  # documented at the top
