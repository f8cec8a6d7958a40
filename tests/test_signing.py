"""Signing must agree byte for byte with the providers' own libraries, both ways.

Expected values are computed here with hmac/hashlib, or taken from the providers' published
examples, never by calling our `sign` a second time.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import time
from datetime import UTC, datetime

import pytest
import slack_sdk.signature
import standardwebhooks.webhooks
import stripe
import svix.webhooks
from hypothesis import given, settings
from hypothesis import strategies as st

from replayproxy.config import SignatureConfig
from replayproxy.errors import ConfigError
from replayproxy.signing import (
    SCHEMES,
    SignatureError,
    sign,
    signature_header_names,
    validate,
    verify,
    webhook_id,
)

WHSEC = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
WHSEC_OLD = "whsec_" + base64.b64encode(b"old-key-old-key-old-key!").decode()
PLAIN = "s3cr3t-local"
PLAIN_OLD = "s3cr3t-upstream"
BODY = json.dumps({"id": "evt_1", "object": "event", "type": "job.completed"}).encode()
BINARY = b"\xff\xfe\x00\x80 not utf-8 \xc3"
TS = 1_700_000_000
MSG_ID = "msg_2xYz"

CUSTOM = SignatureConfig(
    scheme="custom",
    header="X-Camber-Signature",
    format="t={timestamp},sig={signature}",
    signed_payload="{id}:{timestamp}:{body}",
    encoding="base64",
    id_header="X-Camber-Event-Id",
)
CONFIGS = {
    "stripe": SignatureConfig(scheme="stripe"),
    "standard-webhooks": SignatureConfig(scheme="standard-webhooks"),
    "github": SignatureConfig(scheme="github"),
    "slack": SignatureConfig(scheme="slack"),
    "hmac-sha256": SignatureConfig(),
    "custom": CUSTOM,
}
SECRETS = {
    name: (WHSEC, WHSEC_OLD) if name == "standard-webhooks" else (PLAIN, PLAIN_OLD)
    for name in CONFIGS
}
CARRY_TIMESTAMP = ("stripe", "standard-webhooks", "slack", "custom")


def mac(key: bytes, payload: bytes) -> bytes:
    return hmac.new(key, payload, hashlib.sha256).digest()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def whsec_key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix("whsec_"))


# --- known answers ------------------------------------------------------------------------


def expected_headers(name: str, body: bytes) -> dict[str, str]:
    """Each scheme's headers for (PLAIN or WHSEC, body, TS, MSG_ID), written out by hand."""
    key = PLAIN.encode()
    if name == "stripe":
        return {"Stripe-Signature": f"t={TS},v1=" + mac(key, b"%d.%s" % (TS, body)).hex()}
    if name == "standard-webhooks":
        sig = mac(whsec_key(WHSEC), f"{MSG_ID}.{TS}.".encode() + body)
        return {
            "webhook-signature": "v1," + b64(sig),
            "webhook-timestamp": str(TS),
            "webhook-id": MSG_ID,
        }
    if name == "github":
        return {"X-Hub-Signature-256": "sha256=" + mac(key, body).hex()}
    if name == "slack":
        return {
            "X-Slack-Signature": "v0=" + mac(key, b"v0:%d:%s" % (TS, body)).hex(),
            "X-Slack-Request-Timestamp": str(TS),
        }
    if name == "hmac-sha256":
        return {"X-Signature": "sha256=" + mac(key, body).hex()}
    sig = mac(key, f"{MSG_ID}:{TS}:".encode() + body)
    return {"X-Camber-Signature": f"t={TS},sig={b64(sig)}", "X-Camber-Event-Id": MSG_ID}


@pytest.mark.parametrize("body", [BODY, BINARY, b""], ids=["json", "binary", "empty"])
@pytest.mark.parametrize("name", SCHEMES)
def test_known_answer(name: str, body: bytes) -> None:
    headers = sign(body, SECRETS[name][:1], CONFIGS[name], timestamp=TS, webhook_id=MSG_ID)
    assert headers == expected_headers(name, body)
    verify(body, headers, SECRETS[name][:1], CONFIGS[name], now=TS)


