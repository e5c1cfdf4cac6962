"""The images: pinned requirements (the whole closure, as tested), layers, the build context, the build backend.

None of the images is built here (no Docker engine): what a build would read is checked instead.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from importlib.metadata import distribution
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement

from flts.dev import deploy
from flts.dev.deploy import images

REPO = Path(__file__).resolve().parent.parent
IMAGE_PYTHON = {**default_environment(), "python_version": "3.11", "python_full_version": "3.11.9",
                "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
                "os_name": "posix", "implementation_name": "cpython", "platform_python_implementation": "CPython"}
EXTRAS = sorted(set(images.REQUIREMENTS.values()))
ROOT_CONTEXT_DOCKERFILES = sorted(REPO.glob("functions/*/Dockerfile")) + [REPO / "deploy/openfaas/dispatcher.Dockerfile"]


def requirement_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


# --------------------------------------------------------------------------- requirements
def installed_closure(extra: str) -> set[str]:
    """What pip installs for flts[extra] in the image's Python, from the installed packages' metadata
    (this virtualenv holds exactly the lock's versions)."""
    todo = [(images.normal(name), set(Requirement(f"{written}").extras))
            for name, written in images.direct_requirements(extra).items()]
    seen: dict[str, set[str]] = {}
    while todo:
        name, extras = todo.pop()
        if name in seen and extras <= seen[name]:
            continue
        seen[name] = seen.get(name, set()) | extras
        for requirement in map(Requirement, distribution(name).requires or []):
            marker = requirement.marker
            if marker is None or any(marker.evaluate({**IMAGE_PYTHON, "extra": e}) for e in seen[name] or {""}):
                todo.append((images.normal(requirement.name), set(requirement.extras)))
    return set(seen)


@pytest.mark.parametrize("extra", EXTRAS)
def test_requirements_pin_every_package_the_image_installs_to_the_lock(extra):
    """The whole closure, so pip picks nothing on the day of the build (direct pins alone let
    python-dateutil and gunicorn drift from what the tests ran)."""
    pins = requirement_lines(images.requirements_txt(extra) + (images.cuda_requirements_txt(extra) or ""))
    pinned = {images.normal(Requirement(line).name): str(Requirement(line).specifier) for line in pins}
    locked = images.read_lock((REPO / "requirements.lock").read_text())
    assert all(spec == f"=={locked[name].version}" for name, spec in pinned.items())
    missing = installed_closure(extra) - set(pinned)
    assert not missing, f"flts[{extra or 'core'}] installs {sorted(missing)}, which its requirements leave to pip"


def test_the_drift_seen_before_cannot_happen():
    for extra in ("train", "eval", "preprocess"):
        text = images.requirements_txt(extra)
        assert "\npython-dateutil==2.9.0.post0\n" in text and "\ngunicorn==26.2.0\n" in text, extra


def test_cuda_libraries_are_apart_and_only_torch_needs_them():
    """requirements-cuda.txt holds what only PyPI's CUDA torch needs: a CPU wheel drops it all."""
    locked = images.read_lock((REPO / "requirements.lock").read_text())
    cuda = {n for n in locked if images.CUDA_ONLY.match(n)}
    assert cuda and all(locked[n].required_by <= cuda | {"torch"} for n in cuda)
    assert images.cuda_requirements_txt("infer") is None
    train = requirement_lines(images.requirements_txt("train"))
    assert any(line.startswith("torch==") for line in train) and not any(images.CUDA_ONLY.match(line) for line in train)
    assert {images.normal(Requirement(line).name) for line in requirement_lines(images.cuda_requirements_txt("train"))} == cuda


def test_inference_requirements_stay_light():
    names = {Requirement(line).name for line in requirement_lines(images.requirements_txt("infer"))}
    assert "onnxruntime" in names and names.isdisjoint({"torch", "pandas", "mlflow", "prophet"})


def test_a_dependency_missing_from_the_lock_is_named(tmp_path):
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    lock = (REPO / "requirements.lock").read_text()
    (tmp_path / "requirements.lock").write_text(re.sub(r"(?m)^starlette==.*\n(    #.*\n)*", "", lock))
    with pytest.raises(ValueError, match="starlette .*not in requirements.lock"):
        images.requirements_txt("infer", repo=tmp_path)


# --------------------------------------------------------------------------- layers
def run_lines(dockerfile: str) -> list[str]:
    """COPY, RUN and ARG lines of the final stage (the one the image is), continuations joined."""
    text = dockerfile.replace("\\\n", " ")
    final = text[text.rindex("\nFROM "):]
    return [line for line in final.splitlines() if line.startswith(("COPY", "RUN", "ARG"))]


@pytest.mark.parametrize("path", ROOT_CONTEXT_DOCKERFILES + [REPO / "template/flts-python/Dockerfile"],
                         ids=lambda p: str(p.relative_to(REPO)))
def test_dependencies_are_installed_before_the_code_is_copied(path):
    lines = run_lines(path.read_text())
    install = next(i for i, line in enumerate(lines) if "-r requirements.txt" in line)
    code = next(i for i, line in enumerate(lines) if re.search(r"COPY (--from=source /app|flts/)", line))
    assert install < code, "a code change would reinstall every dependency"
    assert all("requirements" in line for line in lines[:install] if line.startswith("COPY") and "--from" not in line)
    assert "ARG FLTS_FUNCTION" not in "\n".join(lines[:install])  # the dependency layer is per requirements only


def pip_calls(run: str, torch_index: str | None, tmp_path: Path, cuda_file: bool = True) -> list[str]:
    """The pip command lines a RUN line makes, with a stand-in pip that only records them."""
    bin_dir, work = tmp_path / "bin", tmp_path / "work"
    bin_dir.mkdir(exist_ok=True)
    work.mkdir(exist_ok=True)
    (bin_dir / "pip").write_text('#!/bin/sh\necho "pip $*" >> "$CALLS"\n')
    (bin_dir / "pip").chmod(0o755)
    for name in ("requirements.txt",) + (("requirements-cuda.txt",) if cuda_file else ()):
        (work / name).write_text("")
    calls = tmp_path / "calls"
    calls.unlink(missing_ok=True)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "CALLS": str(calls)}
    if torch_index is not None:
        env["TORCH_INDEX"] = torch_index
    subprocess.run(["sh", "-c", run.removeprefix("RUN ")], cwd=work, env=env, check=True)
    return calls.read_text().splitlines()


