"""Packaging. The metadata is in pyproject.toml; this file only adds the compiled build.

``PIGEON_COMPILE=1 pip install .`` compiles the modules every command and every message
passes through with mypyc, as Black and mypy themselves are shipped: the same typed source,
turned into C. It needs a C compiler and Python's headers (Debian: gcc, python3-dev). The
build behaves as the pure-Python one; it spends less CPU per message (bench/results.md).
"""

import os
import shutil
from pathlib import Path
from typing import Any

from setuptools import setup

# The protocol core and what it calls for every command: modules whose objects one thread
# uses (the event loop's), or that never change once made. Left out, though hot: the spool
# and logs, whose objects several threads share. Compiled, the test suite crashed in the
# garbage collector now and then (mypyc 2.4), and a spool's failure to open raised a
# TypeError instead of its SpoolError. Transcripts are in: only the event loop's thread
# touches them (another thread reads them through the loop), and compiled they cost a held
# message 7 % fewer instructions. The queue's scheduler, which mypyc 2.4 once failed on,
# compiles with 2.4.1: 1-2 % fewer.
#
# A dataclass's generated __init__ is not compiled: dataclasses makes it when the module is
# imported, and it sets each field at interpreter speed. The dataclasses these modules make
# for every message (the protocol's events, replies, envelopes, the scheduler's jobs) write
# their __init__ out, which mypyc compiles; tests/test_build.py holds each to its fields.
# That took a tenth off the compiled build's CPU per held message.
COMPILED = [
    "src/pigeon/smtp/_abnf.py",
    "src/pigeon/smtp/_data.py",
    "src/pigeon/smtp/_events.py",
    "src/pigeon/smtp/_grammar.py",
    "src/pigeon/smtp/_replies.py",
    "src/pigeon/smtp/_server.py",
    "src/pigeon/smtp/_state.py",
    "src/pigeon/server/session.py",
    "src/pigeon/transcripts.py",
    "src/pigeon/queue/envelope.py",
    "src/pigeon/queue/ids.py",
    "src/pigeon/queue/scheduler.py",
    "src/pigeon/policy/_relay.py",
    "src/pigeon/directory/_directory.py",
]

if os.environ.get("PIGEON_COMPILE") == "1":
    from mypyc.build import mypycify

    # setuptools packs whatever build/lib* holds: a module compiled by an earlier build in
    # this tree and since taken off the list would be installed too, and imported instead of
    # its source. mypyc's C files in build/ stay, so that unchanged modules are not redone.
    for stale in Path("build").glob("lib.*"):
        shutil.rmtree(stale)

    # Extensions of setuptools' kind, which its stubs and mypyc's name differently.
    extensions: list[Any] = mypycify(COMPILED, opt_level="3")
    setup(ext_modules=extensions)
else:
    setup()
