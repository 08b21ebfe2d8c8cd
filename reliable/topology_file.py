"""
Topology files: YAML <-> `reliable.topology.Topology`.

Every problem in every file is collected before anything is raised, so one
run of ``reliable topology validate`` shows them all, each as
``orders.yaml:12: queues[2].dead_leter`` with a message and, where one helps,
a hint. Line numbers come from the YAML node marks, recorded while the file is
composed (``yaml.SafeLoader``: no arbitrary objects).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydantic
import yaml

from reliable import errors
from reliable.topology import (
    Binding,
    DeadLetter,
    Exchange,
    Policy,
    Queue,
    Topology,
    merge,
)
from reliable.topology_rules import did_you_mean

Loc = tuple[str | int, ...]
Problem = tuple[str, str]

#: The model that owns the keys at a location (list indexes removed).
_MODELS: dict[tuple[str, ...], type[pydantic.BaseModel]] = {
    (): Topology,
    ("exchanges",): Exchange,
    ("queues",): Queue,
    ("queues", "dead_letter"): DeadLetter,
    ("bindings",): Binding,
    ("policies",): Policy,
}


def keypath(loc: Iterable[str | int]) -> str:
    """``('queues', 2, 'dead_leter')`` -> ``queues[2].dead_leter``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


@dataclass
class _Source:
    """One parsed file: its name as shown and the line of every key path."""

    name: str
    lines: dict[Loc, int] = field(default_factory=dict)

    def line(self, loc: Loc) -> int:
        for end in range(len(loc), -1, -1):
            if loc[:end] in self.lines:
                return self.lines[loc[:end]]
        return 1

    def problem(self, loc: Loc, message: str) -> Problem:
        return (f"{self.name}:{self.line(loc)}: {keypath(loc)}", message)


def _record_lines(
    node: yaml.Node, loc: Loc, lines: dict[Loc, int]
) -> list[tuple[int, Loc]]:
    """Walk the composed YAML tree, noting each key's line; report duplicate keys."""
    lines.setdefault(loc, node.start_mark.line + 1)
    dupes: list[tuple[int, Loc]] = []
    stack: list[tuple[yaml.Node, Loc]] = [(node, loc)]
    while stack:
        current, here = stack.pop()
        if isinstance(current, yaml.MappingNode):
            seen: set[str] = set()
            for key_node, value_node in current.value:
                key = str(key_node.value)
                if key in seen:
                    dupes.append((key_node.start_mark.line + 1, (*here, key)))
                seen.add(key)
                lines.setdefault((*here, key), key_node.start_mark.line + 1)
                stack.append((value_node, (*here, key)))
        elif isinstance(current, yaml.SequenceNode):
            for i, item in enumerate(current.value):
                lines.setdefault((*here, i), item.start_mark.line + 1)
                stack.append((item, (*here, i)))
    return dupes


def _compose(text: str, source: _Source) -> tuple[Any, list[tuple[int, Loc]]]:
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, []
        dupes = _record_lines(node, (), source.lines)
        return loader.construct_document(node), dupes
    finally:
        loader.dispose()


def parse(
    text: str, name: str = "<string>"
) -> tuple[Topology | None, list[Problem], _Source]:
    """Parse one document; return the model (or ``None``) and its problems."""
    source = _Source(name)
    try:
        data, dupes = _compose(text, source)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        reason = exc.problem or exc.context or "invalid YAML"
        return None, [(f"{name}:{line}", f"invalid YAML: {reason}")], source
    except yaml.reader.ReaderError as exc:
        return (
            None,
            [(name, f"invalid YAML: {exc.reason} (character {exc.character!r})")],
            source,
        )
    except (yaml.YAMLError, RecursionError, ValueError, TypeError) as exc:
        return None, [(name, f"invalid YAML: {type(exc).__name__}")], source
    problems = [
        (
            f"{name}:{line}: {keypath(loc)}",
            "key appears twice; YAML would keep only the last",
        )
        for line, loc in dupes
    ]
    if data is None:
        data = {}
    if not isinstance(data, dict):
        found = type(data).__name__
        problems.append(
            (
                f"{name}:1",
                f"a topology file must be a mapping (vhost, exchanges, queues, ...), found {found}",
            )
        )
        return None, problems, source
    try:
        topology = Topology.model_validate(data)
    except pydantic.ValidationError as exc:
        problems.extend(_convert(exc, source))
        return None, problems, source
    except RecursionError:
        problems.append((f"{name}:1", "the document is nested too deeply"))
        return None, problems, source
    return (None if problems else topology), problems, source


def _convert(exc: pydantic.ValidationError, source: _Source) -> list[Problem]:
    problems: list[Problem] = []
    for err in exc.errors(include_url=False):
        loc: Loc = tuple(err["loc"])
        for message in _message(err, loc).split("\n"):
            problems.append(source.problem(loc, message))
    return problems


