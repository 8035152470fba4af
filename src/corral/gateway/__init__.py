"""The egress gateway: every flow out of a ``gateway``-mode sandbox passes through it.

Public API: :class:`Gateway` (one per owner process), the :class:`Attachment` it
returns for each sandbox, the resolvers it can use upstream, and
:func:`sweep_stale_namespaces` for garbage collection after a crash.

Using it from a sandbox launcher::

    gateway = Gateway()                      # once per owner process
    await gateway.start()                    # GatewayError: don't start gateway sandboxes
    att = await gateway.attach(sandbox_id, episode_id, policy.network, sink, step)
    # in the launcher child, as root: setns(open(att.netns_path), CLONE_NEWNET),
    # then drop to the sandbox uid and exec bwrap *without* a new network namespace,
    # binding att.resolv_conf / att.hosts read-only at /etc/resolv.conf and /etc/hosts.
    ...
    await att.close()                        # after the sandbox's processes are gone
    await gateway.stop()
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
