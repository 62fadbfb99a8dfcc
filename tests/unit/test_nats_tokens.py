"""Stream ids as NATS subject tokens: legal whatever the id, and reversible."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from skyferry.adapters.brokers.nats import MAX_TOKEN, decode_token, encode_token, partition_of
from skyferry.core.errors import ValidationError
from skyferry.core.messages import STREAM_ID_PUNCTUATION, validate_stream_id

stream_ids = st.text(
    alphabet=st.characters(categories=["L", "N"]) | st.sampled_from(sorted(STREAM_ID_PUNCTUATION)),
    min_size=1,
    max_size=200,
).filter(lambda s: all(c.isalnum() or c in STREAM_ID_PUNCTUATION for c in s))


@given(stream_ids)
def test_every_valid_stream_id_maps_to_a_legal_token_and_back(stream_id: str) -> None:
    validate_stream_id(stream_id)
    token = encode_token(stream_id)
    assert token
    assert not set(token) & set(". *>\t\r\n"), token
    assert token.isascii()
    assert len(token) <= MAX_TOKEN
    assert decode_token(token) == stream_id


@given(st.text(min_size=1, max_size=50), st.text(min_size=1, max_size=50))
def test_the_encoding_is_injective(a: str, b: str) -> None:
    if a != b:
        assert encode_token(a) != encode_token(b)


@pytest.mark.parametrize(
    ("stream_id", "token"),
    [("acct-1", "acct-1"), ("acct/1", "acct_2F1"), ("a.b", "a_2Eb"), ("x_y", "x_5Fy"), ("ü", "_C3_BC")],
)
def test_tokens_stay_readable(stream_id: str, token: str) -> None:
    assert encode_token(stream_id) == token


def test_an_empty_or_oversized_key_is_refused() -> None:
    with pytest.raises(ValidationError):
        encode_token("")
    with pytest.raises(ValidationError, match="subject token"):
        encode_token("日" * 900)


def test_the_longest_valid_stream_id_still_fits() -> None:
    longest = "\U0001d400" * 200  # MATHEMATICAL BOLD CAPITAL A: a letter of 4 UTF-8 bytes
    validate_stream_id(longest)
    assert len(encode_token(longest)) == MAX_TOKEN


def test_partitions_are_stable_and_in_range() -> None:
    assert partition_of("acct-1", 8) == partition_of("acct-1", 8)
    assert {partition_of(f"k{i}", 8) for i in range(200)} == set(range(8))