def test_train_image_takes_a_cpu_torch_index_as_a_build_argument_and_builds_without_one(tmp_path):
    lines = run_lines((REPO / "functions/train/Dockerfile").read_text())
    assert "ARG TORCH_INDEX=" in lines
    run = next(line for line in lines if "-r requirements.txt" in line)
    assert pip_calls(run, None, tmp_path) == ["pip install -r requirements.txt -r requirements-cuda.txt"]
    assert pip_calls(run, images.TORCH_CPU_INDEX, tmp_path) == [
        f"pip install --extra-index-url {images.TORCH_CPU_INDEX} -r requirements.txt"]


def test_the_template_installs_cuda_pins_only_where_there_are_some(tmp_path):
    run = next(line for line in run_lines((REPO / "template/flts-python/Dockerfile").read_text())
               if "-r requirements.txt" in line)
    assert pip_calls(run, "", tmp_path) == ["pip install -r requirements.txt -r requirements-cuda.txt"]
    assert pip_calls(run, images.TORCH_CPU_INDEX, tmp_path) == [
        f"pip install --extra-index-url {images.TORCH_CPU_INDEX} -r requirements.txt"]
    shutil.rmtree(tmp_path / "work")
    assert pip_calls(run, "", tmp_path, cuda_file=False) == ["pip install -r requirements.txt"]


