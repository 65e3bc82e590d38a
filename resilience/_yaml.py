"""A safe YAML reader that remembers where every value came from.

It composes the YAML node graph (which constructs nothing, so no tag can execute code), then
builds plain data itself, refusing what a policy file has no use for:

- any tag outside the YAML core schema (``!!python/...``, ``!custom``): nothing executes;
- duplicate keys in a mapping (PyYAML silently keeps the last one);
- non-string mapping keys;
- YAML 1.1 booleans: only ``true`` and ``false`` are booleans (YAML 1.2); ``on``, ``off``,
  ``yes`` and ``no`` are strings, so ``mode: off`` means what it says;
- inputs past the documented limits (size, nesting depth, node count after alias expansion),
  which stops "billion laughs" alias bombs before they expand.

Every value's position is kept in a map from its path (a tuple of keys and indices) to a
1-based ``(line, column)``, so that validation errors can point at the file.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from ._errors import PolicyIssue

__all__ = [
    "MAX_DEPTH",
    "MAX_FILE_BYTES",
    "MAX_NODES",
    "Located",
    "Path",
    "read_limited",
    "read_yaml",
]

#: Largest policy file accepted, in bytes.
MAX_FILE_BYTES = 1_000_000
#: Deepest nesting of mappings and sequences accepted.
MAX_DEPTH = 32
#: Most nodes accepted after aliases are expanded.
MAX_NODES = 50_000

Path = tuple[str | int, ...]

_CORE = "tag:yaml.org,2002:"
_SCALAR_TAGS = {f"{_CORE}{t}" for t in ("str", "int", "float", "bool", "null")}
_MAP_TAG = f"{_CORE}map"
_SEQ_TAG = f"{_CORE}seq"
_MERGE_TAG = f"{_CORE}merge"
_TIMESTAMP_TAG = f"{_CORE}timestamp"
_BOOL_TAG = f"{_CORE}bool"


class _LimitExceededError(Exception):
    """Raised inside the walk when a limit is crossed; turned into one issue."""

    def __init__(self, node: Node, message: str, hint: str) -> None:
        super().__init__(message)
        self.node = node
        self.message = message
        self.hint = hint


@dataclass
class Located:
    """Plain data read from YAML, with the position of every path in it."""

    data: Any
    positions: dict[Path, tuple[int, int]] = field(default_factory=dict)
    #: paths whose value the reader already reported (bad tag, non-finite number)
    reported: set[Path] = field(default_factory=set)

    def position(self, path: Path) -> tuple[int, int]:
        """The position of ``path``, or of its nearest ancestor that has one."""
        while path:
            found = self.positions.get(path)
            if found is not None:
                return found
            path = path[:-1]
        return self.positions.get((), (1, 1))


def format_path(path: Path) -> str:
    """``('policies', 'search', 'chain', 1, 'type')`` -> ``policies.search.chain[1].type``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _mark(node: Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


class _Builder:
    def __init__(self, file: str) -> None:
        self.file = file
        self.positions: dict[Path, tuple[int, int]] = {}
        self.issues: list[PolicyIssue] = []
        self.reported: set[Path] = set()
        self.nodes = 0
        self._constructor = yaml.SafeLoader("")

    def issue(self, node: Node, path: Path, message: str, hint: str = "") -> None:
        line, col = _mark(node)
        self.issues.append(PolicyIssue(self.file, line, col, format_path(path), message, hint))

    def build(self, node: Node, path: Path, depth: int) -> Any:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise _LimitExceededError(
                node,
                f"the file expands to more than {MAX_NODES} values",
                "remove alias chains (&anchor / *alias) that multiply content",
            )
        if depth > MAX_DEPTH:
            raise _LimitExceededError(
                node, f"nesting deeper than {MAX_DEPTH} levels", "flatten the file"
            )
        self.positions.setdefault(path, _mark(node))
        if isinstance(node, MappingNode):
            return self._mapping(node, path, depth)
        if isinstance(node, SequenceNode):
            if node.tag != _SEQ_TAG:
                self._bad_tag(node, path)
            return [self.build(item, (*path, i), depth + 1) for i, item in enumerate(node.value)]
        return self._scalar(node, path)

    def _bad_tag(self, node: Node, path: Path) -> None:
        self.reported.add(path)
        self.issue(
            node,
            path,
            f"tag {node.tag!r} is not allowed",
            "policy files use plain YAML values only; remove the tag",
        )

    def _mapping(self, node: MappingNode, path: Path, depth: int) -> dict[str, Any]:
        if node.tag != _MAP_TAG:
            self._bad_tag(node, path)
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                self.issue(key_node, path, "merge keys (<<) are not supported", "write keys out")
                continue
            if not isinstance(key_node, ScalarNode) or key_node.tag != f"{_CORE}str":
                self.issue(key_node, path, "mapping keys must be plain strings", "quote the key")
                self.reported.add(path)
                continue
            key = str(key_node.value)
            if key in out:
                first = self.positions.get((*path, key), (0, 0))
                self.issue(
                    key_node,
                    (*path, key),
                    f"duplicate key {key!r} (first defined at line {first[0]})",
                    "keep one of them; YAML would silently use the last",
                )
                continue
            self.positions[(*path, key)] = _mark(key_node)
            out[key] = self.build(value_node, (*path, key), depth + 1)
        return out

    def _scalar(self, node: Node, path: Path) -> Any:
        if node.tag == _TIMESTAMP_TAG and isinstance(node, ScalarNode) and node.style is None:
            return str(node.value)  # a plain 2024-01-01 means the text; no field takes dates
        if node.tag == _BOOL_TAG and str(node.value).lower() not in ("true", "false"):
            # YAML 1.2: only true and false are booleans. PyYAML's YAML 1.1 also reads on, off,
            # yes and no as booleans, which would turn "mode: off" into false.
            return str(node.value)
        if node.tag not in _SCALAR_TAGS:
            self._bad_tag(node, path)
            return None
        assert isinstance(node, ScalarNode)
        try:
            value = self._constructor.construct_object(node, deep=True)
        except (ValueError, yaml.YAMLError) as exc:  # e.g. an int of more than 4,300 digits
            self.reported.add(path)
            if node.tag == f"{_CORE}int":  # Python's own message would advise a sys call
                digits = sum(ch.isdigit() for ch in str(node.value))
                reason = f"an integer of {digits} digits is too large"
            else:
                reason = (str(exc).splitlines() or [type(exc).__name__])[0]
            self.issue(
                node, path, f"value cannot be read: {reason}", "write a smaller or plainer value"
            )
            return None
        if isinstance(value, float) and not math.isfinite(value):
            self.reported.add(path)
            self.issue(node, path, f"{node.value!r} is not a finite number", "use a finite value")
            return None
        return value


def read_limited(path: str) -> bytes:
    """The bytes of the file at ``path``, at most ``MAX_FILE_BYTES + 1`` of them: enough for
    :func:`read_yaml` to tell that it is over the limit, without reading a huge file (or an
    endless one, such as ``/dev/zero``) into memory.

    Raises:
        OSError: the file cannot be read.
    """
    with open(path, "rb") as handle:
        return handle.read(MAX_FILE_BYTES + 1)


def read_yaml(
    text: str | bytes, file: str = "<string>"
) -> tuple[Located | None, list[PolicyIssue]]:
    """Read ``text`` as a policy document.

    Returns:
        The data with positions (``None`` if nothing usable was read) and every issue found.
    """
    size = len(text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text)
    if size > MAX_FILE_BYTES:
        return None, [
            PolicyIssue(
                file,
                0,
                0,
                "",
                f"file is larger than the limit of {MAX_FILE_BYTES} bytes",
                "split the policies or remove unused content",
            )
        ]
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            return None, [
                PolicyIssue(
                    file,
                    0,
                    0,
                    "",
                    f"not UTF-8 text ({exc.reason} at byte {exc.start})",
                    "save the file as UTF-8",
                )
            ]
    try:
        documents = list(_compose_all(text))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        problem = exc.problem or exc.context or "invalid YAML"
        return None, [
            PolicyIssue(
                file,
                line,
                col,
                "",
                f"YAML syntax error: {problem}",
                "fix the YAML syntax at this position",
            )
        ]
    except yaml.YAMLError as exc:
        return None, [PolicyIssue(file, 0, 0, "", f"YAML error: {exc}", "fix the YAML syntax")]
    except RecursionError:
        return None, [
            PolicyIssue(
                file, 0, 0, "", f"nesting deeper than {MAX_DEPTH} levels", "flatten the file"
            )
        ]
    if not documents:
        return None, [
            PolicyIssue(
                file,
                1,
                1,
                "",
                "the file is empty",
                "start it with 'version: 1' and a 'policies:' section",
            )
        ]
    if len(documents) > 1:
        line, col = _mark(documents[1])
        return None, [
            PolicyIssue(
                file,
                line,
                col,
                "",
                "more than one YAML document",
                "keep a single document (remove '---' separators)",
            )
        ]
    builder = _Builder(file)
    try:
        data = builder.build(documents[0], (), 0)
    except _LimitExceededError as exc:
        line, col = _mark(exc.node)
        return None, [PolicyIssue(file, line, col, "", exc.message, exc.hint)]
    return Located(data, builder.positions, builder.reported), builder.issues


def _compose_all(text: str) -> Iterator[Node]:
    loader = yaml.SafeLoader(text)
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is not None:
                yield node
    finally:
        loader.dispose()
