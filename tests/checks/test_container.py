"""The worker image, the lock and setup.py agree: checks that need no Docker engine.

Building the image needs an engine; what can go wrong without one is checked here: every
base image is named once, at the top, and the build refuses it until tools/pin_images.sh
has pinned it by digest; the image is a slim Python of the lock's interpreter with Beam's
boot copied from the SDK image of the locked Beam release; it installs exactly the lock,
which covers every import of the code it runs, and checks that it did
(tools/lock_check.py, tested here too), as CI does with its virtualenv; the entrypoint is
Beam's worker boot and the template's entry file is in the image.
"""

import ast
import functools
import importlib.metadata
import importlib.util
import os
import pathlib
import re
import shlex
import subprocess
import sys
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
LOCK = ROOT / "requirements.lock"
GPU_LOCK = ROOT / "requirements-gpu.lock"
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}")


def instructions(text: str | None = None) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile (ours by default), continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE if text is None else text)
    lines = [
        ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")
    ]
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in lines]


def base_images(text: str | None = None) -> dict[str, str]:
    """{ARG name: image} of the `ARG *_IMAGE=...` lines before the first FROM."""
    found = {}
    for op, args in instructions(text):
        if op == "FROM":
            break
        name, _, value = args.partition("=")
        if op == "ARG" and name.endswith("_IMAGE"):
            found[name] = value
    return found


def stages() -> list[tuple[str, str | None, list[tuple[str, str]]]]:
    """(image ARG, alias, instructions) of each stage, FROM ${ARG} [AS alias]."""
    found = []
    for op, args in instructions():
        if op == "FROM":
            match = re.fullmatch(r"\$\{(\w+)\}(?:\s+AS\s+(\S+))?", args, re.I)
            assert match, f"FROM {args}: a base image is named only in an ARG at the top"
            found.append((match.group(1), match.group(2), []))
        elif found:
            found[-1][2].append((op, args))
    return found


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


def lock(path: pathlib.Path = LOCK) -> dict[str, Version]:
    pins = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = Version(version)
    return pins


def lock_python() -> str:
    """The interpreter the lock is for (its first line: `... CPython 3.11 ...`)."""
    return re.search(r"CPython (\d+\.\d+)", LOCK.read_text()).group(1)


def test_lock_pins_every_requirement_inside_its_range():
    pins = lock()
    reqs = literal("install_requires") + [
        r for extra in literal("extras_require").values() for r in extra
    ]
    for req in map(Requirement, reqs):
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not in requirements.lock (run tools/lock.sh)"
        assert pins[name] in req.specifier, f"lock has {req.name}=={pins[name]}, setup.py {req}"
    for path in (LOCK, GPU_LOCK):
        # the project is installed from source; pip is the installer, not in the set
        assert not {"image-embeddings", "pip"} & set(lock(path)), path.name
    assert "tensorflow-hub" not in pins


def test_lock_lines_are_exact_pins():
    for path in (LOCK, GPU_LOCK):
        for line in path.read_text().splitlines():
            assert (
                not line or line.startswith("#") or re.fullmatch(r"[A-Za-z0-9._-]+==[^\s;@]+", line)
            ), f"{path.name}: {line}"


def test_the_gpu_lock_only_adds_to_the_cpu_lock():
    gpu = lock(GPU_LOCK)
    assert gpu and not set(gpu) & set(lock()), "requirements-gpu.lock repeats a CPU pin"
    assert all(name.startswith("nvidia-") for name in gpu), "a non-CUDA wheel only for GPUs"
    assert f"CPython {lock_python()}" in GPU_LOCK.read_text()


def test_the_lock_builds_the_project():
    """The image and CI build this package with --no-build-isolation: with the lock's
    setuptools, not with whatever an isolated build would download."""
    pins = lock()
    build = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]
    for req in map(Requirement, build["requires"]):
        name = canonicalize_name(req.name)
        assert name in pins and pins[name] in req.specifier, f"lock lacks {req} to build"


# --- the lock covers the code the image runs


ENTRY_CODE = sorted(
    p for pkg in ("streaming", "publisher", "analysis") for p in (ROOT / pkg).rglob("*.py")
)
ENTRY_CODE.append(ROOT / "flex_template" / "main.py")
FIRST_PARTY = {"streaming", "publisher", "analysis", "schemas", "flex_template"}
# Imports inside `try: ... except ImportError` whose distribution the lock may leave out:
# {top-level module: why the code runs without it}. None: every guarded import is locked.
OPTIONAL_IMPORTS: dict[str, str] = {}


