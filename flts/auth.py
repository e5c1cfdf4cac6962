"""Who may send an event (docs/design.md: who may change what is served).

Two credentials, either of which a receiver accepts:
  * one shared bearer token per stack (`EVENT_TOKEN`), sent as `Authorization: Bearer <token>`
    by every sender of events (the dispatcher, functions posting to the ingress or K_SINK,
    `flts` tools) and checked by every receiver: the local stack and OpenFaaS;
  * on Knative, the cluster's OIDC tokens (Eventing's sender identity): a Trigger whose
    subscriber names an `audience` presents a service-account token the API server signed for
    it. With `EVENT_OIDC_AUDIENCE` set a receiver checks the signature (the API server's JWKS),
    the issuer, the audience, the expiry and that the sender is one of `EVENT_OIDC_SENDERS`
    in the pod's own namespace.
A sender sends `EVENT_TOKEN_FILE`'s content when that file exists (Knative's SinkBinding
mounts a token for the Broker at /oidc/token and renews it), else `EVENT_TOKEN`.
Nothing configured means open (embedded runs, unit tests).
"""
from __future__ import annotations

import hmac
import os
import ssl
import threading
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Annotated, NamedTuple

from pydantic import BeforeValidator

from flts.logs import log
from flts.settings import CommaList, Env, Settings, knob

EVENT_TOKEN_VAR = "EVENT_TOKEN"
IN_CLUSTER_ACCOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"  # token, ca.crt, namespace

# A secret without the newline a mounted secret file often ends with.
Secret = Annotated[str, BeforeValidator(lambda value: value.strip() if isinstance(value, str) else value)]


class EventAuthSettings(Settings):
    token: Secret = knob(EVENT_TOKEN_VAR, "", "bearer token every event endpoint requires and every sender of events "
                                              "sends; empty = open", repr=False)
    token_file: str = knob("EVENT_TOKEN_FILE", "", "file whose content a sender sends as its bearer token when it "
                                                   "exists (Knative SinkBinding: /oidc/token), re-read as it is renewed")
    oidc_audience: str = knob("EVENT_OIDC_AUDIENCE", "", "OIDC audience POST / requires a cluster-signed token for "
                                                         "(Knative Trigger subscriber.audience); empty = no OIDC")
    oidc_senders: CommaList = knob("EVENT_OIDC_SENDERS", (), "service accounts (of the pod's namespace) whose OIDC "
                                                             "tokens are accepted; empty = any of that namespace")
    oidc_issuer_url: str = knob("EVENT_OIDC_ISSUER_URL", "https://kubernetes.default.svc",
                                "API server that signs the OIDC tokens: its discovery document and JWKS")
    oidc_account_dir: str = knob("EVENT_OIDC_ACCOUNT_DIR", IN_CLUSTER_ACCOUNT,
                                 "the pod's service account (token, ca.crt, namespace) to fetch the JWKS with")


_GATE_VARIABLES = tuple(field.validation_alias for field in EventAuthSettings.model_fields.values())


def event_token(env: Env | None = None) -> str:
    """The stack's event token from `env` (default: this process's environment); empty = open."""
    return EventAuthSettings.from_env(os.environ if env is None else env).token


def sender_token(env: Env | None = None) -> str:
    """What a sender presents now: EVENT_TOKEN_FILE's content when that file exists (read on every
    send, so a renewed token is used at once), else EVENT_TOKEN."""
    settings = gate_for(env).settings  # parsed once per configuration, not on every send
    if settings.token_file:
        try:
            return Path(settings.token_file).read_text().strip()
        except FileNotFoundError:  # Knative without sender identity mounts none: the Broker is then open
            pass
    return settings.token


@lru_cache(maxsize=32)
def _gate(values: tuple[str, ...]) -> EventGate:
    return EventGate(EventAuthSettings.from_env(dict(zip(_GATE_VARIABLES, values, strict=True))))


def gate_for(env: Env | None = None) -> EventGate:
    """The process's gate for these settings: one per configuration, so its keys stay cached (and
    the settings are not parsed again on every request)."""
    env = os.environ if env is None else env
    return _gate(tuple(env.get(name, "") for name in _GATE_VARIABLES))


def bearer_header(token: str | None) -> dict[str, str]:
    """The header a sender adds; nothing when no token is configured."""
    return {"Authorization": f"Bearer {token}"} if token else {}


def _bearer(authorization: str | None) -> str | None:
    scheme, _, given = (authorization or "").partition(" ")
    return given.strip() if scheme.lower() == "bearer" and given.strip() else None


def refusal(authorization: str | None, token: str | None) -> str | None:
    """Why a request with this Authorization header is refused, or None when it may pass."""
    if not token:
        return None
    given = _bearer(authorization)
    if given is None:
        return "this endpoint needs 'Authorization: Bearer <token>'"
    if not hmac.compare_digest(given.encode(), token.encode()):
        return "the bearer token is not valid"
    return None


class Refusal(NamedTuple):
    status: int  # 401: the credential is wrong (dead-letter); 503: it cannot be checked now (retry)
    reason: str


