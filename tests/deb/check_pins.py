"""
Run with the package's venv python: every distribution installed in the venv
(besides odinws itself and the venv's own pip/setuptools) must be pinned in
requirements.lock, at that version. Prints the mismatches; exit 1 if any.
"""

import re
import sys
from importlib.metadata import distributions

OWN = {"odinws", "pip", "setuptools"}


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def main(lock_path: str) -> int:
    pins = {}
    with open(lock_path) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if "==" in line:
                name, version = line.split("==", 1)
                pins[norm(name)] = version.strip()
    bad = []
    for dist in distributions():
        name = norm(dist.metadata["Name"])
        if name in OWN:
            continue
        if pins.get(name) != dist.version:
            bad.append(f"{name} {dist.version} (lock: {pins.get(name, 'not pinned')})")
    for line in sorted(bad):
        print(line)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