# --------------------------------------------------------------------------- the build context
def docker_pattern(pattern: str) -> re.Pattern:
    """A .dockerignore pattern as Docker matches it (moby/patternmatcher): `*` and `?` within one
    path element, `**` across any number of them."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        else:
            out += {"*": "[^/]*", "?": "[^/]"}.get(pattern[i], re.escape(pattern[i]))
            i += 1
    return re.compile(f"^{out}$")


def read_dockerignore(text: str) -> list[tuple[re.Pattern, bool, str]]:
    """(regex, exclusion, cleaned pattern) per line, in order."""
    rules = []
    for line in (raw.strip() for raw in text.splitlines()):
        if line and not line.startswith("#"):
            negated = line.startswith("!")
            cleaned = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
            rules.append((docker_pattern(cleaned), negated, cleaned))
    return rules


def ignored(path: str, rules) -> bool:
    """Docker's rule: the last pattern that matches the path or one of its parents decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    result = False
    for regex, negated, _ in rules:
        if any(regex.match(c) for c in candidates):
            result = not negated
    return result


def context_files(root: Path, rules) -> dict[str, int]:
    """Path → size of every file `docker build` sends from `root`."""
    reincluded = [cleaned for _, negated, cleaned in rules if negated]
    sent = {}
    for folder, dirs, files in os.walk(root):
        rel = os.path.relpath(folder, root)
        prefix = "" if rel == "." else rel + "/"
        dirs[:] = [d for d in dirs if not ignored(prefix + d, rules)
                   or any(p.startswith(prefix + d + "/") for p in reincluded)]
        for name in files:
            if not ignored(prefix + name, rules) and not os.path.islink(os.path.join(folder, name)):
                sent[prefix + name] = os.path.getsize(os.path.join(folder, name))
    return sent


def test_the_repository_build_context_holds_what_the_images_copy_and_nothing_heavy():
    rules = read_dockerignore((REPO / ".dockerignore").read_text())
    sent = context_files(REPO, rules)
    for dockerfile in ROOT_CONTEXT_DOCKERFILES:
        for line in run_lines(dockerfile.read_text()):
            if line.startswith("COPY") and "--from" not in line:
                for source in line.split()[1:-1]:
                    assert any(p == source.rstrip("/") or p.startswith(source.rstrip("/") + "/") for p in sent), \
                        f"{dockerfile.relative_to(REPO)} copies {source}, which .dockerignore leaves out"
    for heavy in (".venv/", ".flts/", "mlruns/", "build/", ".git/", "data/", "tests/", "flts/dev/"):
        assert not [p for p in sent if p.startswith(heavy) or f"/{heavy}" in p], heavy
    assert sum(sent.values()) < 5_000_000, f"{sum(sent.values())} bytes sent to every build"


def test_a_dockerignore_that_lets_the_virtualenv_through_is_caught():
    planted = (REPO / ".dockerignore").read_text().replace("\n*\n", "\n", 1)  # no whitelist
    rules = read_dockerignore(planted)
    assert not ignored(".venv/lib/python3.11/site-packages/torch/__init__.py", rules)
    assert ignored(".venv/lib/x.py", read_dockerignore((REPO / ".dockerignore").read_text()))


def test_the_template_context_leaves_out_the_tooling_and_local_run_leftovers():
    rules = read_dockerignore((REPO / "template/flts-python/.dockerignore").read_text())
    for path in ("function/flts/dev/stack.py", "function/mlruns/1/meta.yaml", "function/flts/__pycache__/a.pyc"):
        assert ignored(path, rules), path
    for path in ("Dockerfile", "index.py", "function/main.py", "function/requirements.txt", "function/flts/spec.py"):
        assert not ignored(path, rules), path


# --------------------------------------------------------------------------- the build backend
def test_the_build_backend_is_pinned_to_the_lock_and_the_licence_is_spdx():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    locked = images.read_lock((REPO / "requirements.lock").read_text())
    assert project["build-system"]["requires"] == [f"setuptools=={locked['setuptools'].version}"]
    # setuptools >= 77 reads an SPDX string; the {text = ...} table stops building after 2027-02-18.
    assert project["project"]["license"] == "Apache-2.0"
    assert int(locked["setuptools"].version.split(".")[0]) >= 77


def test_the_generated_requirement_files_are_committed():
    assert deploy.drift("knative") == []
