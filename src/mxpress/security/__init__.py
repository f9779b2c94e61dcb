"""Security pieces of the relay: password hashing for submission users (passwords.py).

Nothing is re-exported here, so `python -m mxpress.security.passwords` runs without the
module being imported twice.
"""
