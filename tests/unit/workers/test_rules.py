"""Answer checking: case-, whitespace- and Unicode-case-insensitive, nothing looser."""

from __future__ import annotations

import pytest

from workers.rules import answer_matches, normalise_answer


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("Paris", "paris"),
        ("  Paris  ", "paris"),
        ("New   York", "new york"),
        ("new\tyork\n", "new york"),
        ("NEW\u00a0YORK", "new york"),
        ("Straße", "strasse"),
        ("", ""),
        ("   ", ""),
    ],
)
def test_normalise_answer(raw: str, normalised: str) -> None:
    assert normalise_answer(raw) == normalised


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("paris", "Paris"),
        ("  PARIS ", "Paris"),
        ("new york", "New  York"),
        ("STRASSE", "Straße"),
        ("42", "42"),
        (" 3.14 ", "3.14"),
    ],
)
def test_answers_that_match(given: str, expected: str) -> None:
    assert answer_matches(given, expected)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("London", "Paris"),
        ("newyork", "New York"),
        ("Pariss", "Paris"),
        ("42.0", "42"),
        ("", "Paris"),
        ("Paris.", "Paris"),
    ],
)
def test_answers_that_do_not_match(given: str, expected: str) -> None:
    assert not answer_matches(given, expected)
