"""The HTTP API's OpenAPI 3.1 document, served at /openapi.json.

Written by hand next to the validation (http_schema.py) it describes: the patterns and
limits here are the ones the code enforces, so that a client (or schemathesis) generating
requests from the schema gets them accepted. What JSON Schema cannot say (the address
grammar in full, a raw message's header section) is said in the descriptions.
"""

from __future__ import annotations

from typing import Any

from mxpress.server.http_schema import MAX_LINE, MAX_PAGE, RESERVED_HEADERS

JSON = dict[str, Any]

_TEXT_NO_CONTROLS = "^[^\\u0000-\\u0008\\u000a-\\u001f\\u007f\\u0085\\u2028\\u2029]*$"
_BASE64 = "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"
_TOKEN = "[a-zA-Z0-9][a-zA-Z0-9!#$&^_.+-]{0,63}"


def _any_case(word: str) -> str:
    """A regex for `word` in any letter case (JSON Schema patterns have no flags)."""
    return "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else f"\\{c}" for c in word)


_RESERVED = "|".join(_any_case(name) for name in sorted(RESERVED_HEADERS))
_HEADER_NAME = f"^(?!(?:{_RESERVED})$)[!-9;-~]{{1,76}}$"
_MIME_TYPE = f"^(?!{_any_case('multipart')}/){_TOKEN}/{_TOKEN}$"


def _ref(name: str) -> JSON:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: JSON, description: str, headers: JSON | None = None) -> JSON:
    response: JSON = {
        "description": description,
        "content": {"application/json": {"schema": schema}},
    }
    if headers:
        response["headers"] = headers
    return response


def _errors(*statuses: int) -> JSON:
    why = {
        400: "Invalid request; the message names the field and the problem.",
        401: "Missing or unknown API key.",
        404: "No such message.",
        409: "The message is not in a state that allows this.",
        413: "The request body or the built message is over the size limit.",
        415: "The body is not application/json.",
        503: "The queue is unavailable (nothing was stored); retry later.",
    }
    out: JSON = {}
    for status in statuses:
        headers = None
        if status == 401:
            headers = {"WWW-Authenticate": {"schema": {"type": "string"}}}
        out[str(status)] = _json(_ref("Error"), why[status], headers)
    return out


def _operation(
    summary: str, operation_id: str, ok: JSON, errors: tuple[int, ...], **extra: Any
) -> JSON:
    return {
        "summary": summary,
        "operationId": operation_id,
        "responses": {**ok, **_errors(*errors)},
        **extra,
    }


_ID = {
    "name": "id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "minLength": 1, "maxLength": 128},
}