def _message(err: Any, loc: Loc) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        key = str(loc[-1]) if loc else "?"
        owner = _MODELS.get(tuple(p for p in loc[:-1] if isinstance(p, str)))
        fields = owner.model_fields if owner else {}
        hint = did_you_mean(key, fields) or (
            f"; allowed keys: {', '.join(fields)}" if fields else ""
        )
        return f"unknown key {key!r}{hint}"
    if kind == "missing":
        return f"missing required key {str(loc[-1]) if loc else ''!r}"
    msg = str(err["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        msg = msg.removeprefix(prefix)
    if kind != "value_error" and "input" in err:
        shown = repr(err["input"])
        msg = f"{msg} (got {shown[:60]})"
    return msg[:1].lower() + msg[1:]


def _expand(paths: Sequence[str | Path]) -> tuple[list[Path], list[Problem]]:
    files: list[Path] = []
    problems: list[Problem] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(
                p
                for p in path.rglob("*")
                if p.suffix in (".yaml", ".yml") and p.is_file()
            )
            if not found:
                problems.append((str(path), "directory holds no .yaml or .yml files"))
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            problems.append((str(path), "no such file or directory"))
    return files, problems


def load_topologies(paths: Sequence[str | Path]) -> list[Topology]:
    """
    Load files and directories (``*.yaml``/``*.yml``) into one `Topology` per vhost.

    Files naming the same vhost are merged; an object declared in two files,
    or a reference to an object declared nowhere, is a problem.

    Raises:
        reliable.errors.TopologyFileError: With every problem found, in
            ``.problems`` as ``(location, message)`` pairs.
    """
    files, problems = _expand(paths)
    parsed: list[tuple[Topology, _Source]] = []
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            problems.append((str(path), f"cannot read the file ({type(exc).__name__})"))
            continue
        topology, found, source = parse(text, str(path))
        problems.extend(found)
        if topology is not None:
            parsed.append((topology, source))
    by_vhost: dict[str, list[tuple[Topology, _Source]]] = {}
    for topology, source in parsed:
        by_vhost.setdefault(topology.vhost, []).append((topology, source))
    merged = []
    for group in by_vhost.values():
        topology = merge([t for t, _ in group])
        problems.extend(_cross_problems(topology, group))
        merged.append(topology)
    if problems:
        raise errors.TopologyFileError(
            f"{len(problems)} problem(s) in the topology: "
            + "; ".join(f"{loc}: {msg}" for loc, msg in problems),
            path=", ".join(str(p) for p in paths),
            problems=problems,
        )
    return merged


def _cross_problems(
    topology: Topology, group: list[tuple[Topology, _Source]]
) -> list[Problem]:
    # Map an index in the merged lists back to the file and index it came from.
    origin: dict[tuple[str, int], tuple[_Source, int]] = {}
    for kind in ("exchanges", "queues", "bindings", "policies"):
        n = 0
        for part, source in group:
            for i in range(len(getattr(part, kind))):
                origin[(kind, n)] = (source, i)
                n += 1
    out = []
    for loc, message in topology.problems():
        kind, merged = str(loc[0]), int(loc[1])
        source, index = origin[(kind, merged)]
        if loc[2:] == ("name",):
            # A duplicate: say where the first declaration is.
            name = getattr(topology, kind)[merged].name
            first = next(
                i for i, o in enumerate(getattr(topology, kind)) if o.name == name
            )
            first_source, first_index = origin[(kind, first)]
            line = first_source.line((kind, first_index))
            message = f"{message}; first declared at {first_source.name}:{line}"
        out.append(source.problem((kind, index, *loc[2:]), message))
    return out


def load_topology(*paths: str | Path) -> Topology:
    """Load one or more files or directories that together describe one vhost."""
    topologies = load_topologies(paths)
    if len(topologies) != 1:
        vhosts = sorted(t.vhost for t in topologies)
        msg = (
            f"expected the files to describe one vhost, found {vhosts!r}; "
            "use load_topologies() for several"
        )
        raise errors.TopologyFileError(
            msg,
            path=", ".join(str(p) for p in paths),
        )
    return topologies[0]


def loads(text: str, name: str = "<string>") -> Topology:
    """Parse and check one YAML document given as text."""
    topology, problems, source = parse(text, name)
    if topology is not None:
        problems.extend(_cross_problems(topology, [(topology, source)]))
    if problems or topology is None:
        raise errors.TopologyFileError(
            "; ".join(f"{loc}: {msg}" for loc, msg in problems),
            path=name,
            problems=problems,
        )
    return topology


def dump_topology(topology: Topology) -> str:
    """Write *topology* as YAML in the file format (defaults left out, queue types kept)."""
    data = topology.model_dump(mode="json", exclude_defaults=True)
    data = {"vhost": topology.vhost, **{k: v for k, v in data.items() if k != "vhost"}}
    for queue, model in zip(data.get("queues", []), topology.queues, strict=True):
        queue.setdefault("type", model.type)
        queue["type"] = model.type
        # Keep name and type first: they are what a reader looks for.
        ordered = {"name": queue.pop("name"), "type": queue.pop("type"), **queue}
        queue.clear()
        queue.update(ordered)
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the file format, for editors (yaml-language-server)."""
    schema = Topology.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "reliable topology"
    return schema


def json_schema_text() -> str:
    return json.dumps(json_schema(), indent=2)
