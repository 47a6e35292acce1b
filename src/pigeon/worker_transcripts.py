"""The SMTP log of every worker: each answers for its own sessions when the web app asks.

With ``pigeon serve --workers N`` the kernel spreads connections between N processes, and
each keeps the transcripts of its own sessions in memory (``pigeon.transcripts``). Rather
than have every worker write each session out as it ends (work on the SMTP hot path, and
addresses left on disk), the web app asks the other workers over their control sockets
(``pigeon.queue.control``, command ``transcripts``) when someone looks at the log. That costs
a session nothing more, and shows the sessions still running in every worker, not only
those that ended.

A worker's answer is made on its own event loop (where its transcripts change, so it needs
no lock), from transcripts the recorder has already masked, one JSON line per session and
bounded in size; the control socket gives it only to a peer running as the server's user.
A worker that is slow to answer is left out of that view rather than holding the page up.
The sessions of a worker that died are lost with it, as they would be with one process.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterable
from pathlib import Path

from pigeon import transcripts
from pigeon.queue.control import ring, running_workers
from pigeon.transcripts import Transcript

__all__ = ["COMMAND", "answer", "decode", "encode", "recent"]

COMMAND = "transcripts"  # the control command that asks a worker for its sessions
# Characters in one worker's answer: well under what ``ring`` reads (1 MiB). A few sessions
# of a few hundred long lines would fill it; the usual short sessions number in the hundreds.
ANSWER_BUDGET = 512 * 1024
_PER_WORKER = 200  # as many as the API's largest page
_ASK_SECONDS = 2.0  # for all the other workers together: the log page refreshes this often


def encode(sessions: Iterable[Transcript], budget: int = ANSWER_BUDGET) -> list[str]:
    """One JSON line per session, in the order given, as many as fit in ``budget``."""
    lines: list[str] = []
    for t in sessions:
        line = json.dumps(
            {
                "worker": t.worker,
                "number": t.number,
                "session": t.session,
                "client": t.client,
                "started": t.started,
                "ended": t.ended,
                "lines": t.lines,
            },
            separators=(",", ":"),
        )
        budget -= len(line) + 1
        if budget < 0:
            break
        lines.append(line)
    return lines


def decode(line: str) -> Transcript | None:
    """A session as ``encode`` wrote it; None for anything else."""
    try:
        data = json.loads(line)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    worker, session, client = data.get("worker"), data.get("session"), data.get("client")
    number, started, ended = data.get("number"), data.get("started"), data.get("ended")
    pairs = data.get("lines")
    if not (
        isinstance(worker, str)
        and isinstance(session, str)
        and isinstance(client, str)
        and isinstance(number, int)
        and isinstance(started, int | float)
        and (ended is None or isinstance(ended, int | float))
        and isinstance(pairs, list)
    ):
        return None
    lines: list[tuple[str, str]] = []
    for pair in pairs:
        if not (isinstance(pair, list) and len(pair) == 2):
            return None
        direction, text = pair
        if not (isinstance(direction, str) and isinstance(text, str)):
            return None
        lines.append((direction, text))
    return Transcript(session, client, float(started), ended, lines, number=number, worker=worker)


async def answer() -> list[str]:
    """This worker's recent sessions, live ones included: the control command's answer."""
    log = transcripts.log()
    return [] if log is None else encode(log.recent(_PER_WORKER))


def recent(data_dir: Path, worker: str, limit: int = 50) -> list[Transcript]:
    """The newest ``limit`` sessions of all the workers of the server using ``data_dir``:
    those of ``worker`` (this process) from memory, the others' by asking them.

    Blocks for up to two seconds: call it from a thread, never on the event loop (which
    must stay free to answer, and to serve SMTP).
    """
    own = transcripts.log()
    try:
        mine = [] if own is None else own.recent(limit)
    except TimeoutError:  # this worker's loop is too busy to read them: left out this time
        mine = []
    # Copies: this process's sessions go on changing in the event loop's thread.
    found = [dataclasses.replace(t, lines=list(t.lines)) for t in mine]
    deadline = time.monotonic() + _ASK_SECONDS
    for other in sorted(running_workers(data_dir) - {worker}):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            answered = ring(data_dir, other, timeout=remaining, command=COMMAND)
        except OSError:  # stopping, or too slow this time: its sessions are left out
            continue
        found.extend(t for t in map(decode, answered or ()) if t is not None)
    found.sort(key=lambda t: (t.started, t.number), reverse=True)
    return found[:limit]