def imports(path: pathlib.Path) -> list[tuple[int, str, bool]]:
    """(line, dotted module, guarded by `except ImportError`) of each absolute import;
    `from a import b` gives `a.b` (b may be a module)."""
    tree = ast.parse(path.read_text(), str(path))
    guarded = set()
    for node in ast.walk(tree):
        caught = [ast.unparse(h.type) for h in getattr(node, "handlers", ()) if h.type]
        if isinstance(node, ast.Try) and re.search(r"\b(ImportError|ModuleNotFound)", str(caught)):
            guarded |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found += [(node.lineno, name, id(node) in guarded) for name in names]
    return found


@functools.cache
def top_level_distributions() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


@functools.cache
def distribution_files(dist: str) -> frozenset[str]:
    return frozenset(str(f) for f in importlib.metadata.files(dist) or ())


def distributions_of(module: str) -> set[str]:
    """The installed distributions that provide a dotted module: packages_distributions()
    for its top-level name; a name several share (a namespace package such as `google`)
    narrowed to the distributions whose files hold the longest prefix of the module."""
    parts = module.split(".")
    owners = set(top_level_distributions().get(parts[0], ()))
    for n in range(len(parts), 1, -1) if len(owners) > 1 else ():
        prefix = "/".join(parts[:n])
        holding = {
            dist
            for dist in owners
            if any(
                f.startswith(prefix + "/")
                or f == prefix + ".py"
                or (f.startswith(prefix + ".") and f.endswith((".so", ".pyd")))
                for f in distribution_files(dist)
            )
        }
        if holding:
            return holding
    return owners


def test_the_lock_covers_every_import_of_the_images_code():
    """The image holds the CPU lock and nothing else: whatever streaming/, publisher/,
    analysis/ and the template's entry file import must come from a locked distribution."""
    pins = lock()
    missing, guarded_seen = [], set()
    for path in ENTRY_CODE:
        for line, module, guarded in imports(path):
            top = module.split(".")[0]
            if top in sys.stdlib_module_names or top in FIRST_PARTY:
                continue
            if guarded:
                guarded_seen.add(top)
                if top in OPTIONAL_IMPORTS:
                    continue
            where = f"{path.relative_to(ROOT)}:{line} imports {module}"
            dists = distributions_of(module)
            if not dists:
                missing.append(f"{where}, which no installed distribution provides")
            missing += [
                f"{where} from {dist}, not in requirements.lock"
                for dist in sorted(dists)
                if canonicalize_name(dist) not in pins
            ]
    assert not missing, "\n".join(missing)
    assert set(OPTIONAL_IMPORTS) <= guarded_seen, "OPTIONAL_IMPORTS names an unguarded import"


def test_imports_are_read_with_their_guards(tmp_path):
    module = tmp_path / "m.py"
    module.write_text(
        "import os, numpy.linalg\n"
        "from google.cloud import storage\n"
        "try:\n"
        "    from sklearn.manifold import TSNE\n"
        "except ImportError:\n"
        "    TSNE = None\n"
        "from . import sibling\n"
    )
    assert imports(module) == [
        (1, "os", False),
        (1, "numpy.linalg", False),
        (2, "google.cloud.storage", False),
        (4, "sklearn.manifold.TSNE", True),
    ]
    assert {canonicalize_name(d) for d in distributions_of("google.cloud.storage")} == {
        "google-cloud-storage"
    }


# --- the image: its bases, its stages, what it installs


def test_every_base_image_is_named_once_at_the_top():
    images = base_images()
    assert images, "no ARG *_IMAGE=... before the first FROM"
    used = [arg for arg, _alias, _body in stages()]
    assert sorted(used) == sorted(images), "each base ARG is the FROM of exactly one stage"
    aliases = {alias for _arg, alias, _body in stages() if alias}
    for op, args in instructions():
        copy_from = re.match(r"--from=(\S+)", args) if op == "COPY" else None
        assert not copy_from or copy_from.group(1) in aliases, f"COPY {args}: names an image"
    for name, image in images.items():
        tagged = image.split("@")[0]
        naming = [(op, args) for op, args in instructions() if tagged in args]
        assert naming == [("ARG", f"{name}={image}")], f"{tagged} is named outside its ARG"