def _schemas(max_message_size: int, max_recipients: int) -> JSON:
    address = {"type": "string", "format": "email", "maxLength": 254}
    addresses = {"type": "array", "items": address, "maxItems": max_recipients}
    header_text = {"type": "string", "pattern": _TEXT_NO_CONTROLS}
    nullable_time = {"type": ["string", "null"], "format": "date-time"}
    states = {"type": "string", "enum": ["active", "held", "done"]}
    recipient_states = {"type": "string", "enum": ["pending", "delivered", "deferred", "bounced"]}
    needs_recipient = [
        {"required": [key], "properties": {key: {"minItems": 1}}} for key in ("to", "cc", "bcc")
    ]
    return {
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
                }
            },
        },
        "Attachment": {
            "type": "object",
            "additionalProperties": False,
            "required": ["filename", "content_base64"],
            "properties": {
                "filename": {**header_text, "minLength": 1, "maxLength": 255},
                "content_type": {
                    "type": "string",
                    "pattern": _MIME_TYPE,
                    "default": "application/octet-stream",
                },
                "content_base64": {
                    "type": "string",
                    "pattern": _BASE64,
                    "contentEncoding": "base64",
                },
            },
        },
        "Message": {
            "type": "object",
            "description": "A message built from fields. The envelope recipients are to + cc "
            "+ bcc (duplicates once); Bcc never appears in the message. Date, Message-ID and "
            f"MIME are generated. At most {max_recipients} addresses in each of to, cc and "
            f"bcc; the built message at most {max_message_size} octets.",
            "additionalProperties": False,
            "required": ["from"],
            "anyOf": needs_recipient,
            "properties": {
                "from": address,
                "to": addresses,
                "cc": addresses,
                "bcc": addresses,
                "subject": header_text,
                "text": {"type": "string"},
                "html": {"type": ["string", "null"]},
                "headers": {
                    "type": "object",
                    "description": "Extra header fields. Names set from other fields or "
                    f"generated are refused: {', '.join(sorted(RESERVED_HEADERS))}.",
                    "propertyNames": {"pattern": _HEADER_NAME},
                    "additionalProperties": header_text,
                },
                "attachments": {"type": "array", "items": _ref("Attachment")},
            },
        },
        "RawMessage": {
            "type": "object",
            "description": "A complete RFC 5322 message as text (UTF-8; LF or CRLF line ends). "
            "It must have a valid header section with exactly one From, and lines of at most "
            f"{MAX_LINE} octets. The envelope comes from 'from'/'to' or, when absent, from the "
            "From and To/Cc/Bcc headers. The Bcc header is removed.",
            "additionalProperties": False,
            "required": ["raw"],
            "properties": {
                "raw": {"type": "string", "minLength": 1},
                "from": address,
                "to": {**addresses, "minItems": 1},
            },
        },
        "Accepted": {
            "type": "object",
            "required": ["id", "recipients", "size", "message_id"],
            "properties": {
                "id": {"type": "string"},
                "recipients": {"type": "array", "items": {"type": "string"}},
                "size": {"type": "integer", "minimum": 0},
                "message_id": {"type": ["string", "null"]},
            },
        },
        "Recipient": {
            "type": "object",
            "required": [
                "address",
                "state",
                "attempts",
                "next_attempt",
                "last_reply",
                "last_host",
                "updated_at",
            ],
            "properties": {
                "address": {"type": "string"},
                "state": recipient_states,
                "attempts": {"type": "integer", "minimum": 0},
                "next_attempt": nullable_time,
                "last_reply": {"type": "string"},
                "last_host": {"type": "string"},
                "updated_at": nullable_time,
            },
        },
        "MessageStatus": {
            "type": "object",
            "required": [
                "id",
                "state",
                "sender",
                "created_at",
                "size",
                "is_bounce",
                "origin",
                "envid",
                "recipients",
            ],
            "properties": {
                "id": {"type": "string"},
                "state": states,
                "sender": {"type": "string", "description": "Empty for the null sender (bounces)."},
                "created_at": {"type": "string", "format": "date-time"},
                "size": {"type": "integer", "minimum": 0},
                "is_bounce": {"type": "boolean"},
                "origin": {
                    "type": "string",
                    "description": "'http:<key name>', 'smtp:<user>@<peer>', ...",
                },
                "envid": {"type": ["string", "null"]},
                "recipients": {"type": "array", "items": _ref("Recipient")},
            },
        },
        "MessageList": {
            "type": "object",
            "required": ["messages", "next_after"],
            "properties": {
                "messages": {"type": "array", "items": _ref("MessageStatus")},
                "next_after": {
                    "type": ["string", "null"],
                    "description": "Pass as 'after' for the next page; null on the last page.",
                },
            },
        },
        "Counts": {
            "type": "object",
            "required": ["messages", "recipients"],
            "properties": {
                "messages": {"type": "object", "additionalProperties": {"type": "integer"}},
                "recipients": {"type": "object", "additionalProperties": {"type": "integer"}},
            },
        },
        "StateChange": {
            "type": "object",
            "required": ["id", "state"],
            "properties": {"id": {"type": "string"}, "state": states},
        },
        "Retried": {
            "type": "object",
            "required": ["retried"],
            "properties": {"id": {"type": "string"}, "retried": {"type": "integer", "minimum": 0}},
        },
        "Health": {
            "type": "object",
            "required": ["status"],
            "properties": {"status": {"type": "string"}},
        },
    }


def _query(name: str, schema: JSON, description: str) -> JSON:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


def _by_id(summary: str, operation_id: str, ok: JSON, errors: tuple[int, ...]) -> JSON:
    return _operation(summary, operation_id, ok, errors, parameters=[_ID])


# From a new message's id to what can be done with it (for clients and stateful tests).
_LINKS = {
    name: {"operationId": operation_id, "parameters": {"id": "$response.body#/id"}}
    for name, operation_id in (
        ("GetMessage", "getMessage"),
        ("HoldMessage", "holdMessage"),
        ("ReleaseMessage", "releaseMessage"),
        ("RetryMessage", "retryMessage"),
        ("CancelMessage", "cancelMessage"),
    )
}