def test_published_vectors() -> None:
    """The examples in GitHub's, Slack's and Standard Webhooks' own documentation."""
    github = sign(b"Hello, World!", ["It's a Secret to Everybody"], CONFIGS["github"], timestamp=0)
    assert github["X-Hub-Signature-256"] == (
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    )
    slack_body = (
        b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id="
        b"G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook"
        b"-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F3977"
        b"00885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10"
        b"d2c447fce8b6703c"
    )
    slack = sign(
        slack_body, ["8f742231b10e8888abcd99yyyzzz85a5"], CONFIGS["slack"], timestamp=1531420618
    )
    assert slack["X-Slack-Signature"] == (
        "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"
    )
    std = sign(
        b'{"test": 2432232314}',
        ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"],
        CONFIGS["standard-webhooks"],
        timestamp=1614265330,
        webhook_id="msg_p5jXN8AQM9LWM0D4loKWxJek",
    )
    assert std["webhook-signature"] == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_hmac_sha256_overrides() -> None:
    config = SignatureConfig(header="X-Job-Sig", format="{signature}", encoding="base64")
    headers = sign(BINARY, [PLAIN], config, timestamp=TS)
    assert headers == {"X-Job-Sig": b64(mac(PLAIN.encode(), BINARY))}
    verify(BINARY, headers, [PLAIN], config)


def test_custom_defaults_and_template_escapes() -> None:
    config = SignatureConfig(scheme="custom", header="X-Sig")
    assert sign(BODY, [PLAIN], config, timestamp=TS) == {"X-Sig": mac(PLAIN.encode(), BODY).hex()}

    braces = SignatureConfig(
        scheme="custom",
        header="X-Sig",
        format="{{v2}} {timestamp}.{id}.{signature}",
        signed_payload="{{{timestamp}}}{body}",
        timestamp_header="X-Ts",
    )
    headers = sign(BINARY, [PLAIN], braces, timestamp=TS, webhook_id="evt.with.dots")
    sig = mac(PLAIN.encode(), b"{%d}%s" % (TS, BINARY)).hex()
    assert headers == {"X-Sig": f"{{v2}} {TS}.evt.with.dots.{sig}", "X-Ts": str(TS)}
    verify(BINARY, headers, [PLAIN], braces, now=TS)
    assert webhook_id(headers, braces) == "evt.with.dots"


def test_named_schemes_ignore_header_and_format_overrides() -> None:
    config = SignatureConfig(scheme="github", header="X-Other", format="x={signature}")
    assert set(sign(BODY, [PLAIN], config, timestamp=TS)) == {"X-Hub-Signature-256"}


# --- the providers' libraries accept our signatures ---------------------------------------


def test_stripe_library_accepts_ours() -> None:
    headers = sign(BODY, [PLAIN], CONFIGS["stripe"], timestamp=int(time.time()))
    event = stripe.Webhook.construct_event(BODY, headers["Stripe-Signature"], PLAIN)
    assert event.id == "evt_1"


def test_standardwebhooks_and_svix_libraries_accept_ours() -> None:
    headers = sign(
        BODY, [WHSEC], CONFIGS["standard-webhooks"], timestamp=int(time.time()), webhook_id=MSG_ID
    )
    assert standardwebhooks.webhooks.Webhook(WHSEC).verify(BODY, headers)["id"] == "evt_1"
    svix.webhooks.Webhook(WHSEC).verify(BODY, headers)
    unprefixed = WHSEC.removeprefix("whsec_")
    assert sign(BODY, [unprefixed], CONFIGS["standard-webhooks"], timestamp=TS) == sign(
        BODY, [WHSEC], CONFIGS["standard-webhooks"], timestamp=TS
    )


def test_unpadded_standard_webhooks_secret_matches_the_library() -> None:
    unpadded = "whsec_" + b64(b"key material that needs padding!").rstrip("=")
    assert not unpadded.endswith("=")
    headers = sign(BODY, [unpadded], CONFIGS["standard-webhooks"], timestamp=int(time.time()))
    standardwebhooks.webhooks.Webhook(unpadded).verify(BODY, headers)
    verify(BODY, headers, [unpadded], CONFIGS["standard-webhooks"])