def test_the_final_stage_is_slim_python_with_beams_boot_from_the_locked_release():
    images = base_images()
    by_alias = {alias: images[arg] for arg, alias, _body in stages() if alias}
    final_arg, _alias, final = stages()[-1]

    python = re.fullmatch(r"python:(\d+\.\d+)-slim(?:-\w+)?(?:@sha256:\w+)?", images[final_arg])
    assert python, f"the final stage is a slim Debian python image, is {images[final_arg]}"
    assert python.group(1) == lock_python(), "the image's Python is not the lock's"
    python_requires = Requirement("python" + literal("python_requires")).specifier
    assert Version(python.group(1) + ".0") in python_requires

    copies = {
        tuple(shlex.split(args)[1:]): by_alias[re.match(r"--from=(\S+)", args).group(1)]
        for op, args in final
        if op == "COPY" and args.startswith("--from=")
    }
    beam_image = copies[("/opt/apache/beam", "/opt/apache/beam")]
    beam = re.fullmatch(r"apache/beam_python(\d+\.\d+)_sdk:([^@]+)(?:@sha256:\w+)?", beam_image)
    assert beam, f"/opt/apache/beam must come from Beam's SDK image, comes from {beam_image}"
    assert beam.group(1) == python.group(1)
    assert Version(beam.group(2)) == lock()["apache-beam"]
    beam_req = next(
        Requirement(r)
        for r in literal("install_requires")
        if canonicalize_name(Requirement(r).name) == "apache-beam"
    )
    assert Version(beam.group(2)) in beam_req.specifier

    launcher = "/opt/google/dataflow/python_template_launcher"
    launcher_image = copies[(launcher, launcher)]
    assert f"/python{python.group(1).replace('.', '')}-template-launcher-base:" in launcher_image


def final_stage_run(marker: str) -> str:
    return next(args for op, args in stages()[-1][2] if op == "RUN" and marker in args)


def run_guard(images: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["sh", "-c", final_stage_run("tools/pin_images.sh")],
        env={"PATH": os.environ["PATH"], **images},
        capture_output=True,
        text=True,
    )


def pin(dockerfile: pathlib.Path, fake_bin: pathlib.Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(ROOT / "tools" / "pin_images.sh")],
        env={**os.environ, "PATH": f"{fake_bin}:/usr/bin:/bin", "DOCKERFILE": str(dockerfile)},
        capture_output=True,
        text=True,
    )


def fake_tool(directory: pathlib.Path, name: str, script: str) -> None:
    directory.mkdir(exist_ok=True)
    (directory / name).write_text("#!/bin/sh\n" + script)
    (directory / name).chmod(0o755)


def test_the_build_refuses_a_base_not_pinned_by_digest(tmp_path):
    _arg, _alias, final = stages()[-1]
    declared = {n for op, args in final if op == "ARG" for n in re.findall(r"(\w+)", args)}
    assert set(base_images()) <= declared, "the final stage must see every base ARG"
    checked = re.findall(r'"\$(\w+_IMAGE)"', final_stage_run("tools/pin_images.sh"))
    assert sorted(checked) == sorted(base_images()), "the guard checks every base"

    unpinned = {k: v.split("@")[0] for k, v in base_images().items()}
    refused = run_guard(unpinned)
    assert refused.returncode != 0
    assert len(refused.stderr.splitlines()) == 1, refused.stderr
    assert all(image in refused.stderr for image in unpinned.values())

    one_left = {**unpinned, "PYTHON_IMAGE": unpinned["PYTHON_IMAGE"] + "@sha256:" + "0" * 64}
    assert run_guard(one_left).returncode != 0
    assert unpinned["PYTHON_IMAGE"] not in run_guard(one_left).stderr

    digests = {k: f"{v}@sha256:{'ab' * 32}" for k, v in unpinned.items()}
    assert run_guard(digests).returncode == 0, run_guard(digests).stderr
    short = {**digests, "BEAM_IMAGE": digests["BEAM_IMAGE"][:-1]}
    assert run_guard(short).returncode != 0


