"""Shared console handles and the one place errors become messages."""

from __future__ import annotations

from rich.console import Console

err_console = Console(stderr=True, highlight=False, soft_wrap=True)
out_console = Console(highlight=False, soft_wrap=True)


def fail(message: str) -> None:
    err_console.print(f"[bold red]corral: error:[/] {message}", markup=True)
