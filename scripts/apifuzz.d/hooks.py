"""schemathesis hooks for scripts/apifuzz.

Things a schema cannot say, handled here so that the checks stay strict everywhere else:

- A destination URL (`url`, `callback_url`) is accepted only when its host resolves to an
  address the SSRF guard admits (paygate_core::destination). The document bounds its form;
  a positive case gets the instance's demo receiver URL instead of a random host (negative
  cases keep whatever the fuzzer drew, and must be refused).
- An amount is refused when written with a fraction part, even `243.0`: serde_json reads
  such a literal as an f64, which cannot hold every 64-bit amount exactly, so paygate never
  reads money from one (core `Amount::from_json`). JSON Schema's `integer` admits `243.0`
  (numbers compare by value), so no keyword can say it; a positive case sends an integral
  float as the integer it stands for. Negative cases keep what the fuzzer drew.
- Some operations may refuse a schema-valid request for the merchant's money or state
  (schemathesis.toml allows 400 there). `refusals_are_about_state` fails such a 400 unless its
  error code is one of those refusals: a refusal of the request's shape is still a failure.
"""

import os

import schemathesis

# The protobuf callback route takes raw bytes (the schema says a binary string): sent as is.
schemathesis.serializer.alias("application/x-protobuf", "application/octet-stream")

RECEIVER_URL = os.environ.get("APIFUZZ_RECEIVER_URL", "http://127.0.0.1:8099/webhooks")
URL_FIELDS = ("url", "callback_url")

# Error codes of a refusal decided by state, per operation (the documented 400s).
STATE_REFUSALS = {
    ("POST", "/v1/withdrawals"): {
        "balance_insufficient",
        "amount_over_limit",
        "daily_payout_limit_exceeded",
    },
    ("POST", "/v1/deposits"): {"amount_over_limit"},
    ("POST", "/v1/transactions/{id}/refunds"): {
        "transaction_not_refundable",
        "amount_too_large",
        "balance_insufficient",
    },
    ("POST", "/v1/webhook-endpoints"): {"endpoint_limit_reached"},
}


def _positive(case) -> bool:
    meta = getattr(case, "meta", None)
    if meta is None:
        return False
    return bool(meta.generation.mode.is_positive)


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    if not _positive(case) or not isinstance(case.body, dict):
        return
    for field in URL_FIELDS:
        if isinstance(case.body.get(field), str):
            case.body[field] = RECEIVER_URL
    amount = case.body.get("amount")
    if isinstance(amount, float) and amount.is_integer():
        case.body["amount"] = int(amount)


@schemathesis.check
def refusals_are_about_state(ctx, response, case):
    if not _positive(case) or response.status_code != 400:
        return None
    allowed = STATE_REFUSALS.get((case.operation.method.upper(), case.operation.path))
    if allowed is None:
        return None
    try:
        code = response.json()["error"]["code"]
    except Exception:  # noqa: BLE001 - any unreadable body is a failure below
        code = None
    if code not in allowed:
        raise AssertionError(
            f"a schema-valid request was refused with 400 `{code}`; only a refusal about "
            f"state is allowed here ({', '.join(sorted(allowed))})"
        )
    return None
