"""Team names as people read them: one rule for the API, the workers and the migration.

A name is NFKC-normalised (fullwidth and compatibility letters become the plain ones) and its
whitespace collapsed; control and format characters (Unicode Cc and Cf: zero-width spaces and
joiners, bidi overrides, ...) are refused, since they make two names look alike that are not.
Uniqueness is on the *key*: the casefolded normal form, so "Owls", "OWLS" and "Owls" in fullwidth letters clash.
"""

from __future__ import annotations

import unicodedata

MAX_NAME = 64
# Cs: lone surrogates, which JSON can carry but UTF-8 (and PostgreSQL) cannot.
_REFUSED = frozenset({"Cc", "Cf", "Cs"})
# Ordinary whitespace is Cc too; it is collapsed to one space instead of refused.
_WHITESPACE_CONTROLS = frozenset("\t\n\r\x0b\x0c")


class InvalidName(ValueError):
    """The name cannot be used; the message says why in plain words."""


def normalise_name(raw: str) -> str:
    """The name as stored and shown; raises ``InvalidName`` for a name that must be refused."""
    text = unicodedata.normalize("NFKC", raw)
    for char in text:
        if unicodedata.category(char) in _REFUSED and char not in _WHITESPACE_CONTROLS:
            raise InvalidName(
                f"must not contain control or invisible formatting characters (found U+{ord(char):04X})")
    name = " ".join(text.split())
    if not name:
        raise InvalidName("must not be blank")
    if len(name) > MAX_NAME:
        raise InvalidName(f"must be at most {MAX_NAME} characters once normalised")
    return name


def name_key(name: str) -> str:
    """The uniqueness key of a normalised name: casefolded, then NFKC again (casefolding can
    produce sequences, such as the dotted i of "İ", that NFKC composes)."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())
