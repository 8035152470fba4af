"""The egress gateway: every flow out of a ``gateway``-mode sandbox passes through it.

Public API: :class:`Gateway` (one per owner process), the :class:`Attachment` it
returns for each sandbox, and the resolvers it can use upstream.
"""

from corral.gateway.dns import DnsServerResolver, Resolver, SystemResolver
from corral.gateway.gateway import Attachment, Gateway, sweep_stale_namespaces

__all__ = [
    "Attachment",
    "DnsServerResolver",
    "Gateway",
    "Resolver",
    "SystemResolver",
    "sweep_stale_namespaces",
]
