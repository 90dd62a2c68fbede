import random

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from activedaemon.identity import (
    ALPHABETS,
    CODE_BITS,
    IdentityCodec,
    bits_to_str,
    random_user_id,
    str_to_bits,
)

CODEC = IdentityCodec()
PRINTABLE_ID = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=8, max_size=8
)


def flip(bits: torch.Tensor, positions) -> torch.Tensor:
    out = bits.clone()
    out[list(positions)] = 1 - out[list(positions)]
    return out


def test_codeword_shape_and_message_bits():
    bits = CODEC.encode("SRJu2W7V")
    assert bits.shape == (CODE_BITS,)
    assert set(bits.tolist()) <= {0.0, 1.0}
    # The first 64 bits are the ASCII bytes, MSB first.
    assert np.packbits(bits[:64].numpy().astype(np.uint8)).tobytes() == b"SRJu2W7V"


@settings(max_examples=2000, deadline=None)
@given(
    user_id=PRINTABLE_ID,
    positions=st.sets(st.integers(0, CODE_BITS - 1), max_size=10),
)
def test_round_trip_with_up_to_10_flips(user_id, positions):
    received = flip(CODEC.encode(user_id), positions)
    result = CODEC.decode_detailed(received)
    assert result.user_id == user_id
    assert result.corrected_bits == len(positions)


def test_round_trip_randomised_batch_exactly_10_flips():
    rng = random.Random(0)
    ids = [random_user_id(rng, rng.choice(["alnum", "ascii"])) for _ in range(3000)]
    words = CODEC.encode_batch(ids)
    for row in words:
        idx = torch.tensor(rng.sample(range(CODE_BITS), 10))
        row[idx] = 1 - row[idx]
    assert CODEC.decode_batch(words) == ids


def test_probabilities_are_thresholded():
    bits = CODEC.encode(";t9om.Rs")
    probs = bits * 0.8 + 0.1  # 1 -> 0.9, 0 -> 0.1
    probs[:5] = 1 - probs[:5]  # five confidently wrong bits
    assert CODEC.decode(probs) == ";t9om.Rs"


def test_11_to_20_flips_are_none_or_rarely_a_wrong_id():
    """Beyond t = 10 the decoder must never return the true id; measure how often it returns a
    wrong id (miscorrection) instead of None. BCH(127,64) theory: a word far from every codeword
    lands within distance 10 of one with probability about V(127,10) / 2^63 ~ 2e-5, and the message
    must then also be printable ASCII. (Unchecked, bchlib 2.1.3 reports ~3 % of such words as
    corrected to a word that is no codeword near them; the codec re-encodes to reject those.)"""
    rng = random.Random(1)
    trials, none, wrong = 4000, 0, 0
    ids = [random_user_id(rng) for _ in range(trials)]
    words = CODEC.encode_batch(ids)
    for row in words:
        idx = torch.tensor(rng.sample(range(CODE_BITS), rng.randint(11, 20)))
        row[idx] = 1 - row[idx]
    for true_id, received in zip(ids, words, strict=True):
        result = CODEC.decode_detailed(received)
        decoded = result.user_id
        assert decoded != true_id
        if result.message is not None:  # any decode must be a codeword within 10 of the word
            assert (CODEC.encode_message(result.message) != received).sum() <= 10
        if decoded is None:
            none += 1
        else:
            wrong += 1
    miscorrection_rate = wrong / trials
    print(f"11-20 flips: {none} none, {wrong} wrong ids of {trials} ({miscorrection_rate:.2%})")
    assert none + wrong == trials
    assert miscorrection_rate < 0.01


def test_clean_words_give_none():
    assert CODEC.decode(torch.zeros(CODE_BITS)) is None  # a codeword, but no printable id
    assert CODEC.decode(torch.ones(CODE_BITS)) is None
    gen = torch.Generator().manual_seed(0)
    assert CODEC.decode_batch(torch.rand(200, CODE_BITS, generator=gen)) == [None] * 200


@pytest.mark.parametrize(
    "bad, match",
    [
        ("short", "exactly 8"),
        ("toolongid", "exactly 8"),
        ("abcdéfgh", "printable ASCII"),
        ("abc\tdefg", "printable ASCII"),
        (12345678, "must be a str"),
    ],
)
def test_encode_rejects_bad_ids(bad, match):
    with pytest.raises(ValueError, match=match):
        CODEC.encode(bad)


@pytest.mark.parametrize(
    "bits, match",
    [
        (torch.zeros(126), "shape"),
        (torch.zeros(2, CODE_BITS), "shape"),
        (torch.full((CODE_BITS,), float("nan")), "NaN"),
        (torch.full((CODE_BITS,), 2.0), r"\[0, 1\]"),
        (torch.full((CODE_BITS,), -0.1), r"\[0, 1\]"),
    ],
)
def test_decode_rejects_bad_bits(bits, match):
    with pytest.raises(ValueError, match=match):
        CODEC.decode(bits)


def test_decode_batch_rejects_single_word():
    with pytest.raises(ValueError, match=r"\(N, 127\)"):
        CODEC.decode_batch(torch.zeros(CODE_BITS))


def test_random_user_id_alphabets():
    rng = random.Random(3)
    for alphabet, chars in ALPHABETS.items():
        ids = [random_user_id(rng, alphabet) for _ in range(200)]
        assert all(len(u) == 8 and set(u) <= set(chars) for u in ids)
        assert len(set(ids)) == 200
    assert random_user_id(random.Random(5)) == random_user_id(random.Random(5))
    with pytest.raises(ValueError, match="unknown alphabet"):
        random_user_id(rng, "hex")


def test_text_form_round_trip():
    bits = CODEC.encode("A1b2C3d4")
    text = bits_to_str(bits)
    assert len(text) == CODE_BITS
    assert torch.equal(str_to_bits(text), bits)
    with pytest.raises(ValueError, match="127 characters"):
        str_to_bits(text[:-1])
    with pytest.raises(ValueError, match="127 characters"):
        str_to_bits(text[:-1] + "2")
