"""References in YAML: compose, Kubernetes manifests, GitHub workflows, GitLab CI.

Files are composed into PyYAML nodes (not Python objects) so every scalar keeps its line
(``start_mark``), and custom tags (GitLab's ``!reference``) need no constructor.
"""

from __future__ import annotations

from collections.abc import Iterator

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from analytics.staticrefs.model import Found, StaticRef, Warn
from analytics.staticrefs.variables import Unresolved, substitute
from warmer.oci.reference import InvalidReference, parse

try:
    _Loader: type[yaml.SafeLoader] = yaml.CSafeLoader  # type: ignore[assignment]
except AttributeError:  # libyaml not built in
    _Loader = yaml.SafeLoader

_STR = "tag:yaml.org,2002:str"
_NULL = "tag:yaml.org,2002:null"
_POD_LISTS = ("containers", "initContainers", "ephemeralContainers")
_GITLAB_KEYWORDS = {
    "default",
    "include",
    "stages",
    "variables",
    "workflow",
    "image",
    "services",
    "cache",
    "before_script",
    "after_script",
}


def get(node: Node | None, key: str) -> Node | None:
    if isinstance(node, MappingNode):
        for k, v in node.value:
            if isinstance(k, ScalarNode) and k.value == key:
                return v  # type: ignore[no-any-return]
    return None


def items(node: Node | None) -> Iterator[tuple[str, Node]]:
    if isinstance(node, MappingNode):
        for k, v in node.value:
            if isinstance(k, ScalarNode):
                yield str(k.value), v


def scalar(node: Node | None) -> str | None:
    if isinstance(node, ScalarNode) and node.tag == "tag:yaml.org,2002:str":
        return str(node.value)
    if isinstance(node, ScalarNode):  # e.g. an unquoted number: still text in the file
        return str(node.value)
    return None


class _Scan:
    def __init__(self, file: str, kind: str, found: Found, warn: Warn) -> None:
        self.file, self.kind, self.found, self.warn = file, kind, found, warn
        self.values: dict[str, str | None] | None = None  # None: no substitution (k8s)

    def ref(self, node: Node | None, context: str, platform: str | None = None) -> None:
        if node is None or node.tag.startswith("!"):
            return  # absent, or a custom tag (GitLab's `!reference [...]`) resolved elsewhere
        line = node.start_mark.line + 1
        if not isinstance(node, ScalarNode):
            shape = "a list" if isinstance(node, SequenceNode) else "a mapping"
            self.warn(f"{self.file}:{line}: {context}: {shape}, not an image reference")
            return
        text = str(node.value)
        if node.tag not in (_STR, _NULL):  # `image: 5`, `image: true`: not text in YAML
            kind = node.tag.rsplit(":", 1)[-1]
            self.warn(f"{self.file}:{line}: {context}: {text!r} is a YAML {kind}, not a string")
            return
        value = text.strip()
        if self.values is not None:
            try:
                value = substitute(value, self.values)
            except Unresolved as exc:
                self.warn(f"{self.file}:{line}: {context} {text!r}: ${{{exc.name}}} has no value")
                return
        if "${{" in value or "$" in value:
            self.warn(f"{self.file}:{line}: {context} {text!r}: an expression, not a reference")
            return
        try:
            ref = parse(value)
        except InvalidReference as exc:
            self.warn(f"{self.file}:{line}: {context}: {exc}")
            return
        self.found(StaticRef(self.file, line, ref, self.kind, context, platform))

    # -- kinds ------------------------------------------------------------------
    def compose(self, doc: Node) -> None:
        self.values = {}  # compose interpolates from the environment: use defaults only
        for _name, svc in items(get(doc, "services")):
            self.ref(get(svc, "image"), "image", scalar(get(svc, "platform")))

    def kubernetes(self, doc: Node) -> None:
        if get(doc, "kind") is None or get(doc, "apiVersion") is None:
            return
        self._seen: set[int] = set()
        self._pods(doc, 0)

    def _pods(self, node: Node, depth: int) -> None:
        # Aliases make the node graph a DAG (a "billion laughs" file is a few hundred
        # nodes referenced 10^9 times over): each node is visited once.
        if depth > 20 or id(node) in self._seen:
            return
        self._seen.add(id(node))
        if isinstance(node, MappingNode):
            for key, value in items(node):
                if key in _POD_LISTS and isinstance(value, SequenceNode):
                    for c in value.value:
                        self.ref(get(c, "image"), key)
                else:
                    self._pods(value, depth + 1)
        elif isinstance(node, SequenceNode):
            for v in node.value:
                self._pods(v, depth + 1)

    def github(self, doc: Node) -> None:
        for _job, spec in items(get(doc, "jobs")):
            container = get(spec, "container")
            if isinstance(container, ScalarNode):
                self.ref(container, "container")
            else:
                self.ref(get(container, "image"), "container")
            for _svc, svc in items(get(spec, "services")):
                self.ref(svc if isinstance(svc, ScalarNode) else get(svc, "image"), "service")
            steps = get(spec, "steps")
            if isinstance(steps, SequenceNode):
                for step in steps.value:
                    uses = get(step, "uses")
                    text = scalar(uses)
                    if uses is not None and text and text.startswith("docker://"):
                        shifted = ScalarNode(uses.tag, text[len("docker://") :], uses.start_mark)
                        self.ref(shifted, "uses")

    def gitlab(self, doc: Node) -> None:
        self.values = {}
        for key, value in items(get(doc, "variables")):
            text = scalar(value) if isinstance(value, ScalarNode) else scalar(get(value, "value"))
            self.values[key] = text
        self._gitlab_job(doc)
        self._gitlab_job(get(doc, "default"))
        for key, job in items(doc):
            if key not in _GITLAB_KEYWORDS and isinstance(job, MappingNode):
                self._gitlab_job(job)

    def _gitlab_job(self, job: Node | None) -> None:
        image = get(job, "image")
        self.ref(image if isinstance(image, ScalarNode) else get(image, "name"), "image")
        services = get(job, "services")
        if isinstance(services, SequenceNode):
            for svc in services.value:
                self.ref(svc if isinstance(svc, ScalarNode) else get(svc, "name"), "service")


def scan_yaml(file: str, text: str, kind: str, found: Found, warn: Warn) -> None:
    scan = _Scan(file, kind, found, warn)
    handler = getattr(scan, kind)
    try:
        for doc in yaml.compose_all(text, Loader=_Loader):
            if doc is None:
                continue
            if kind != "kubernetes" and not isinstance(doc, MappingNode):
                # Any YAML under a directory is tried as Kubernetes: only files named as
                # compose or CI files are known to be wrong when they are not a mapping.
                line = doc.start_mark.line + 1
                warn(f"{file}:{line}: a {kind} file's top level is not a mapping; skipped")
                continue
            handler(doc)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{file}:{mark.line + 1}" if mark is not None else file
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        warn(f"{where}: invalid YAML: {problem}")