def test_slack_library_accepts_ours() -> None:
    headers = sign(BODY, [PLAIN], CONFIGS["slack"], timestamp=int(time.time()))
    verifier = slack_sdk.signature.SignatureVerifier(PLAIN)
    assert verifier.is_valid(
        BODY, headers["X-Slack-Request-Timestamp"], headers["X-Slack-Signature"]
    )
    assert verifier.is_valid_request(BODY, headers)


def test_key_rotation_in_provider_libraries() -> None:
    now = int(time.time())
    stripe_headers = sign(BODY, [PLAIN, PLAIN_OLD], CONFIGS["stripe"], timestamp=now)
    assert stripe_headers["Stripe-Signature"].count(",v1=") == 2
    for secret in (PLAIN, PLAIN_OLD):
        stripe.Webhook.construct_event(BODY, stripe_headers["Stripe-Signature"], secret)
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(BODY, stripe_headers["Stripe-Signature"], "other")

    std_headers = sign(BODY, [WHSEC, WHSEC_OLD], CONFIGS["standard-webhooks"], timestamp=now)
    entries = std_headers["webhook-signature"].split(" ")
    assert len(entries) == 2 and all(e.startswith("v1,") for e in entries)
    for secret in (WHSEC, WHSEC_OLD):
        standardwebhooks.webhooks.Webhook(secret).verify(BODY, std_headers)
        svix.webhooks.Webhook(secret).verify(BODY, std_headers)


# --- our verify accepts the providers' libraries' signatures ------------------------------


def test_ours_accepts_stripe_library() -> None:
    sig_header = stripe.WebhookSignature.generate_signature_header(BODY.decode(), PLAIN, TS)
    verify(BODY, {"stripe-signature": sig_header}, [PLAIN], CONFIGS["stripe"], now=TS)
    # Stripe sends test-mode v0= entries alongside v1=; they must not get in the way.
    mixed = sig_header + ",v0=" + "ab" * 32
    verify(BODY, {"Stripe-Signature": mixed}, [PLAIN], CONFIGS["stripe"], now=TS)


def test_ours_accepts_standardwebhooks_and_svix_libraries() -> None:
    when = datetime.fromtimestamp(TS, tz=UTC)
    value = standardwebhooks.webhooks.Webhook(WHSEC).sign(MSG_ID, when, BODY.decode())
    headers = {"Webhook-Id": MSG_ID, "Webhook-Timestamp": str(TS), "Webhook-Signature": value}
    verify(BODY, headers, [WHSEC], CONFIGS["standard-webhooks"], now=TS)

    value = svix.webhooks.Webhook(WHSEC).sign(MSG_ID, when, BODY.decode())
    svix_headers = {"svix-id": MSG_ID, "svix-timestamp": str(TS), "svix-signature": value}
    verify(BODY, svix_headers, [WHSEC], CONFIGS["standard-webhooks"], now=TS)
    assert webhook_id(svix_headers, CONFIGS["standard-webhooks"]) == MSG_ID


def test_ours_accepts_slack_library() -> None:
    verifier = slack_sdk.signature.SignatureVerifier(PLAIN)
    sig = verifier.generate_signature(timestamp=str(TS), body=BODY)
    headers = {"X-Slack-Signature": sig, "X-Slack-Request-Timestamp": str(TS)}
    verify(BODY, headers, [PLAIN], CONFIGS["slack"], now=TS)


def test_ours_accepts_hand_made_github_signature() -> None:
    headers = {"x-hub-signature-256": "sha256=" + mac(PLAIN.encode(), BODY).hex().upper()}
    verify(BODY, headers, [PLAIN], CONFIGS["github"])


# --- rejections ---------------------------------------------------------------------------


def signed(name: str, body: bytes = BODY, ts: int = TS) -> dict[str, str]:
    return sign(body, SECRETS[name][:1], CONFIGS[name], timestamp=ts, webhook_id=MSG_ID)


@pytest.mark.parametrize("name", SCHEMES)
def test_wrong_secret_and_tampered_body(name: str) -> None:
    headers = signed(name)
    other = [SECRETS[name][1]]
    with pytest.raises(SignatureError, match="no signature .* matched"):
        verify(BODY, headers, other, CONFIGS[name], now=TS)
    with pytest.raises(SignatureError, match="no signature .* matched"):
        verify(BODY + b" ", headers, SECRETS[name][:1], CONFIGS[name], now=TS)