@pytest.mark.parametrize("tool", ["crane", "docker"])
def test_pin_images_writes_each_tags_digest_in_the_one_place(tmp_path, tool):
    fake_bin = tmp_path / "bin"
    digest_of = 'printf "sha256:%s\\n" "$(printf %s "$REF" | sha256sum | cut -c1-64)"'
    if tool == "crane":
        fake_tool(fake_bin, "crane", f'[ "$1" = digest ] || exit 2\nREF=$2\n{digest_of}\n')
    else:  # docker buildx imagetools inspect --format '{{json .Manifest}}' REF
        fake_tool(
            fake_bin,
            "docker",
            '[ "$1" = buildx ] || exit 2\n[ "$2" = version ] && exit 0\n'
            "for REF; do :; done\n"
            f'printf \'{{"mediaType": "index", "digest": "%s", "manifests": '
            f'[{{"digest": "sha256:%064d"}}]}}\\n\' "$({digest_of})" 7\n',
        )
    (fake_bin / "python3").symlink_to(sys.executable)
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(DOCKERFILE)

    first = pin(dockerfile, fake_bin)
    assert first.returncode == 0, first.stderr
    pinned = base_images(dockerfile.read_text())
    assert len(first.stdout.splitlines()) == len(pinned)
    for name, image in pinned.items():
        ref = base_images()[name].split("@")[0]
        expected = subprocess.run(
            ["sh", "-c", digest_of], env={"REF": ref}, capture_output=True, text=True
        ).stdout.strip()
        assert image == f"{ref}@{expected}"
    changed = [
        (a, b)
        for a, b in zip(DOCKERFILE.splitlines(), dockerfile.read_text().splitlines())
        if a != b
    ]
    assert len(changed) == len(pinned) and all(a.startswith("ARG ") for a, _ in changed)
    assert run_guard(pinned).returncode == 0

    again = pin(dockerfile, fake_bin)  # a pinned line gets its tag's digest again
    assert again.returncode == 0 and base_images(dockerfile.read_text()) == pinned


def test_pin_images_writes_nothing_without_a_digest(tmp_path):
    fake_bin = tmp_path / "bin"
    fake_tool(fake_bin, "crane", "echo 'UNAUTHORIZED: authentication required' >&2\nexit 1\n")
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(DOCKERFILE)
    failed = pin(dockerfile, fake_bin)
    assert failed.returncode != 0 and dockerfile.read_text() == DOCKERFILE


def install_runs() -> list[str]:
    return [args for op, args in instructions() if op == "RUN" and "pip install" in args]


def test_the_image_installs_exactly_the_lock_and_checks_it():
    runs = install_runs()
    installs = [cmd for run in runs for cmd in re.split(r"&&", run) if "pip install" in cmd]
    assert installs and all("--no-deps" in cmd for cmd in installs), "pip resolves nothing"
    lock_install = shlex.split(installs[0])
    assert lock_install[lock_install.index("-r") + 1] == "requirements.lock"
    assert "${EXTRAS:+-r requirements-$EXTRAS.lock}" in installs[0]
    assert re.search(r"--no-build-isolation \.\s*$", installs[1]), "then the project itself"
    check = final_stage_run("tools/lock_check.py")
    assert "pip check" in check
    installed = "requirements.lock ${EXTRAS:+requirements-$EXTRAS.lock}"
    assert f"python tools/lock_check.py {installed}" in check, "the lock files installed"
    assert runs.index(check) == len(runs) - 1, "after every install"


def ci_step_one() -> str:
    text = (ROOT / ".ci" / "run").read_text()
    return text[text.index("# 1.") : text.index("# 2.")]


def pip_installs(text: str) -> list[list[str]]:
    return [shlex.split(m) for m in re.findall(r"pip install ([^&\n]+)", text)]


def test_ci_makes_its_virtualenv_from_the_lock_alone():
    """The entry file starts in a virtualenv that holds exactly the lock: CI installs it
    with no resolver, checks its freeze with the image's script, then starts the file."""
    step = ci_step_one()
    installs = pip_installs(step)
    assert [a for a in installs[0] if a != "-q"] == ["--no-deps", "-r", "requirements.lock"]
    assert installs[1][-2:] == ["-e", "."] and "--no-deps" in installs[1]
    assert len(installs) == 2, "nothing else goes into CI's virtualenv"
    order = [
        step.index(s)
        for s in (
            "pip install",
            ".venv/bin/pip check",
            ".venv/bin/python tools/lock_check.py requirements.lock\n",
            ".venv/bin/python flex_template/main.py --help",
        )
    ]
    assert order == sorted(order)
    readme = (ROOT / "README.md").read_text()
    quick_start = re.search(r"```sh\n(python3 -m venv .*)\n", readme).group(1)
    assert pip_installs(quick_start) == installs, "CI runs the README's install"


