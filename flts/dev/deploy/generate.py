"""Every generated file of a target, and writing or comparing them with the committed ones."""
from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import yaml

from flts.dev import REPO
from flts.dev.deploy.accounts import policy_files
from flts.dev.deploy.cluster import DEFAULTS, GENERATED, RenderOptions
from flts.dev.deploy.images import dockerfiles, requirements_files
from flts.dev.deploy.knative import knative_files
from flts.dev.deploy.openfaas import dispatcher_dockerfile, dispatcher_objects, stack


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data) -> bool:  # write shared dicts out in full, no &id001 anchors
        return True


def _yaml(target: str, objects: Iterable[dict] | dict) -> str:
    """A generated YAML file: the header, then one document (a dict) or a `---` stream (a list)."""
    options = {"Dumper": _Dumper, "sort_keys": False, "default_flow_style": False, "width": 120}
    if isinstance(objects, dict):
        body = yaml.dump(objects, **options)
    else:
        body = yaml.dump_all(list(objects), explicit_start=True, **options)
    return f"# {GENERATED.format(target=target)}\n{body}"


def _knative(options: RenderOptions) -> dict[str, str]:
    # The images and their requirements go with this target: Knative runs them as they are.
    files = {path: _yaml("knative", objects) for path, objects in knative_files(options).items()}
    return {**files, **dockerfiles(options.registry), **requirements_files(), **policy_files()}


def _openfaas(options: RenderOptions) -> dict[str, str]:
    return {
        "stack.yml": _yaml("openfaas", stack(options)),
        "deploy/openfaas/dispatcher.yaml": _yaml("openfaas", dispatcher_objects(options.registry)),
        "deploy/openfaas/dispatcher.Dockerfile": dispatcher_dockerfile(options.registry),
        **policy_files(),  # both targets' accounts: rendering either keeps them current
    }


_RENDERERS: dict[str, Callable[[RenderOptions], dict[str, str]]] = {"knative": _knative, "openfaas": _openfaas}
TARGETS = tuple(_RENDERERS)


def render(target: str, options: RenderOptions = DEFAULTS) -> dict[str, str]:
    """Repository path → file content for one target."""
    if target not in _RENDERERS:
        raise ValueError(f"unknown target {target!r} (choose from {', '.join(TARGETS)})")
    return _RENDERERS[target](options)


def drift(target: str, repo: Path = REPO, options: RenderOptions = DEFAULTS) -> list[str]:
    """Paths whose committed content differs from what the generator renders."""
    return [path for path, content in render(target, options).items()
            if not (repo / path).exists() or (repo / path).read_text() != content]


def write(target: str, repo: Path = REPO, options: RenderOptions = DEFAULTS) -> list[Path]:
    written = []
    for path, content in render(target, options).items():
        file = repo / path
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(content)
        written.append(file)
    return written
