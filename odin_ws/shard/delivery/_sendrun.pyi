# The C send loop's interface (odin_ws/shard/delivery/_sendrun.c), for mypy.
from typing import Any

def send_runs(
    runs: list[tuple[bytes | tuple[bytes | None, ...], int, Any]], writes: set[int]
) -> tuple[int, int, int, list[tuple[Any, bytes, int, int]], list[tuple[Any, int]], int, int]: ...
