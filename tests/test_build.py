"""The builds: the compiled one (PIGEON_COMPILE=1) asks for mypyc, refuses to be installed
editable (where it would go on running compiled modules after their source changed), and runs
the modules setup.py lists compiled; every other build runs them from source.

scripts/test runs this file twice: in .venv (an editable install, from source) and in
.venv-compiled with PIGEON_EXPECT_COMPILED=1.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import importlib.machinery
import importlib.util
import inspect
import os
import re
import shutil
import subprocess
import tarfile
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

from pigeon import build
from pigeon.queue import scheduler
from pigeon.queue.envelope import Envelope
from pigeon.queue.spool import Spool, SpooledMessage
from pigeon.smtp import Address, DataCommand, MailFrom, MessageData, MessageEnd, RcptTo, Reply

ROOT = Path(__file__).resolve().parent.parent


def _backend() -> ModuleType:
    spec = importlib.util.spec_from_file_location("backend", ROOT / "build_support" / "backend.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_compiled_build_asks_for_mypy_and_pigeons_dependencies(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    backend = _backend()
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("PIGEON_COMPILE", raising=False)
    plain = backend.get_requires_for_build_wheel()
    assert not [r for r in plain if r.startswith("mypy")]

    monkeypatch.setenv("PIGEON_COMPILE", "1")
    compiled = backend.get_requires_for_build_wheel()
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert backend.MYPYC in compiled
    assert set(dependencies) <= set(compiled)
    assert set(plain) <= set(compiled)


def test_the_compiled_build_is_not_installed_editable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    backend = _backend()
    monkeypatch.setenv("PIGEON_COMPILE", "1")
    with pytest.raises(
        RuntimeError, match=re.escape("PIGEON_COMPILE=1 builds with `pip install .`")
    ):
        backend.build_editable(str(tmp_path))
    assert list(tmp_path.iterdir()) == []


def _compiled_modules() -> list[str]:
    """The modules setup.py's COMPILED names, read without running setup.py."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "COMPILED" for t in node.targets
        ):
            paths: list[str] = ast.literal_eval(node.value)
            return [p.removeprefix("src/").removesuffix(".py").replace("/", ".") for p in paths]
    raise AssertionError("setup.py has no COMPILED list")


def test_the_listed_modules_run_compiled_in_the_compiled_build_only() -> None:
    expected = os.environ.get("PIGEON_EXPECT_COMPILED") == "1"
    modules = _compiled_modules()
    assert "pigeon.smtp._server" in modules
    for name in modules:
        origin = importlib.import_module(name).__file__ or ""
        compiled = origin.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))
        assert compiled == expected, f"{name} is loaded from {origin}"


def test_the_running_build_says_which_it_is() -> None:
    expected = os.environ.get("PIGEON_EXPECT_COMPILED") == "1"
    assert build.compiled() is expected
    assert build.describe() == ("compiled build" if expected else "pure-Python build")


def test_no_other_module_is_installed_compiled() -> None:
    # A module taken off the list must not stay compiled: an extension module left by an
    # earlier build would be imported instead of the source beside it.
    package = Path(importlib.import_module("pigeon").__file__ or "").parent
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    installed = {
        ".".join(("pigeon", *path.relative_to(package).parent.parts, path.name.split(".")[0]))
        for path in package.rglob("*")
        if path.name.endswith(suffixes)
    }
    expected = os.environ.get("PIGEON_EXPECT_COMPILED") == "1"
    assert installed == (set(_compiled_modules()) if expected else set())


def test_the_source_distribution_carries_the_build_backend(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # pyproject.toml names build_support/ as where the backend is: a wheel built from the
    # sdist (as pip does for a source download) cannot start without it. Built from a copy
    # of the tracked files, as a fresh clone has them: setuptools would otherwise reuse the
    # file list of an earlier build in src/*.egg-info.
    if not (ROOT / ".git").exists():
        pytest.skip("needs the git checkout's list of tracked files")
    tree = tmp_path / "tree"
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=60
    ).stdout.decode()
    for name in filter(None, tracked.split("\0")):
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, tree / name)
    monkeypatch.chdir(tree)
    monkeypatch.delenv("PIGEON_COMPILE", raising=False)
    name = _backend().build_sdist(str(tmp_path))
    with tarfile.open(tmp_path / name) as sdist:
        members = {m.name.split("/", 1)[1] for m in sdist.getmembers() if "/" in m.name}
    assert {"build_support/backend.py", "setup.py", "pyproject.toml"} <= members


# -- __init__ written out for the compiled build ----------------------------------------------
# These dataclasses, made for every message, write their __init__ out: mypyc compiles that
# one, not the one dataclasses would generate. It must still be the generated one's twin:
# every field that takes part in __init__, in order, with the field's default.


def _written_out_inits(tmp_path: Path) -> list[tuple[type, dict[str, object]]]:
    envelope = Envelope("a@example.test", ("b@example.test",))
    message = SpooledMessage("Q1", envelope, 3, "w0-00000001.seg", 20, 80)
    job = scheduler._Job(message, Spool(tmp_path, worker="w0"), [])
    return [
        (Address, {"local_part": "a", "domain": "example.test"}),
        (MailFrom, {"sender": None}),
        (RcptTo, {"recipient": Address("b", "example.test")}),
        (DataCommand, {}),
        (MessageData, {"data": b"Subject: x\r\n"}),
        (MessageEnd, {"size": 12}),
        (Reply, {"code": 250, "lines": ("Ok",)}),
        (Envelope, {"sender": "a@example.test", "recipients": ("b@example.test",)}),
        (scheduler._Job, {"message": message, "spool": job.spool, "states": []}),
        (scheduler._Part, {"job": job, "domain": "example.test", "positions": [0]}),
    ]


def test_a_written_out_init_sets_every_field_to_its_default(tmp_path: Path) -> None:
    for cls, required in _written_out_inits(tmp_path):
        made = cls(**required)
        for field in dataclasses.fields(cls):
            if field.name in required:
                expected = required[field.name]
            elif field.default is not dataclasses.MISSING:
                expected = field.default
            else:
                assert field.default_factory is not dataclasses.MISSING
                expected = field.default_factory()
            assert getattr(made, field.name) == expected, f"{cls.__name__}.{field.name}"


def test_a_written_out_init_takes_the_fields_that_init_takes(tmp_path: Path) -> None:
    for cls, required in _written_out_inits(tmp_path):
        made = cls(**required)
        taking = [f for f in dataclasses.fields(cls) if f.init]
        # By keyword, every field __init__ takes, as dataclasses.replace() passes them.
        again = cls(**{f.name: getattr(made, f.name) for f in taking})
        assert [getattr(again, f.name) for f in taking] == [getattr(made, f.name) for f in taking]
        if os.environ.get("PIGEON_EXPECT_COMPILED") != "1":  # compiled: no signature to read
            parameters = list(inspect.signature(cls).parameters)
            assert parameters == [f.name for f in taking], cls.__name__