@pytest.mark.parametrize("name", SCHEMES)
def test_missing_headers(name: str) -> None:
    headers = signed(name)
    for dropped in headers:
        rest = {k: v for k, v in headers.items() if k != dropped}
        with pytest.raises(SignatureError, match=f"missing header {dropped}"):
            verify(BODY, rest, SECRETS[name][:1], CONFIGS[name], now=TS)


MALFORMED = {
    "stripe": ["", "v1=abc", "t=1700000000", "t=1700000000;v1=ab", "t=soon,v1=abcd"],
    "standard-webhooks": ["", "v2,abc", "v1 abc", "v1,***"],
    "github": ["", "sha1=abcd", "sha256=", "sha256=xyz", "sha256=abc"],
    "slack": ["", "v1=abcd", "v0=zz"],
    "hmac-sha256": ["", "abcd", "sha256=not-hex"],
    "custom": ["", "sig=abc", "t=1,sig=", "t=x,sig=YWJj", "t=1,sig=!!"],
}


@pytest.mark.parametrize("name", SCHEMES)
def test_malformed_signature_header(name: str) -> None:
    headers = signed(name)
    header = next(iter(headers))
    for bad in MALFORMED[name]:
        with pytest.raises(SignatureError, match="malformed"):
            verify(BODY, {**headers, header: bad}, SECRETS[name][:1], CONFIGS[name], now=TS)


@pytest.mark.parametrize("name", ["standard-webhooks", "slack"])
def test_malformed_timestamp_header(name: str) -> None:
    headers = signed(name)
    ts_header = next(h for h in headers if "timestamp" in h.lower())
    for bad in ["", "soon", "1.5", "-1", "1e9", "9" * 5000]:
        with pytest.raises(SignatureError, match=f"malformed timestamp in {ts_header}"):
            verify(BODY, {**headers, ts_header: bad}, SECRETS[name][:1], CONFIGS[name], now=TS)


@pytest.mark.parametrize("name", CARRY_TIMESTAMP)
def test_timestamp_tolerance(name: str) -> None:
    headers = signed(name)
    secrets, config = SECRETS[name][:1], CONFIGS[name]
    verify(BODY, headers, secrets, config, now=TS + 300)
    verify(BODY, headers, secrets, config, now=TS - 300)
    with pytest.raises(SignatureError, match="301s in the past, outside the 300s tolerance"):
        verify(BODY, headers, secrets, config, now=TS + 301)
    with pytest.raises(SignatureError, match="400s in the future"):
        verify(BODY, headers, secrets, config, now=TS - 400)
    lenient = dataclasses.replace(config, tolerance=0)
    verify(BODY, headers, secrets, lenient, now=TS + 10**6)


@pytest.mark.parametrize("name", ["github", "hmac-sha256"])
def test_schemes_without_timestamp_never_expire(name: str) -> None:
    verify(BODY, signed(name), SECRETS[name][:1], CONFIGS[name], now=TS + 10**9)


def test_default_now_is_the_clock() -> None:
    with pytest.raises(SignatureError, match="in the past"):
        verify(BODY, signed("stripe"), [PLAIN], CONFIGS["stripe"])


def test_replayed_timestamp_cannot_be_moved() -> None:
    """Re-dating a captured signature to pass the tolerance check breaks the signature."""
    headers = signed("slack")
    headers["X-Slack-Request-Timestamp"] = str(TS + 1000)
    with pytest.raises(SignatureError, match="no signature"):
        verify(BODY, headers, [PLAIN], CONFIGS["slack"], now=TS + 1000)


# --- key rotation, ids, header names --------------------------------------------------------


