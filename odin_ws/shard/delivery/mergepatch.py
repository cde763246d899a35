"""
JSON Merge Patch (RFC 7386): the delta format of subscriptions that ask for
deltas (docs/protocol.md, "Deltas").

Why merge patch and not fossil delta (Centrifugo's): the events are JSON
objects whose fields change value, and a merge patch names exactly the
fields that changed, as JSON the client applies with a dozen lines in any
language (no binary codec, no checksum to port); it stays valid text for
permessage-deflate to compress further. Its limits are the RFC's: it cannot
set a value to C{null} (null removes the member) nor patch anything but an
object; L{diff} says so (None) and the event goes whole.
"""

from __future__ import annotations

from typing import Any


def diff(old: object, new: object) -> dict[str, Any] | None:
    """
    The merge patch that turns C{old} into C{new}, or None when none can:
    either is not an object, or C{new} holds a C{null} member in an object
    (a patch cannot express it). An empty patch means equal values.
    """
    if type(old) is not dict or type(new) is not dict:
        return None
    if _has_null_member(new):
        return None
    return _diff(old, new)


def _diff(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    patch: dict[str, Any] = {}
    for key in old:
        if key not in new:
            patch[key] = None
    for key, value in new.items():
        if key in old:
            before = old[key]
            if type(before) is dict and type(value) is dict:
                inner = _diff(before, value)
                if inner:
                    patch[key] = inner
                continue
            if before == value and type(before) is type(value):
                continue
        patch[key] = value
    return patch


def _has_null_member(value: object) -> bool:
    """A C{null} member in an object at any depth (arrays are replaced whole: theirs are fine)."""
    if type(value) is not dict:
        return False
    for member in value.values():
        if member is None or _has_null_member(member):
            return True
    return False

