"""Routing (relay or MX), delivery over pooled sessions, per-recipient outcomes."""

from mxpress.delivery.deliverer import Deliverer
from mxpress.delivery.result import Outcome, RecipientResult, SendResult
from mxpress.delivery.router import Router, parse_relay

__all__ = ["Deliverer", "Outcome", "RecipientResult", "Router", "SendResult", "parse_relay"]
