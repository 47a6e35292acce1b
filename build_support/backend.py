"""The build backend: setuptools', which also asks for mypy when PIGEON_COMPILE=1 (setup.py).

setuptools documents this way of adding build requirements: a module in the source tree
that wraps ``setuptools.build_meta``.
"""

import os
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager

from setuptools import build_meta

# The other hooks, unchanged.
from setuptools.build_meta import (
    build_sdist,
    build_wheel,
    get_requires_for_build_editable,
    get_requires_for_build_sdist,
    prepare_metadata_for_build_editable,
)

__all__ = [
    "build_editable",
    "build_sdist",
    "build_wheel",
    "get_requires_for_build_editable",
    "get_requires_for_build_sdist",
    "get_requires_for_build_wheel",
    "prepare_metadata_for_build_editable",
    "prepare_metadata_for_build_wheel",
]

# The compiler of the tested build. Its small runtime is compiled into the extension, so a
# compiled Pigeon does not need mypy once installed.
MYPYC = "mypy==2.4.1"
SWITCH = "PIGEON_COMPILE"

ConfigSettings = dict[str, str | list[str]] | None


def compiling() -> bool:
    return os.environ.get(SWITCH) == "1"


@contextmanager
def _not_compiling() -> Iterator[None]:
    value = os.environ.pop(SWITCH, None)
    try:
        yield
    finally:
        if value is not None:
            os.environ[SWITCH] = value


def get_requires_for_build_wheel(config_settings: ConfigSettings = None) -> list[str]:
    if not compiling():
        return list(build_meta.get_requires_for_build_wheel(config_settings))
    # setuptools runs setup.py to learn what it needs, before mypyc is there to import.
    with _not_compiling():
        requires = list(build_meta.get_requires_for_build_wheel(config_settings))
    # mypyc type-checks what the compiled modules import: Pigeon's dependencies too.
    with open("pyproject.toml", "rb") as file:
        dependencies: list[str] = tomllib.load(file)["project"]["dependencies"]
    return [*requires, MYPYC, *dependencies]


def prepare_metadata_for_build_wheel(
    metadata_directory: str, config_settings: ConfigSettings = None
) -> str:
    # The metadata is the same compiled or not: mypyc need not run for it.
    with _not_compiling():
        return str(build_meta.prepare_metadata_for_build_wheel(metadata_directory, config_settings))


def build_editable(
    wheel_directory: str,
    config_settings: ConfigSettings = None,
    metadata_directory: str | None = None,
) -> str:
    if compiling():
        # An editable install would go on running the compiled modules after their source
        # changed, so a compiled build is installed with `pip install .` only.
        raise RuntimeError(f"{SWITCH}=1 builds with `pip install .`, not an editable install")
    return str(build_meta.build_editable(wheel_directory, config_settings, metadata_directory))
