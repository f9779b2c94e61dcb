"""The relay's listeners: SMTP submission (submission.py; one connection: connection.py)."""

from mxpress.protocol.server_checks import RejectReason
from mxpress.server.submission import Accept, Submission, SubmissionServer, SubmissionStats

__all__ = ["Accept", "RejectReason", "Submission", "SubmissionServer", "SubmissionStats"]