def openapi_document(*, max_message_size: int, max_recipients: int) -> JSON:
    """The OpenAPI 3.1 document for an app built with these limits."""
    states = {"type": "string", "enum": ["active", "held", "done"]}
    recipient_states = {"type": "string", "enum": ["pending", "delivered", "deferred", "bounced"]}
    limit = {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": 100}
    list_params = [
        _query("state", states, "Message state."),
        _query("recipient_state", recipient_states, "Messages with a recipient in this state."),
        _query("sender", {"type": "string"}, "Envelope sender (case-insensitive)."),
        _query("domain", {"type": "string"}, "Messages with a recipient at this domain."),
        _query("limit", limit, "Page size."),
        _query("after", {"type": "string"}, "The 'next_after' of the previous page."),
    ]
    accepted = _json(_ref("Accepted"), "Stored durably (fsynced); delivery follows.")
    accepted["headers"] = {"Location": {"schema": {"type": "string"}}}
    accepted["links"] = _LINKS
    body = {"oneOf": [_ref("Message"), _ref("RawMessage")]}
    deleted = {"204": {"description": "Deleted: it will not be delivered further."}}
    retried = _json(_ref("Retried"), "How many recipients were made due.")
    health = _json(_ref("Health"), "Healthy.")
    unhealthy = _json(_ref("Health"), "Unhealthy; the body says why.")
    metrics = {
        "description": "Prometheus text exposition format.",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    }
    paths = {
        "/v1/messages": {
            "post": _operation(
                "Queue a message for delivery",
                "submitMessage",
                {"202": accepted},
                (400, 401, 413, 415, 503),
                requestBody={"required": True, "content": {"application/json": {"schema": body}}},
            )
        },
        "/v1/messages/{id}": {
            "get": _by_id(
                "A message's state, per recipient",
                "getMessage",
                {"200": _json(_ref("MessageStatus"), "The message.")},
                (401, 404, 503),
            ),
            "delete": _by_id(
                "Cancel a message: remove it from the queue (as DELETE /v1/queue/{id})",
                "cancelMessage",
                deleted,
                (401, 404, 503),
            ),
        },
        "/v1/queue": {
            "get": _operation(
                "List queued messages (oldest first, paged)",
                "listQueue",
                {"200": _json(_ref("MessageList"), "One page of messages.")},
                (400, 401, 503),
                parameters=list_params,
            )
        },
        "/v1/queue/counts": {
            "get": _operation(
                "Queue depth by state",
                "queueCounts",
                {"200": _json(_ref("Counts"), "Messages and recipients by state.")},
                (401, 503),
            )
        },
        "/v1/queue/retry": {
            "post": _operation(
                "Make every deferred recipient due now", "retryAll", {"200": retried}, (401, 503)
            )
        },
        "/v1/queue/{id}": {
            "delete": _by_id(
                "Delete a message (it will not be delivered further)",
                "deleteMessage",
                deleted,
                (401, 404, 503),
            )
        },
        "/v1/queue/{id}/hold": {
            "post": _by_id(
                "Put a message on hold",
                "holdMessage",
                {"200": _json(_ref("StateChange"), "On hold.")},
                (401, 404, 409, 503),
            )
        },
        "/v1/queue/{id}/release": {
            "post": _by_id(
                "Release a held message",
                "releaseMessage",
                {"200": _json(_ref("StateChange"), "Active again.")},
                (401, 404, 409, 503),
            )
        },
        "/v1/queue/{id}/retry": {
            "post": _by_id(
                "Make a message's deferred recipients due now",
                "retryMessage",
                {"200": retried},
                (401, 404, 503),
            )
        },
        "/healthz": {
            "get": _operation(
                "Liveness and readiness (no auth)",
                "health",
                {"200": health, "503": unhealthy},
                (),
                security=[],
            )
        },
        "/metrics": {
            "get": _operation(
                "Prometheus metrics (no auth: keep the port private)",
                "metrics",
                {"200": metrics},
                (),
                security=[],
            )
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "mxpress relay HTTP API",
            "version": "1",
            "description": "Submit messages to the relay's durable queue, follow their delivery, "
            "and manage the queue. Authenticate with 'Authorization: Bearer <API key>'. "
            'Errors are {"error": {"code", "message"}}.',
        },
        "security": [{"bearerAuth": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
            "schemas": _schemas(max_message_size, max_recipients),
        },
    }
