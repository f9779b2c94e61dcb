"""The relay's listeners: SMTP submission (submission.py; one connection: connection.py)."""

from mxpress.server.checks import RejectReason
from mxpress.server.submission import Accept, Submission, SubmissionServer, SubmissionStats

__all__ = ["Accept", "RejectReason", "Submission", "SubmissionServer", "SubmissionStats"]
