from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import ThreadedServer, make_config


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ThreadedServer]:
    """Pigeon on 127.0.0.1 (free port) serving example.test with users alice and bob."""
    with ThreadedServer(make_config(tmp_path / "data")) as running:
        yield running