class IssuerUnreachable(RuntimeError):
    """The API server's discovery document or keys cannot be read now."""


class EventGate:
    """The check every event endpoint makes: EVENT_TOKEN, a cluster OIDC token, or open."""

    def __init__(self, settings: EventAuthSettings):
        self.settings = settings
        self._lock = threading.Lock()
        self._issuer: str | None = None
        self._client = None  # (the headers it fetches with, PyJWKClient)

    @property
    def open(self) -> bool:
        return not (self.settings.token or self.settings.oidc_audience)

    def refusal(self, authorization: str | None) -> Refusal | None:
        """None when the request may pass; else the status and why, in the sender's terms."""
        if self.open:
            return None
        given = _bearer(authorization)
        if given is None:
            return Refusal(401, f"this endpoint needs 'Authorization: Bearer <token>' ({self._expected()})")
        if self.settings.token and hmac.compare_digest(given.encode(), self.settings.token.encode()):
            return None
        if not self.settings.oidc_audience:
            return Refusal(401, "the bearer token is not valid (EVENT_TOKEN)")
        try:
            why = self._oidc_refusal(given)
        except (IssuerUnreachable, OSError) as exc:  # OSError: the pod's service account is not mounted
            return Refusal(503, f"cannot check the OIDC token now: {exc}")
        return Refusal(401, f"the OIDC token is refused: {why}") if why else None

    def _expected(self) -> str:
        if self.settings.oidc_audience:
            return f"an OIDC token for audience {self.settings.oidc_audience!r} (EVENT_OIDC_AUDIENCE)"
        return "EVENT_TOKEN"

    # ------------------------------------------------------------ OIDC
    def _oidc_refusal(self, token: str) -> str | None:
        import jwt

        try:
            key = self._keys.get_signing_key_from_jwt(token)
        except jwt.PyJWKClientConnectionError as exc:
            raise IssuerUnreachable(f"{self._jwks_url}: {exc}") from None
        except jwt.PyJWTError as exc:  # not a JWT, or signed by a key the API server does not have
            return f"{exc}"
        try:
            claims = jwt.decode(token, key.key, algorithms=["RS256", "ES256"], audience=self.settings.oidc_audience,
                                issuer=self.issuer, leeway=30,  # clocks of nodes differ a little
                                options={"require": ["exp", "iat", "iss", "aud", "sub"]})
        except jwt.InvalidAudienceError:
            return f"not issued for audience {self.settings.oidc_audience!r} (EVENT_OIDC_AUDIENCE)"
        except jwt.PyJWTError as exc:
            return str(exc)
        return self._sender_refusal(claims["sub"])

    def _sender_refusal(self, subject: str) -> str | None:
        prefix = f"system:serviceaccount:{self.namespace}:"
        if not subject.startswith(prefix):
            return f"sender {subject!r} is not a service account of namespace {self.namespace!r}"
        allowed = self.settings.oidc_senders
        if allowed and subject.removeprefix(prefix) not in allowed:
            return f"sender {subject!r} is not one of EVENT_OIDC_SENDERS ({', '.join(allowed)})"
        return None

    @property
    def _account(self) -> Path:
        return Path(self.settings.oidc_account_dir)

    @cached_property
    def namespace(self) -> str:
        return (self._account / "namespace").read_text().strip()

    @property
    def _jwks_url(self) -> str:
        # The API server serves its keys here whatever jwks_uri its discovery document names (that
        # one may be a public bucket outside the cluster).
        return self.settings.oidc_issuer_url.rstrip("/") + "/openid/v1/jwks"

    def _credentials(self) -> tuple[dict[str, str], ssl.SSLContext]:
        ca = self._account / "ca.crt"
        context = ssl.create_default_context(cafile=str(ca) if ca.exists() else None)
        token = self._account / "token"  # re-read each time: the kubelet renews it
        return bearer_header(token.read_text().strip() if token.exists() else ""), context

    @property
    def _keys(self):
        """A JWKS client (it caches the keys and refetches on an unknown key id), rebuilt when the
        pod's own token is renewed, since it fetches with that token."""
        import jwt

        headers, context = self._credentials()
        with self._lock:
            if self._client is None or self._client[0] != headers:
                self._client = (headers, jwt.PyJWKClient(self._jwks_url, headers=headers, ssl_context=context,
                                                         timeout=10, lifespan=300))
            return self._client[1]

    @property
    def issuer(self) -> str:
        """The `iss` the API server signs with, from its discovery document (read once)."""
        with self._lock:
            if self._issuer is None:
                self._issuer = self._discover_issuer()
            return self._issuer

    def _discover_issuer(self) -> str:
        import json
        import urllib.request

        url = self.settings.oidc_issuer_url.rstrip("/") + "/.well-known/openid-configuration"
        headers, context = self._credentials()
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10,
                                        context=context) as response:
                issuer = json.loads(response.read())["issuer"]
        except (OSError, ValueError, KeyError) as exc:
            raise IssuerUnreachable(f"{url}: {exc}") from None
        log("oidc_issuer_discovered", issuer=issuer, audience=self.settings.oidc_audience)
        return issuer
