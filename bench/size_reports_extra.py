"""What the reports extra costs on disk: Evidently and the distributions only it needs.

    .venv/bin/python bench/size_reports_extra.py

Reads the installed distributions' metadata in this environment: the dependency closure of
driftline's required dependencies, and of evidently; the part of evidently's closure that
nothing required needs is what `pip install 'driftline[reports]'` adds (sizes of the files
each distribution installed, as its RECORD lists them).
"""

from __future__ import annotations

import contextlib
import importlib.metadata as md
import re

from packaging.requirements import Requirement


def _name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requires(name: str) -> list[str]:
    try:
        dist = md.distribution(name)
    except md.PackageNotFoundError:
        return []
    out = []
    for text in dist.requires or []:
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            out.append(req.name)
    return out


def _closure(roots: list[str]) -> set[str]:
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = _name(todo.pop())
        if name in seen:
            continue
        try:
            md.distribution(name)
        except md.PackageNotFoundError:
            continue
        seen.add(name)
        todo.extend(_requires(name))
    return seen


def _size(name: str) -> int:
    total = 0
    for f in md.distribution(name).files or []:
        with contextlib.suppress(OSError):  # a file listed but removed since
            total += f.locate().stat().st_size
    return total


def main() -> None:
    required = _closure([r for r in _requires("driftline") if _name(r) != "evidently"])
    extra = _closure(["evidently"]) - required
    print(f"driftline's required dependencies: {sum(map(_size, required)) / 1e6:.0f} MB in {len(required)} "
          f"distributions")
    print(f"the reports extra adds: {sum(map(_size, extra)) / 1e6:.0f} MB in {len(extra)} distributions")
    for name in sorted(extra, key=_size, reverse=True)[:10]:
        print(f"  {name:<24} {_size(name) / 1e6:6.1f} MB")


if __name__ == "__main__":
    main()
