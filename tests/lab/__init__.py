"""The loopback lab: real SMTP peers (Postfix smtp-sink, a private Postfix smtpd, aiosmtpd)
started by plain helpers in tests/lab/servers.py, for tests and benches. See README.md."""
