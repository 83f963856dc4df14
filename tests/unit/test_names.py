"""Team names: the normal form, the refused characters and the uniqueness key."""

from __future__ import annotations

import pytest

from models.names import MAX_NAME, InvalidName, name_key, normalise_name


@pytest.mark.parametrize(("raw", "stored", "key"), [
    ("Owls", "Owls", "owls"),
    ("  Night \t Owls\n", "Night Owls", "night owls"),
    ("\uff2f\uff57\uff4c\uff53", "Owls", "owls"),  # fullwidth
    ("\uff25\uff4c\uff45\uff56\uff45\uff4e\u3000\uff2f\uff57\uff4c\uff53", "Eleven Owls", "eleven owls"),
    ("Straße", "Straße", "strasse"),
    ("İnci", "İnci", "i\u0307nci"),
    ("ﬁre", "fire", "fire"),  # the fi ligature
])
def test_names_are_stored_in_their_normal_form(raw: str, stored: str, key: str) -> None:
    assert normalise_name(raw) == stored
    assert name_key(stored) == key


@pytest.mark.parametrize("raw", [
    "Owls\u200b", "Ow\u200dls", "Ow\u200cls", "Owls\u202e", "\u2066Owls", "Ow\u00adls", "\ufeffOwls",
    "Owls\x00", "Owls\x07", "Owls\x1b[31m", "\ud800Owls",
])
def test_control_and_format_characters_are_refused(raw: str) -> None:
    with pytest.raises(InvalidName, match="U\\+"):
        normalise_name(raw)


@pytest.mark.parametrize("raw", ["", "   ", "\t\n"])
def test_blank_names_are_refused(raw: str) -> None:
    with pytest.raises(InvalidName, match="blank"):
        normalise_name(raw)


def test_the_length_is_checked_after_normalising() -> None:
    assert len(normalise_name("x" * MAX_NAME)) == MAX_NAME
    with pytest.raises(InvalidName, match="at most"):
        normalise_name("\ufdfa" * 4)  # one character that NFKC expands to 18


def test_look_alikes_share_a_key() -> None:
    keys = {name_key(normalise_name(n)) for n in ("Owls", "OWLS", " owls ", "\uff2f\uff57\uff4c\uff53")}
    assert keys == {"owls"}
    assert name_key("İnci") == name_key(normalise_name("İNCI")) == name_key("i\u0307nci")