@pytest.mark.parametrize("name", SCHEMES)
def test_key_rotation(name: str) -> None:
    new, old = SECRETS[name]
    config = CONFIGS[name]
    headers = sign(BODY, [new, old], config, timestamp=TS, webhook_id=MSG_ID)
    signature = next(iter(headers.values()))
    if name in ("stripe", "standard-webhooks"):
        sig_new = next(iter(sign(BODY, [new], config, timestamp=TS, webhook_id=MSG_ID).values()))
        sig_old = next(iter(sign(BODY, [old], config, timestamp=TS, webhook_id=MSG_ID).values()))
        assert signature.startswith(sig_new) and sig_old.split(",")[-1] in signature
    else:  # one signature only: the first secret's
        assert headers == sign(BODY, [new], config, timestamp=TS, webhook_id=MSG_ID)
    for secrets in ([new], [old, new], [new, old]):
        verify(BODY, headers, secrets, config, now=TS)
    # an app still sending with the old secret is accepted by a verifier holding both
    old_only = sign(BODY, [old], config, timestamp=TS, webhook_id=MSG_ID)
    verify(BODY, old_only, [new, old], config, now=TS)


def test_a_lone_string_is_one_secret() -> None:
    assert sign(BODY, PLAIN, CONFIGS["github"], timestamp=TS) == signed("github")  # type: ignore[arg-type]


def test_a_secret_is_used_exactly_as_given() -> None:
    """Spaces, commas, quotes, padding and non-ASCII are part of the key, never trimmed or split."""
    for secret in ("  ", " padded ", "a,b", "It's a Secret to Everybody", 'q"=', "ключ秘密"):
        headers = sign(BODY, [secret], CONFIGS["github"], timestamp=TS)
        assert headers["X-Hub-Signature-256"] == "sha256=" + mac(secret.encode(), BODY).hex()
        verify(BODY, headers, [secret], CONFIGS["github"])
        for near in {secret.strip(), *secret.split(","), *secret.split()} - {secret, ""}:
            with pytest.raises(SignatureError):
                verify(BODY, headers, [near], CONFIGS["github"])


def test_empty_secrets_are_a_config_error() -> None:
    for secrets in ([], [""]):
        with pytest.raises(ConfigError, match="secret"):
            sign(BODY, secrets, CONFIGS["github"], timestamp=TS)
        with pytest.raises(ConfigError, match="secret"):
            verify(BODY, signed("github"), secrets, CONFIGS["github"])
    with pytest.raises(ConfigError, match="not base64"):
        sign(BODY, ["whsec_a"], CONFIGS["standard-webhooks"], timestamp=TS)


def test_header_lookup_is_case_insensitive() -> None:
    for name in SCHEMES:
        headers = signed(name)
        for case in (str.lower, str.upper):
            mixed = {case(k): v for k, v in headers.items()}
            verify(BODY, mixed, SECRETS[name][:1], CONFIGS[name], now=TS)


def test_derived_webhook_id_is_stable() -> None:
    config = CONFIGS["standard-webhooks"]
    first = sign(BODY, [WHSEC], config, timestamp=TS)
    retry = sign(BODY, [WHSEC], config, timestamp=TS + 60)
    expected = "msg_" + hashlib.sha256(BODY).hexdigest()[:24]
    assert first["webhook-id"] == retry["webhook-id"] == expected
    assert sign(BINARY, [WHSEC], config, timestamp=TS)["webhook-id"] != expected
    assert webhook_id(first, config) == expected


def test_webhook_id() -> None:
    assert webhook_id({"WEBHOOK-ID": "msg_9"}, CONFIGS["standard-webhooks"]) == "msg_9"
    assert webhook_id({"x-camber-event-id": "evt_7"}, CUSTOM) == "evt_7"
    assert webhook_id({}, CUSTOM) is None
    assert webhook_id({"Stripe-Signature": "t=1,v1=ab"}, CONFIGS["stripe"]) is None
    assert webhook_id(signed("github"), CONFIGS["github"]) is None


def test_signature_header_names() -> None:
    assert signature_header_names(CONFIGS["stripe"]) == {"stripe-signature"}
    assert signature_header_names(CONFIGS["standard-webhooks"]) == {
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        "svix-id",
        "svix-timestamp",
        "svix-signature",
    }
    assert signature_header_names(CONFIGS["github"]) == {"x-hub-signature-256", "x-hub-signature"}
    assert signature_header_names(CONFIGS["slack"]) == {
        "x-slack-signature",
        "x-slack-request-timestamp",
    }
    assert signature_header_names(CONFIGS["hmac-sha256"]) == {"x-signature"}
    assert signature_header_names(CUSTOM) == {"x-camber-signature", "x-camber-event-id"}
    for name in SCHEMES:
        written = {h.lower() for h in signed(name)}
        assert written <= signature_header_names(CONFIGS[name])


