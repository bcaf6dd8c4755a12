"""``selfplay dashboard`` and ``selfplay report`` (registered in :mod:`flows.cli`).

Dash and Plotly are imported inside the functions so that ``selfplay --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path

import typer

from pipeline.errors import ConfigError


def connect_read_only():
    """Connect the configured store without creating indexes (a ``read``-role user suffices)."""
    from flows.commands.context import config
    from pipeline.store import connect

    settings = config()
    return connect(
        settings.uri(),
        database=settings.database,
        timeout_ms=settings.db_timeout_ms,
        require_persistent=True,
        read_only=True,
    )


def _dashboard_extra() -> None:
    try:
        import dash  # noqa: F401
        import plotly  # noqa: F401
    except ImportError:
        raise ConfigError("the dashboard needs Dash and Plotly: pip install 'selfplay[dashboard]'") from None


def dashboard(
    host: str = typer.Option(
        "127.0.0.1", help="Address to listen on (loopback by default; there is no authentication)."
    ),
    port: int = typer.Option(8050, help="TCP port."),
    refresh: float = typer.Option(60.0, help="Seconds between re-aggregations of the store (more if it is slow)."),
) -> None:
    """Serve the live dashboard (read-only) on http://HOST:PORT/."""
    from flows.commands.context import console

    if not 0 < port < 65536:
        raise ConfigError(f"--port must be between 1 and 65535 (got {port})")
    if refresh <= 0:
        raise ConfigError(f"--refresh must be positive (got {refresh})")
    _dashboard_extra()
    info = connect_read_only()
    from pipeline.dashboard.app import DashboardServer
    from pipeline.dashboard.readonly import ReadOnlyDatabase

    try:
        server = DashboardServer(ReadOnlyDatabase.current(), host=host, port=port, refresh_s=refresh)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    console.print(
        f"dashboard of {info.uri} (database {info.database}) on {server.url}  (Ctrl-C stops)",
        highlight=False,
        soft_wrap=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


def report(
    out: Path = typer.Option(..., "--out", "-o", help="HTML file to write (self-contained, opens offline)."),
) -> None:
    """Write the dashboard as one static HTML file."""
    from flows.commands.context import console

    _dashboard_extra()
    connect_read_only()
    from pipeline.dashboard.report import write_report

    path = write_report(out)
    console.print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)", highlight=False, soft_wrap=True)


def summarise(
    all_generations: bool = typer.Option(
        False, "--all", help="Recompute every completed generation's summary, not only the missing ones."
    ),
) -> None:
    """Write the dashboard's per-generation summaries (data from before summaries existed, or after a change)."""
    from flows.commands.context import connect_store, console

    connect_store()
    from pipeline.dashboard.summaries import missing_summaries, write_summaries

    numbers = None if all_generations else missing_summaries()
    if numbers == []:
        console.print("every completed generation has a summary", highlight=False)
        return
    written = write_summaries(numbers=numbers)
    console.print(f"summarised {len(written)} generation(s)", highlight=False)
