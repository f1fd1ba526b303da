from __future__ import annotations

import jwt
import pytest

from tasks.videosdk.tokens import CLOCK_SKEW_S, REMINT_MARGIN_S, TOKEN_TTL_S, TokenMinter

LONG = "0123456789abcdef0123456789abcdef-test"


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_token_has_the_claims_the_v2_api_requires() -> None:
    minter = TokenMinter(
        api_key="key-1", secret="shh-0123456789abcdef0123456789abcdef", clock=Clock()
    )
    claims = jwt.decode(
        minter.token(),
        "shh-0123456789abcdef0123456789abcdef",
        algorithms=["HS256"],
        options={"verify_exp": False},
    )
    assert claims == {
        "apikey": "key-1",
        "permissions": ["allow_join"],
        "version": 2,
        "roles": ["crawler"],
        "iat": 1_700_000_000 - CLOCK_SKEW_S,  # backdated: an API clock behind ours accepts it
        "exp": 1_700_000_000 + TOKEN_TTL_S,
    }
    assert jwt.get_unverified_header(minter.token())["alg"] == "HS256"


def test_token_is_cached_until_shortly_before_expiry() -> None:
    clock = Clock()
    minter = TokenMinter(api_key="k", secret=LONG, clock=clock)
    first = minter.token()
    clock.now += TOKEN_TTL_S - REMINT_MARGIN_S - 1
    assert minter.token() == first
    assert minter.minted == 1
    clock.now += 1
    assert minter.token() != first
    assert minter.minted == 2


def test_invalidate_forces_a_new_token() -> None:
    clock = Clock()
    minter = TokenMinter(api_key="k", secret=LONG, clock=clock)
    minter.token()
    minter.invalidate()
    minter.token()
    assert minter.minted == 2


def test_repr_does_not_show_the_secret() -> None:
    assert "topsecret" not in repr(TokenMinter(api_key="k", secret="topsecret"))


def test_ttl_must_exceed_the_remint_margin() -> None:
    with pytest.raises(ValueError):
        TokenMinter(api_key="k", secret="s", ttl_s=REMINT_MARGIN_S)
