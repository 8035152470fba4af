"""A simulated internet for tests, benchmarks and demos: test hosts in their own network
namespaces (198.51.100.0/24 and 203.0.113.0/24 only) serving HTTP, HTTPS, a package
index, SSH, a fake mining pool, a TCP/UDP sink and DNS, each counting the bytes it gets."""

from corral.bench.simnet.simnet import HOSTS, SINK_TCP_PORTS, SINK_UDP_PORTS, SimHost, SimNet

__all__ = ["HOSTS", "SINK_TCP_PORTS", "SINK_UDP_PORTS", "SimHost", "SimNet"]
