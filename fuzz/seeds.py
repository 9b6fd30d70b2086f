#!/usr/bin/env python3
"""Writes the committed seed corpora, fuzz/corpus/<target>/seed-*, from real samples.

- callback_raw / callback_signed: every documented provider callback in
  gateways/fixtures/<kind>/callbacks/ (signed with the fixtures' secrets, as the providers
  sign them), and callbacks of the three sandbox protocols signed with the fuzz targets'
  sandbox secret (paygate_fuzz::SANDBOX_WEBHOOK_SECRET).
- responses: every documented provider answer in gateways/fixtures/<kind>/responses/, and
  answers of the sandbox protocols.
- api_bodies: valid and invalid merchant API bodies.
- bus_envelope: encoded bus envelopes of every event kind, and each body on its own.

Run it again after adding a fixture: `python3 fuzz/seeds.py`. It rewrites only seed-*
files; other files in a corpus folder (a crash kept as a regression input) stay.
"""

import glob
import hashlib
import hmac
import json
import os
import struct

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "fuzz", "corpus")
FIXTURES = os.path.join(ROOT, "gateways", "fixtures")

# Selector bytes: the order of paygate_fuzz::Connector.
SELECTOR = {"sandbox-json": 0, "sandbox-soap": 1, "sandbox-proto": 2, "paystack": 3, "stripe": 4, "mpesa": 5}
SANDBOX_SECRET = b"whsec_fuzz"
NOW = 1764748805  # paygate_fuzz::fixed_now(): 2025-12-03T08:00:05Z
TXN = "txn_0192f3a4b5c67d8e9fa0b1c2d3e4f507"
RFD = "rfd_0192f3a4b5c67d8e9fa0b1c2d3e4f508"
MCH = "mch_0192f3a4b5c67d8e9fa0b1c2d3e4f509"


def write(target, name, data):
    folder = os.path.join(CORPUS, target)
    os.makedirs(folder, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(folder, "seed-" + name), "wb") as f:
        f.write(data)


def clear_seeds():
    for path in glob.glob(os.path.join(CORPUS, "*", "seed-*")):
        os.remove(path)


# --- protobuf, by hand (varint, length-delimited) ----------------------------------------
def varint(n):
    if n < 0:
        n += 1 << 64
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field_varint(tag, n):
    return varint(tag << 3) + varint(n)


def field_bytes(tag, data):
    if isinstance(data, str):
        data = data.encode()
    return varint((tag << 3) | 2) + varint(len(data)) + data


# --- the sandbox protocols' callbacks ---------------------------------------------------
def json_event(event, status, amount=1050, currency="USD", sent_at="2025-12-03T08:00:00Z"):
    data = {"id": "ch_fuzz_1", "reference": TXN, "status": status, "amount": amount, "currency": currency}
    if status == "failed":
        data["failure_code"] = "insufficient_funds"
        data["gateway_response"] = "Declined"
    return json.dumps({"event": event, "event_id": "evt_fuzz_1", "sent_at": sent_at, "data": data})


def json_refund_event(event, status):
    data = {"id": "rf_fuzz_1", "reference": RFD, "transaction": TXN, "status": status, "amount": 500, "currency": "USD"}
    return json.dumps({"event": event, "event_id": "evt_fuzz_2", "sent_at": "2025-12-03T08:00:00Z", "data": data})


def soap_notification(state, kind="deposit", extra=""):
    return (
        '<?xml version="1.0" encoding="utf-8"?>'
        '<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" xmlns:pay="urn:sandbox:payments">'
        "<soap:Body><pay:PaymentNotification>"
        "<pay:EventId>evt_fuzz_3</pay:EventId>"
        f"<pay:Reference>{TXN}</pay:Reference>"
        f"<pay:Kind>{kind}</pay:Kind>"
        "<pay:ProviderReference>prov_fuzz_3</pay:ProviderReference>"
        f"<pay:State>{state}</pay:State>{extra}"
        "<pay:Amount>1050</pay:Amount><pay:Currency>USD</pay:Currency>"
        "<pay:Timestamp>2025-12-03T08:00:00+00:00</pay:Timestamp>"
        "</pay:PaymentNotification></soap:Body></soap:Envelope>"
    )


