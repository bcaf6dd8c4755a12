"""What every command shares: the console, the ``--config`` of this invocation, the store.

The root callback in :mod:`flows.cli` sets :attr:`State.config_path`; the command modules
read it from here, so that they never import the CLI root that registers them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from rich.console import Console

console = Console()


class State:
    """Options of the root command for this invocation."""

    config_path: Optional[Path] = None


def config():
    """The validated configuration (file from --config or SELFPLAY_CONFIG, plus environment)."""
    from flows.config import load_config

    return load_config(State.config_path)


def connect_store(require_persistent: bool = True):
    from pipeline.store import connect_from_config

    return connect_from_config(config(), require_persistent=require_persistent)
