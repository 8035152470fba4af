"""Entry point: ``corral run | demo | guard | gc | setup | policy``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from corral.errors import CorralError
from corral.policy import list_profiles, load_policy

from .guard_cmd import guard_app
from .output import err_console, fail, out_console
from .run_cmd import run

app = typer.Typer(
    name="corral",
    help="Run tool-using AI agents in sandboxes they cannot get out of.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command(context_settings={"allow_interspersed_args": False})(run)

policy_app = typer.Typer(help="Inspect and validate policies.", no_args_is_help=True)
app.add_typer(policy_app, name="policy")
app.add_typer(guard_app, name="guard")


@app.command()
def gc() -> None:
    """Remove leftovers (processes, cgroups, uid slots, netns) of owners that died."""
    from corral.gateway import sweep_stale_namespaces
    from corral.sandbox import collect

    report = collect()
    namespaces = sweep_stale_namespaces()
    if report.empty and not namespaces:
        out_console.print("nothing to clean")
        return
    out_console.print(
        f"removed {len(report.sandboxes)} sandbox(es), {len(report.cgroups)} orphan cgroup(s), "
        f"{len(report.slots)} uid slot(s), {len(namespaces)} network namespace(s); "
        f"killed {report.processes_killed} process(es)"
    )


@app.command()
def demo(
    events_dir: Annotated[
        Path | None, typer.Option(help="Where to write the demo's event logs.")
    ] = None,
    part: Annotated[
        str, typer.Option(help="all, isolation (one sandbox) or incident (simulated internet).")
    ] = "all",
) -> None:
    """Show an agent's escape attempts and the ROME incident being contained and traced."""
    from .demo_cmd import run_demo

    if part not in ("all", "isolation", "incident"):
        fail(f"--part: expected all, isolation or incident, got {part!r}")
        raise typer.Exit(2)
    escaped = run_demo(events_dir, part)
    raise typer.Exit(1 if escaped else 0)


@app.command()
def setup() -> None:
    """Check this host and build the native supervisor."""
    from corral.sandbox.host import host

    h = host()
    out_console.print(f"bubblewrap: {h.bwrap}")
    out_console.print(f"supervisor: {h.init}")
    out_console.print(f"cgroups:    v{h.cgroups.version}")
    out_console.print("seccomp:    ok")


@policy_app.command("show")
def policy_show(
    source: Annotated[str, typer.Argument(help="Profile name or policy file.")] = "default",
) -> None:
    """Print the fully resolved policy as JSON."""
    out_console.print_json(json.dumps(load_policy(source).model_dump(mode="json")))


@policy_app.command("check")
def policy_check(source: Annotated[str, typer.Argument(help="Policy file.")]) -> None:
    """Validate a policy file; exit 0 if it is valid."""
    policy = load_policy(source)
    out_console.print(f"{source}: valid (policy '{policy.name}')")


@policy_app.command("list")
def policy_list() -> None:
    """List the built-in profiles."""
    for name in list_profiles():
        out_console.print(f"{name}: {load_policy(name).description}")


def main() -> None:
    try:
        app(standalone_mode=True)
    except CorralError as exc:
        fail(str(exc))
        sys.exit(2)


if __name__ == "__main__":
    main()

__all__ = ["app", "err_console", "main"]