def proto_event(state, kind=1, amount=1050, sent_at_ms=(NOW - 5) * 1000):
    return (
        field_bytes(1, "evt_fuzz_4")
        + field_bytes(2, TXN)
        + field_varint(3, kind)
        + field_bytes(4, "prov_fuzz_4")
        + field_varint(5, state)
        + field_varint(6, amount)
        + field_bytes(7, "USD")
        + (field_bytes(8, "declined") + field_bytes(9, "Declined") if state == 3 else b"")
        + field_varint(10, sent_at_ms)
    )


def sandbox_callbacks():
    """(kind, name, body bytes, signed headers as (name, value), content type)."""
    out = []
    for name, body in [
        ("charge_success", json_event("charge.success", "success")),
        ("charge_failed", json_event("charge.failed", "failed")),
        ("transfer_success", json_event("transfer.success", "success")),
        ("transfer_failed", json_event("transfer.failed", "failed")),
        ("refund_processed", json_refund_event("refund.processed", "succeeded")),
        ("refund_failed", json_refund_event("refund.failed", "failed")),
        ("stale", json_event("charge.success", "success", sent_at="2019-01-01T00:00:00Z")),
    ]:
        body = body.encode()
        sig = hmac.new(SANDBOX_SECRET, body, hashlib.sha512).hexdigest()
        out.append(("sandbox-json", name, body, [("x-sandbox-signature", sig)], "application/json"))
    for name, body in [
        ("succeeded", soap_notification("SUCCEEDED")),
        ("failed", soap_notification("FAILED", "withdrawal", "<pay:FailureCode>declined</pay:FailureCode>")),
        ("accepted_is_not_final", soap_notification("ACCEPTED")),
    ]:
        body = body.encode()
        t = str(NOW - 5)
        sig = hmac.new(SANDBOX_SECRET, t.encode() + b"." + body, hashlib.sha256).hexdigest()
        out.append(("sandbox-soap", name, body, [("x-soap-signature", f"t={t},v1={sig}")], "text/xml; charset=utf-8"))
    for name, payload in [
        ("succeeded", proto_event(2)),
        ("failed", proto_event(3, kind=2)),
        ("unspecified_state", proto_event(0)),
    ]:
        signature = hmac.new(SANDBOX_SECRET, payload, hashlib.sha256).digest()
        body = field_bytes(1, payload) + field_bytes(2, signature)
        out.append(("sandbox-proto", name, body, [], "application/x-protobuf", payload))
    return out


def head(lines):
    return "".join(f"{k}: {v}\n" for k, v in lines).encode() + b"\n"


def callbacks():
    for entry in sandbox_callbacks():
        kind, name, body, headers, content_type = entry[:5]
        inner = entry[5] if len(entry) > 5 else body
        sel = bytes([SELECTOR[kind]])
        write("callback_raw", f"{kind}-{name}", sel + head([("content-type", content_type)] + headers) + body)
        for flags in (0, 1):
            write("callback_signed", f"{kind}-{name}-{flags}", sel + bytes([flags]) + inner)
    for path in sorted(glob.glob(os.path.join(FIXTURES, "*", "callbacks", "*.json"))):
        kind = path.split(os.sep)[-3]
        name = os.path.splitext(os.path.basename(path))[0]
        fixture = json.load(open(path))
        sel = bytes([SELECTOR[kind]])
        lines = []
        if fixture.get("content_type"):
            lines.append(("content-type", fixture["content_type"]))
        for k, v in fixture.get("headers", {}).items():
            if k.lower() != "content-type":
                lines.append((k.lower(), v))
        if fixture.get("path"):
            lines.append((":path", fixture["path"]))
        if fixture.get("received_at"):
            from datetime import datetime

            at = datetime.fromisoformat(fixture["received_at"].replace("Z", "+00:00"))
            lines.append((":received-at-ms", str(int(at.timestamp() * 1000))))
        body = fixture["body"].encode()
        write("callback_raw", f"{kind}-{name}", sel + head(lines) + body)
        # The signed target signs for itself: the body (and M-Pesa's path reference).
        if kind == "mpesa":
            reference = (fixture.get("path") or "").split("/")[0]
            write("callback_signed", f"{kind}-{name}", sel + b"\0" + reference.encode() + b"\n" + body)
        else:
            write("callback_signed", f"{kind}-{name}", sel + b"\0" + body)


