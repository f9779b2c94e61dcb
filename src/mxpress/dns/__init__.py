"""DNS for mail delivery: MX routes, host addresses, and a shared TTL cache.

Example::

    resolver = Resolver(nameservers=["127.0.0.1:5353"], timeout=2.0)
    route = await resolver.mx("example.com")
"""

from mxpress.dns.cache import Answer, DNSCache, DNSStats
from mxpress.dns.mx import MXHost, MXRecord, MXRoute, normalize_domain, order_mx
from mxpress.dns.resolver import Resolver
from mxpress.dns.upstream import parse_nameserver

__all__ = [
    "Answer",
    "DNSCache",
    "DNSStats",
    "MXHost",
    "MXRecord",
    "MXRoute",
    "Resolver",
    "normalize_domain",
    "order_mx",
    "parse_nameserver",
]
