"""Agent layer: the guarded environment an agent acts in (the agent loop builds on it)."""

from corral.agent.environment import DENIED_EXIT_CODE, Environment, guard_violations

__all__ = ["DENIED_EXIT_CODE", "Environment", "guard_violations"]
