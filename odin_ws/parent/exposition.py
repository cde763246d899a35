"""
Merge the Prometheus text expositions of the parent and its shards into the
one exposition the node answers on C{/metrics}.

Each shard's samples get a C{shard="<i>"} label; C{# HELP}/C{# TYPE} appear
once per family; all samples of a family stay together (the text format
requires it). Lines are rewritten textually, never re-rendered, so values,
timestamps and escaped label values pass through exactly as produced.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
#: The label a shard's sample gets; an existing label of that name is kept
#: under this other name, as Prometheus does for conflicting target labels.
SHARD_LABEL = "shard"
EXPORTED_LABEL = "exported_shard"


@dataclass
class _Family:
    help: str | None = None
    type: str | None = None
    samples: list[str] = field(default_factory=list)


def merge(parent: bytes, shards: dict[int, bytes]) -> bytes:
    """
    One exposition: the parent's samples as they are, then each shard's (in
    shard order) labelled C{shard="<i>"}, grouped by family.
    Lines that are not valid exposition lines are left out.
    """
    families: dict[str, _Family] = {}
    _add(families, parent.decode("utf-8", "replace"), None)
    for index in sorted(shards):
        _add(families, shards[index].decode("utf-8", "replace"), str(index))
    out: list[str] = []
    for name, family in families.items():
        if family.help is not None:
            out.append(f"# HELP {name} {family.help}")
        if family.type is not None:
            out.append(f"# TYPE {name} {family.type}")
        out.extend(family.samples)
    return ("\n".join(out) + "\n").encode("utf-8") if out else b""


def _add(families: dict[str, _Family], text: str, shard: str | None) -> None:
    current: str | None = None
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE") and _NAME.fullmatch(parts[2]):
                current = parts[2]
                family = families.setdefault(current, _Family())
                rest = parts[3] if len(parts) == 4 else ""
                if parts[1] == "HELP" and family.help is None:
                    family.help = rest
                elif parts[1] == "TYPE" and family.type is None and rest:
                    family.type = rest
            continue
        sample = _label_sample(line, shard)
        if sample is None:
            continue
        name, rewritten = sample
        if current is None or not _belongs(name, current):
            # A sample with no metadata of its own is its own (untyped) family.
            current = name
        families.setdefault(current, _Family()).samples.append(rewritten)


def _belongs(sample: str, family: str) -> bool:
    base = family.removesuffix("_total")
    return sample == family or sample.startswith(base + "_")


def _label_sample(line: str, shard: str | None) -> tuple[str, str] | None:
    """The sample's name and the line with the shard label added, or None if malformed."""
    match = _NAME.match(line)
    if match is None:
        return None
    name = match.group()
    pos = match.end()
    labels: list[tuple[str, str]] = []
    if line.startswith("{", pos):
        parsed = _parse_labels(line, pos + 1)
        if parsed is None:
            return None
        labels, pos = parsed
    rest = line[pos:]
    if not rest[:1].isspace() or not rest.strip():
        return None
    if shard is None:
        return name, line
    pairs = [f'{SHARD_LABEL}="{shard}"']
    pairs += [f"{EXPORTED_LABEL if key == SHARD_LABEL else key}={value}" for key, value in labels]
    return name, f"{name}{{{','.join(pairs)}}}{rest}"


def _parse_labels(line: str, pos: int) -> tuple[list[tuple[str, str]], int] | None:
    """Label pairs (name, raw quoted value) from just after "{", and the index after "}"."""
    labels: list[tuple[str, str]] = []
    while True:
        while pos < len(line) and line[pos] in " ,":
            pos += 1
        if pos >= len(line):
            return None
        if line[pos] == "}":
            return labels, pos + 1
        match = _LABEL.match(line, pos)
        if match is None:
            return None
        pos = match.end()
        while pos < len(line) and line[pos] == " ":
            pos += 1
        if not line.startswith('="', pos) and not line.startswith('= "', pos):
            return None
        start = line.index('"', pos)
        end = start + 1
        while end < len(line) and line[end] != '"':
            end += 2 if line[end] == "\\" else 1
        if end >= len(line):
            return None
        labels.append((match.group(), line[start:end + 1]))
        pos = end + 1
