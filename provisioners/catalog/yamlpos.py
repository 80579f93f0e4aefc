"""YAML text -> PyYAML node tree + data, and positions in it.

PyYAML composes a node tree that keeps 1-based line:column marks and every mapping key; its
constructor then builds plain data, silently keeping only the last of duplicate keys. So the
tree is inspected (duplicate keys, YAML 1.1 booleans, secret-looking keys) *before* the data
is constructed, and issues found later are mapped back to a position with :func:`position`.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from provisioners.catalog.errors import CatalogIssue, single_issue

#: A field location as pydantic reports it: keys (str) and list indexes (int), outermost first.
Loc = tuple[Any, ...]

_MERGE_TAG = "tag:yaml.org,2002:merge"
_BOOL_TAG = "tag:yaml.org,2002:bool"


def load_yaml(text: str, file: Path | None,
              inspect: Callable[[yaml.MappingNode], list[CatalogIssue]]) -> tuple[yaml.Node | None, Any, list[CatalogIssue]]:
    """Compose ``text`` (one YAML document), run ``inspect`` on the root node when it is a
    mapping, then construct the data (PyYAML ``SafeLoader``: no Python object tags).

    Returns ``(root node or None, data, issues from inspect)``.

    Raises:
        CatalogError: the text is not valid YAML (with the line:column PyYAML reports).
    """
    try:
        _check_depth(text, file)
        loader = yaml.SafeLoader(text)
        try:
            root = loader.get_single_node()
            if root is not None:
                _check_expansion(root, file)
            # Before constructing: merge keys (<<) are flattened into the node tree in place.
            early = inspect(root) if isinstance(root, yaml.MappingNode) else []
            data = loader.construct_document(root) if root is not None else None
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        message = "YAML syntax error: " + " ".join(str(p) for p in (err.context, err.problem) if p)
        line, col = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        fix = "see the YAML around this position (indentation, quotes, ':')"
        if "'\\t'" in message:
            fix = "indent with spaces: YAML does not allow tabs for indentation"
        raise single_issue(file, "", line, col, message, fix=fix) from None
    except yaml.reader.ReaderError as err:
        # Control characters (NUL, BEL...) that YAML forbids; PyYAML gives a character offset only.
        line, col = offset_position(text, err.position)
        raise single_issue(file, "", line, col, f"character U+{err.character:04X} is not allowed in YAML",
                           "printable text", "remove it (an editor may show it as ^@ or not at all)") from None
    except yaml.YAMLError as err:
        raise single_issue(file, "", 0, 0, f"not valid YAML: {' '.join(str(err).split())}") from None
    return root, data, early


#: Deepest nesting of mappings/sequences accepted. The catalog needs about 6 levels; PyYAML's
#: composer (and the checks below) recurse once per level, so thousands would end in a
#: RecursionError instead of a message.
MAX_DEPTH = 64
#: Most nodes the document may have once aliases (``*name``) are expanded. The catalog has a few
#: hundred; a "billion laughs" document of nested aliases expands to millions and would keep
#: the loader busy for minutes.
MAX_EXPANDED_NODES = 100_000


def _check_depth(text: str, file: Path | None) -> None:
    """Raise CatalogError at the first collection nested deeper than :data:`MAX_DEPTH`. Uses
    PyYAML's event stream, which (unlike composing) does not recurse."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                raise single_issue(file, "", event.start_mark.line + 1, event.start_mark.column + 1,
                                   f"the YAML nests more than {MAX_DEPTH} levels deep",
                                   "a catalog a few levels deep",
                                   "close the brackets or fix the indentation around this position")
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1


def _check_expansion(root: yaml.Node, file: Path | None) -> None:
    """Raise CatalogError when an alias refers to a collection that contains it (a cycle, which
    every walk over the tree would follow forever), or when aliases expand the document beyond
    :data:`MAX_EXPANDED_NODES` nodes or :data:`MAX_DEPTH` levels (aliases of aliases nest without
    the text nesting). Each node is measured once (aliases share their node)."""
    measured: dict[int, tuple[int, int]] = {}
    on_path: set[int] = set()

    def refuse(node: yaml.Node, message: str, expected: str, fix: str) -> None:
        line, col = mark(node)
        raise single_issue(file, "", line, col, message, expected, fix)

    def measure(node: yaml.Node) -> tuple[int, int]:
        """(expanded size in nodes, expanded depth in levels) of ``node``."""
        key = id(node)
        if key in measured:
            return measured[key]
        if key in on_path:
            refuse(node, "an alias refers to the collection that contains it (a recursive anchor)",
                   "aliases to earlier, complete values", "remove the alias (*name) from inside its own anchor (&name)")
        on_path.add(key)
        parts: list[yaml.Node] = []
        if isinstance(node, yaml.MappingNode):
            parts = [n for pair in node.value for n in pair]
        elif isinstance(node, yaml.SequenceNode):
            parts = list(node.value)
        inner = [measure(n) for n in parts]
        on_path.discard(key)
        size = 1 + sum(s for s, _ in inner)
        depth = int(isinstance(node, yaml.CollectionNode)) + max((d for _, d in inner), default=0)
        if size > MAX_EXPANDED_NODES:
            refuse(node, f"aliases expand this value to more than {MAX_EXPANDED_NODES} YAML nodes",
                   "a catalog of at most a few thousand values",
                   "write the values out instead of nesting aliases (*name) of aliases")
        if depth > MAX_DEPTH:
            refuse(node, f"aliases nest this value more than {MAX_DEPTH} levels deep", "a catalog a few levels deep",
                   "write the values out instead of nesting aliases (*name) of aliases")
        measured[key] = (size, depth)
        return measured[key]

    measure(root)