def responses():
    for path in sorted(glob.glob(os.path.join(FIXTURES, "*", "responses", "*.json"))):
        kind = path.split(os.sep)[-3]
        name = os.path.splitext(os.path.basename(path))[0]
        f = json.load(open(path))
        t = f["transaction"]
        lines = [
            ("call", f["call"]),
            ("status", f["status"]),
            ("id", t["id"]),
            ("kind", t["kind"]),
            ("amount", t["amount"]),
            ("currency", t["currency"]),
        ]
        if t.get("provider_reference"):
            lines.append(("provider_reference", t["provider_reference"]))
        write("responses", f"{kind}-{name}", bytes([SELECTOR[kind]]) + head(lines) + f["body"].encode())
    data = {"id": "ch_fuzz_1", "reference": TXN, "status": "success", "amount": 1050, "currency": "USD"}
    write("responses", "sandbox-json-success", b"\0" + json.dumps({"status": True, "message": "ok", "data": data}).encode())
    write("responses", "sandbox-json-declined", b"\0" + json.dumps({"status": False, "message": "Declined", "code": "declined"}).encode())
    refund = {"id": "rf_1", "reference": RFD, "transaction": TXN, "status": "pending", "amount": 500, "currency": "USD"}
    write("responses", "sandbox-json-refund", b"\0" + json.dumps({"status": True, "message": "ok", "data": refund}).encode())
    write("responses", "sandbox-json-event", b"\0" + json_event("charge.success", "success").encode())
    env = (
        '<?xml version="1.0" encoding="utf-8"?><soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"'
        ' xmlns:pay="urn:sandbox:payments"><soap:Body>{}</soap:Body></soap:Envelope>'
    )
    write("responses", "sandbox-soap-deposit", b"\1" + env.format(
        f"<pay:DepositResponse><pay:Reference>{TXN}</pay:Reference><pay:State>ACCEPTED</pay:State>"
        "<pay:ProviderReference>prov_1</pay:ProviderReference></pay:DepositResponse>").encode())
    write("responses", "sandbox-soap-status", b"\1" + env.format(
        f"<pay:GetStatusResponse><pay:Reference>{TXN}</pay:Reference><pay:State>FAILED</pay:State>"
        "<pay:FailureCode>declined</pay:FailureCode><pay:FailureReason>Declined &amp; kept</pay:FailureReason>"
        "</pay:GetStatusResponse>").encode())
    write("responses", "sandbox-soap-fault", b"\1" + env.format(
        "<soap:Fault><faultcode>soap:Client.Declined</faultcode><faultstring>Declined</faultstring>"
        "<detail><pay:ErrorCode>insufficient_funds</pay:ErrorCode></detail></soap:Fault>").encode())
    write("responses", "sandbox-soap-notification", b"\1" + soap_notification("SUCCEEDED").encode())
    answer = field_bytes(1, TXN) + field_bytes(2, "prov_1") + field_varint(3, 2)
    write("responses", "sandbox-proto-answer", b"\2" + answer)
    write("responses", "sandbox-proto-error", b"\2" + field_bytes(1, "declined") + field_bytes(2, "Declined"))
    write("responses", "sandbox-proto-event", b"\2" + proto_event(2))


