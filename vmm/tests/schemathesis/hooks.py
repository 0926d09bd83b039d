"""Schemathesis hooks for husk-vmm's API (loaded through SCHEMATHESIS_HOOKS by
vmm/tests/openapi_schemathesis.rs).

Two checks replace schemathesis' own where those assume a REST API that husk's
Firecracker-compatible one is not (the test explains which and why), and one
hook lets schema-valid requests reach the VMM's own validation.
"""

import schemathesis

# The beginnings of the fault messages with which the API refuses a request's
# shape (routing, body syntax, JSON types, unknown fields, ids), as opposed to
# its values or the VM's state (a kernel file that does not exist, a second
# network interface on the same TAP, a PATCH /vm before InstanceStart).
SHAPE_REFUSALS = (
    "Invalid request method and/or path",
    "GET request cannot have a body.",
    "Empty PUT request.",
    "An error occurred when deserializing the json body of a request",
    "The ID cannot be empty.",
    "API Resource IDs ",
    "The id from the path ",
    "Invalid HTTP request",
    "Invalid Content-Length header",
    "Transfer-Encoding ",
    "Request payload with size ",
    "Request line and headers are larger than",
)


def _fault_message(response):
    try:
        return response.json().get("fault_message", "")
    except Exception:  # noqa: BLE001 - not JSON: the schema checks report it
        return ""


@schemathesis.check
def schema_valid_requests_parse(ctx, response, case):
    """A request the spec calls valid is never refused for its shape: where
    it is refused, it is for a value or the VM's state, which the spec cannot
    describe. A refusal for its shape means spec and server disagree."""
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive:
        return None
    if response.status_code >= 400:
        message = _fault_message(response)
        if message.startswith(SHAPE_REFUSALS):
            raise AssertionError(
                f"A request valid by the spec was refused as malformed ({response.status_code}): {message}"
            )
    return None


@schemathesis.check
def bodies_are_labelled_json(ctx, response, case):
    """Every response with a body says it is JSON, and only a 204 has none.
    (Swagger 2.0 cannot tell schemathesis that a 204 has no media type.)"""
    content_type = response.headers.get("content-type", [None])
    content_type = content_type[0] if isinstance(content_type, list) else content_type
    if response.status_code == 204:
        if response.content:
            raise AssertionError("A 204 response has a body")
        return None
    if content_type is None or content_type.split(";")[0].strip() != "application/json":
        raise AssertionError(f"A {response.status_code} response's Content-Type is {content_type!r}, not application/json")
    return None


@schemathesis.hook
def before_call(context, case, kwargs):
    """In a schema-valid request, the body names the device the path names
    (the API requires the two ids to be equal, which the spec cannot say), so
    that such requests reach the VMM's checks instead of all being refused
    for the mismatch. Schema-violating requests are sent as generated. (A
    before_call hook, unlike map_case, sees the cases of every phase.)"""
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive:
        return
    if isinstance(case.body, dict) and case.path_parameters:
        for name, value in case.path_parameters.items():
            if name in case.body:
                case.body[name] = value