def offset_position(data: str | bytes, offset: int) -> tuple[int, int]:
    """1-based (line, column) of the character (or byte) at ``offset`` in ``data``."""
    newline = "\n" if isinstance(data, str) else b"\n"
    line = data.count(newline, 0, offset) + 1
    return line, offset - (data.rfind(newline, 0, offset) + 1) + 1


def loc_to_path(loc: Loc) -> str:
    """``("vms", 0, "gpu")`` -> ``"vms[0].gpu"`` (the path as issues show it)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def mark(node: yaml.Node) -> tuple[int, int]:
    """The 1-based (line, column) where ``node`` starts."""
    return node.start_mark.line + 1, node.start_mark.column + 1


def children(node: yaml.Node, loc: Loc) -> Iterator[tuple[yaml.Node | None, yaml.Node, Loc]]:
    """The direct children of a mapping or sequence node as ``(key node, value node, value's
    loc)``; the key node is None for sequence items. Scalars have no children."""
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            yield k, v, loc + (getattr(k, "value", "?"),)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            yield None, item, loc + (i,)


def _walk(root: yaml.Node, loc: Loc) -> tuple[yaml.Node, yaml.Node | None, int]:
    """Follow ``loc`` down the node tree. Returns (deepest node reached, key node of the last
    mapping step taken, number of loc parts consumed)."""
    node, key_node, used = root, None, 0
    for part in loc:
        nxt = None
        if isinstance(node, yaml.MappingNode):
            # The last one: it is the value YAML keeps (and merged << keys come first).
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode) and k.value == str(part):
                    nxt, key_node = v, k
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            nxt, key_node = node.value[part], None
        if nxt is None:
            break
        node, used = nxt, used + 1
    return node, key_node, used


def position(root: yaml.Node, loc: Loc, at_key: bool = False) -> tuple[int, int]:
    """1-based line:col for ``loc``: the value (or with ``at_key`` the key) when it exists, else
    the deepest existing parent."""
    node, key_node, used = _walk(root, loc)
    if used == len(loc) and at_key and key_node is not None:
        return mark(key_node)
    return mark(node)


def yaml11_booleans(root: yaml.Node) -> list[CatalogIssue]:
    """yes/no/on/off (any case) and True/FALSE are booleans to PyYAML (YAML 1.1) but strings to
    YAML 1.2 tools; the project allows only true/false (as the .yamllint truthy rule does)."""
    issues: list[CatalogIssue] = []

    def visit(node: yaml.Node, loc: Loc) -> None:
        if isinstance(node, yaml.ScalarNode) and node.tag == _BOOL_TAG and node.value not in ("true", "false"):
            meaning = "true" if node.value.lower() in ("yes", "on", "true", "y") else "false"
            issues.append(CatalogIssue(loc_to_path(loc), *mark(node), f"'{node.value}' is an ambiguous boolean",
                                       "true or false", f"write {meaning}"))
        for _, child, child_loc in children(node, loc):
            visit(child, child_loc)

    visit(root, ())
    return issues


def duplicate_keys(root: yaml.Node) -> list[CatalogIssue]:
    """Every mapping key that occurs twice in its mapping (PyYAML would keep only the last),
    reported at the second occurrence. Merge keys (``<<``) are not keys of their own."""
    issues: list[CatalogIssue] = []

    def visit(node: yaml.Node, loc: Loc) -> None:
        first: dict[str, yaml.Node] = {}
        for k, child, child_loc in children(node, loc):
            if k is not None:
                if not isinstance(k, yaml.ScalarNode) or k.tag == _MERGE_TAG:
                    continue
                if k.value in first:
                    line = first[k.value].start_mark.line + 1
                    issues.append(CatalogIssue(
                        loc_to_path(child_loc), *mark(k),
                        f"duplicate key '{k.value}' (first at line {line})",
                        "each key once per mapping",
                        "remove one of them; YAML would silently keep only the last"))
                else:
                    first[k.value] = k
            visit(child, child_loc)

    visit(root, ())
    return issues


_STR_TAG = "tag:yaml.org,2002:str"


def non_text_keys(root: yaml.Node) -> list[CatalogIssue]:
    """Mapping keys YAML reads as something other than text (``7:``, ``true:``, ``~:``, ``1.5:``,
    a list): every catalog key is a name, and pydantic would only say "Keys should be strings"."""
    issues: list[CatalogIssue] = []

    def visit(node: yaml.Node, loc: Loc) -> None:
        for k, child, child_loc in children(node, loc):
            if k is not None and k.tag not in (_STR_TAG, _MERGE_TAG):
                text = k.value if isinstance(k, yaml.ScalarNode) else "a " + type(k).__name__.replace("Node", "").lower()
                kind = k.tag.rsplit(":", 1)[-1]
                issues.append(CatalogIssue(loc_to_path(loc + (text,)), *mark(k),
                                           f"key {text} is not a name (YAML reads it as {kind})",
                                           "keys that are names", "rename it to a documented key, or remove it"))
            visit(child, child_loc)

    visit(root, ())
    return issues
