"""Bearer tokens for event endpoints and admin routes (docs/design.md: who may change what is served).

One shared secret per stack (`EVENT_TOKEN`), sent as `Authorization: Bearer <token>` by every
sender of events (the dispatcher, functions posting to the ingress or K_SINK, `flts` tools)
and checked by every receiver. An empty token means open (embedded runs, unit tests).
"""
from __future__ import annotations

import hmac
import os
from typing import Annotated

from pydantic import BeforeValidator

from flts.settings import Env, Settings, knob

EVENT_TOKEN_VAR = "EVENT_TOKEN"

# A secret without the newline a mounted secret file often ends with.
Secret = Annotated[str, BeforeValidator(lambda value: value.strip() if isinstance(value, str) else value)]


class EventAuthSettings(Settings):
    token: Secret = knob(EVENT_TOKEN_VAR, "", "bearer token every event endpoint requires and every sender of events "
                                              "sends; empty = open", repr=False)


def event_token(env: Env | None = None) -> str:
    """The stack's event token from `env` (default: this process's environment); empty = open."""
    return EventAuthSettings.from_env(os.environ if env is None else env).token


def bearer_header(token: str | None) -> dict[str, str]:
    """The header a sender adds; nothing when no token is configured."""
    return {"Authorization": f"Bearer {token}"} if token else {}


def refusal(authorization: str | None, token: str | None) -> str | None:
    """Why a request with this Authorization header is refused, or None when it may pass."""
    if not token:
        return None
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        return "this endpoint needs 'Authorization: Bearer <token>'"
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        return "the bearer token is not valid"
    return None