def api_bodies():
    bodies = [
        (0, "deposit", {"amount": 1050, "currency": "USD", "customer": "cust_42"}),
        (0, "deposit_full", {"amount": 1050, "currency": "USD", "customer": "cust_42", "gateway": "sandbox-json",
                             "callback_url": "https://8.8.8.8/cb", "metadata": {"order": "A-1", "n": 3, "ok": True, "none": None}}),
        (0, "deposit_named_host", {"amount": 99, "currency": "KWD", "customer": "c", "callback_url": "https://hooks.example.com:443/x?y=1"}),
        (0, "deposit_float", {"amount": 10.5, "currency": "USD", "customer": "c"}),
        (0, "deposit_huge", {"amount": 18446744073709551616, "currency": "usd", "customer": "c"}),
        (0, "deposit_nul", {"amount": 1, "currency": "USD", "customer": "c", "metadata": {"k": "a\u0000b"}}),
        (0, "deposit_internal_url", {"amount": 1, "currency": "USD", "customer": "c", "callback_url": "https://169.254.169.254/latest"}),
        (4, "deposit_dev_loopback", {"amount": 1, "currency": "JPY", "customer": "c", "callback_url": "http://127.0.0.1:9000/hook"}),
        (1, "refund", {"amount": 500, "reason": "damaged"}),
        (1, "refund_all", None),
        (1, "refund_negative", {"amount": -1}),
        (2, "endpoint", {"url": "https://8.8.8.8/hooks", "description": "main"}),
        (2, "endpoint_ipv6", {"url": "https://[2001:4860:4860::8888]:8443/h"}),
        (6, "endpoint_dev", {"url": "http://127.0.0.1:8099/webhooks"}),
    ]
    for selector, name, body in bodies:
        write("api_bodies", name, bytes([selector]) + json.dumps(body).encode())
    write("api_bodies", "not_json", b"\0{\"amount\": 1,")


def bus():
    pending = field_bytes(1, TXN) + field_varint(2, 3)
    callback = (
        field_bytes(1, "stripe")
        + field_bytes(2, "application/json")
        + field_bytes(3, b'{"id": "evt_1"}')
        + field_bytes(4, field_bytes(1, "stripe-signature") + field_bytes(2, "t=1,v1=00"))
        + field_varint(5, NOW * 1000)
        + field_bytes(6, "")
    )
    completed = field_bytes(1, TXN) + field_bytes(2, MCH) + field_bytes(3, "succeeded") + field_varint(4, 5)
    refund_pending = field_bytes(1, RFD) + field_varint(2, 1)
    refund_completed = field_bytes(1, RFD) + field_bytes(2, MCH) + field_bytes(3, "failed") + field_varint(4, 2)

    def envelope(tag, body, version=1):
        return field_varint(1, version) + field_bytes(2, "0192f3a4b5c67d8e9fa0b1c2d3e4f5ff") + field_varint(3, NOW * 1000) + field_bytes(tag, body)

    dead = (
        field_bytes(1, "paygate.transactions.pending")
        + field_varint(2, 1)
        + field_varint(3, 42)
        + field_bytes(4, TXN)
        + field_bytes(5, envelope(10, pending))
        + field_bytes(6, "unknown transaction")
        + field_bytes(7, "paygate-payment-processor")
    )
    bodies = [
        (10, 1, "transaction_pending", pending),
        (11, 2, "callback_received", callback),
        (12, 3, "transaction_completed", completed),
        (13, 4, "dead_letter", dead),
        (14, 5, "refund_pending", refund_pending),
        (15, 6, "refund_completed", refund_completed),
    ]
    for tag, selector, name, body in bodies:
        write("bus_envelope", "envelope-" + name, b"\0" + envelope(tag, body))
        write("bus_envelope", name, bytes([selector]) + body)
    write("bus_envelope", "envelope-future_version", b"\0" + envelope(10, pending, version=2))


if __name__ == "__main__":
    clear_seeds()
    callbacks()
    responses()
    api_bodies()
    bus()
    for target in sorted(os.listdir(CORPUS)):
        print(target, len(os.listdir(os.path.join(CORPUS, target))))