def test_lock_check_names_each_difference(tmp_path):
    lock_file = tmp_path / "requirements.lock"
    lock_file.write_text("# generated\nalpha==1.0\nBeta_Pkg==2.0\ngamma==3.0\n")
    freeze = tmp_path / "freeze.txt"
    freeze.write_text("alpha==1.0\nbeta-pkg==2.1\ndelta==4.0\npip==24.0\n")
    proc = run_lock_check("--freeze", freeze, lock_file)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        "lock_check: Beta_Pkg: installed 2.1, locked 2.0",
        "lock_check: delta==4.0: installed, not in the lock",
        "lock_check: gamma==3.0: locked, not installed",
    ]


def test_lock_check_passes_exactly_the_lock(tmp_path):
    freeze = tmp_path / "freeze.txt"
    cpu = [ln for ln in LOCK.read_text().splitlines() if ln and not ln.startswith("#")]
    gpu = [ln for ln in GPU_LOCK.read_text().splitlines() if ln and not ln.startswith("#")]
    # pip freeze spells names as installed; pip and the project are not compared
    respelled = [name.replace("_", "-").upper() + "==" + version for name, version in pairs(cpu)]
    freeze.write_text("\n".join(respelled + ["pip==24.0", "image-embeddings @ file:///template"]))
    assert run_lock_check("--freeze", freeze, LOCK).returncode == 0
    freeze.write_text("\n".join(cpu + gpu))
    assert run_lock_check("--freeze", freeze, LOCK, GPU_LOCK).returncode == 0
    cpu_only = run_lock_check("--freeze", freeze, LOCK)
    assert cpu_only.returncode == 1 and len(cpu_only.stderr.splitlines()) == len(gpu)
    freeze.write_text("-e /template\n")
    assert run_lock_check("--freeze", freeze, LOCK).returncode == 2


def pairs(lines: list[str]) -> list[tuple[str, str]]:
    return [tuple(line.split("==")) for line in lines]


def test_lock_check_reads_this_interpreters_freeze():
    listed = load_lock_check().freeze()
    assert any(line.lower().startswith("apache-beam==") for line in listed)
    assert not [ln for ln in listed if re.match(r"(pip|image[-_]embeddings)\b", ln, re.I)]


def run_lock_check(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "tools" / "lock_check.py"), *map(str, args)],
        capture_output=True,
        text=True,
    )


def load_lock_check():
    """tools/lock_check.py by its path (tf2onnx installs a top-level `tools` too)."""
    spec = importlib.util.spec_from_file_location("lock_check", ROOT / "tools" / "lock_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_entrypoint_is_beams_worker_boot():
    entrypoints = [args for op, args in instructions() if op == "ENTRYPOINT"]
    assert ast.literal_eval(entrypoints[-1]) == ["/opt/apache/beam/boot"]


def test_image_holds_every_package_and_the_template_entry_file():
    copied = {
        source
        for op, args in instructions()
        if op == "COPY" and not args.startswith("--from")
        for source in shlex.split(args)[:-1]
    }
    packages = {
        p.split(".")[0]
        for p in ast.literal_eval(
            next(k.value for k in setup_kwargs()["packages"].keywords if k.arg == "include")
        )
    }
    assert packages <= copied, f"not copied into the image: {packages - copied}"
    needed = {"setup.py", "pyproject.toml", LOCK.name, GPU_LOCK.name, "tools/lock_check.py"}
    assert needed <= copied, f"not copied into the image: {needed - copied}"
    ignored = {
        ln.strip().strip("/")
        for ln in (ROOT / ".dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    }
    assert not {c.split("/")[0] for c in copied} & ignored, ".dockerignore leaves it out"
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(a for op, a in instructions() if op == "ENV")))
    workdir = [a for op, a in instructions() if op == "WORKDIR"][-1]
    entry = pathlib.PurePosixPath(env["FLEX_TEMPLATE_PYTHON_PY_FILE"]).relative_to(workdir)
    assert (ROOT / entry).is_file() and entry.parts[0] in copied


def test_gpu_build_arg_names_an_extra_and_its_lock():
    assert "EXTRAS=gpu" in DOCKERFILE  # documented at the top
    assert "gpu" in literal("extras_require")
    assert (ROOT / "requirements-gpu.lock").is_file()
    lock_sh = (ROOT / "tools" / "lock.sh").read_text()
    assert "requirements.lock" in lock_sh and "requirements-gpu.lock" in lock_sh