# --- validate -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (SignatureConfig(scheme="gitlab"), "unknown signature scheme 'gitlab' .*stripe"),
        (SignatureConfig(scheme="custom"), "needs a header"),
        (SignatureConfig(encoding="base32"), "unknown signature encoding 'base32'"),
        (SignatureConfig(tolerance=-1), "tolerance"),
        (SignatureConfig(format="{sig}"), r"unknown placeholder \{sig\}"),
        (SignatureConfig(format="sha256"), r"must contain \{signature\}"),
        (SignatureConfig(format="{timestamp}{signature}"), r"unknown placeholder \{timestamp\}"),
        (SignatureConfig(scheme="custom", header="X", format="{signature"), "malformed"),
        (SignatureConfig(scheme="custom", header="X", format="{signature!r}"), "plainly"),
        (SignatureConfig(scheme="custom", header="X", format="{0}"), r"unknown placeholder \{0\}"),
        (
            SignatureConfig(scheme="custom", header="X", signed_payload="{ts}.{body}"),
            r"unknown placeholder \{ts\}",
        ),
        (
            SignatureConfig(scheme="custom", header="X", signed_payload="{timestamp}"),
            r"must contain \{body\}",
        ),
        (
            SignatureConfig(scheme="custom", header="X", signed_payload="{timestamp}.{body}"),
            "neither format nor timestamp_header",
        ),
        (
            SignatureConfig(scheme="custom", header="X", signed_payload="{id}.{body}"),
            "neither format nor id_header",
        ),
    ],
)
def test_validate_rejects(config: SignatureConfig, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate(config)
    with pytest.raises(ConfigError):
        sign(BODY, [PLAIN], config, timestamp=TS)
    with pytest.raises(ConfigError):
        verify(BODY, {}, [PLAIN], config)


def test_validate_accepts_every_test_config() -> None:
    for config in CONFIGS.values():
        validate(config)


# --- properties ---------------------------------------------------------------------------

HEADER_NAMES = sorted({h for config in CONFIGS.values() for h in signature_header_names(config)})
header_values = st.one_of(
    st.text(max_size=120),
    st.from_regex(r"t=[0-9]{1,12},v1=[0-9a-f]{0,64}(,v[0-9]=[^,]*)?", fullmatch=True),
    st.from_regex(r"(v1,[A-Za-z0-9+/=]{0,48} ?){0,3}", fullmatch=True),
    st.from_regex(r"(sha256=|v0=|t=[0-9]{1,20},sig=)[0-9a-zA-Z+/=]{0,70}", fullmatch=True),
    st.from_regex(r"[0-9]{0,20}", fullmatch=True),
)


@settings(max_examples=300, deadline=None)
@given(
    name=st.sampled_from(SCHEMES),
    body=st.binary(max_size=200),
    headers=st.dictionaries(
        st.sampled_from(HEADER_NAMES).map(lambda h: h.title()), header_values, max_size=6
    ),
)
def test_verify_only_ever_raises_signature_error(
    name: str, body: bytes, headers: dict[str, str]
) -> None:
    try:
        verify(body, headers, SECRETS[name], CONFIGS[name], now=TS)
    except SignatureError:
        pass


@settings(max_examples=200, deadline=None)
@given(
    name=st.sampled_from(SCHEMES),
    body=st.binary(max_size=500),
    msg_id=st.none() | st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1),
    rotate=st.booleans(),
)
def test_sign_then_verify_round_trips(
    name: str, body: bytes, msg_id: str | None, rotate: bool
) -> None:
    secrets = SECRETS[name] if rotate else SECRETS[name][:1]
    headers = sign(body, secrets, CONFIGS[name], timestamp=TS, webhook_id=msg_id)
    # multi-signature schemes carry the second secret's signature too; the others only the first
    check = secrets[-1:] if name in ("stripe", "standard-webhooks") else secrets[::-1]
    verify(body, headers, check, CONFIGS[name], now=TS)
    if name in ("standard-webhooks", "custom"):
        assert webhook_id(headers, CONFIGS[name]) == (
            msg_id or "msg_" + hashlib.sha256(body).hexdigest()[:24]
        )
