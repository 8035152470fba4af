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

Events (``Event.data`` keys; ``pid`` is the host pid when it could be found, ``step`` the
agent step that opened the flow or sent the query):

* ``net.connect``: ``transport`` (tcp, udp, icmp, ...), ``src``, ``dst``, ``port``,
  ``verdict`` (allow/deny), ``reason``, ``rule`` (index of the allow rule), ``phase``
  (``decision`` for a refusal, ``end`` when an allowed flow closes), ``protocol``,
  ``server_name``, ``http_method``, ``http_path``, ``ssh_banner``, ``stratum_method``,
  ``bytes_up``, ``bytes_down``, ``duration``, ``error``, ``suppressed_before``.
* ``net.dns``: ``name``, ``qtype``, ``verdict``, ``reason``, ``answers``, ``rcode``,
  ``transport``, ``src``, ``suppressed_before``.
* ``net.signal``: ``signal`` (ssh_outbound, mining_stratum, mining_pool_dns,
  tunnel_service_dns, dns_tunnel, scan, exfiltration), ``severity`` (low..critical, the
  keys of ResponsePolicy), details, ``suppressed_before``.

``suppressed_before`` counts events of the same kind dropped by the per-sandbox rate
limit since the previous one (a flooding sandbox can't flood the audit log).
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
