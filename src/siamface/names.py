"""Person names people can read: one rule for the CLI, the Python API, REST and the web page.

A name is shown on a page, used in a URL (thumbnail, Remove button) and compared by people,
so two names that *look* the same must not be two people, and a name must not be a path:

* names are stored in Unicode NFC, so "Zoë" typed as ``o + U+0308`` and as ``ö`` is one name;
* ``.``/``..`` and names with ``/`` or ``\\`` are refused (they are not one URL path segment);
* invisible characters are refused: control and format characters (zero-width space, joiners,
  direction marks, BOM...) and any space other than the plain one;
* a name whose confusable *skeleton* (after Unicode's confusable mapping and NFKC, so
  fullwidth "Ａda" and Cyrillic "Аda" both read "Ada") equals an enrolled name's while the
  names differ is refused, with the scripts it mixes: it would be a second person who looks
  the same on the page.

The mapping to Latin prototypes comes from Unicode's ``confusables.txt`` as the
``confusables`` package ships it. Only letters outside the Latin script are mapped, so "José"
and "Jose" stay two names (they are told apart on a page); "Јоsé" with Cyrillic Ј and о is not.
"""

from __future__ import annotations

import functools
import unicodedata
from collections.abc import Iterable

from siamface.errors import SiamfaceError

MAX_NAME = 200
#: Categories of characters that cannot be seen: control, format, private, unassigned, lines.
_INVISIBLE = {"Cc", "Cf", "Co", "Cs", "Cn", "Zl", "Zp"}


class NameError_(SiamfaceError):  # noqa: N801 - "NameError" is a builtin
    """A person's name that cannot be used, with the reason."""


def _describe(ch: str) -> str:
    return f"U+{ord(ch):04X} {unicodedata.name(ch, 'unnamed character')}"


def normal_name(name: object) -> str:
    """``name`` in NFC, for storing and for looking people up (no checks: existing records,
    even ones enrolled before these rules, can still be found and removed)."""
    return unicodedata.normalize("NFC", name) if isinstance(name, str) else name  # type: ignore[return-value]


def check_person_name(name: object) -> str:
    """The name to store (NFC), or :class:`SiamfaceError` saying why it cannot be one."""
    if not isinstance(name, str) or not name.strip():
        raise NameError_(f"a person's name must be a non-empty string, got {name!r}")
    name = unicodedata.normalize("NFC", name)
    if len(name) > MAX_NAME:
        raise NameError_(f"invalid name {name[:20]!r}...: longer than {MAX_NAME} characters")
    for ch in name:
        cat = unicodedata.category(ch)
        if cat in _INVISIBLE or (cat == "Zs" and ch != " "):
            raise NameError_(
                f"invalid name {name!r}: it contains an invisible character ({_describe(ch)}); "
                "two names that look the same would be two people"
            )
    if name != name.strip(" "):
        raise NameError_(f"invalid name {name!r}: it starts or ends with a space")
    if set(name) <= {"."}:
        raise NameError_(f"invalid name {name!r}: '.' and '..' mean folders, not people")
    if "/" in name or "\\" in name:
        raise NameError_(
            f"invalid name {name!r}: no '/' or '\\' (a name is also a path in the web page "
            "and the REST API)"
        )
    return name


def scripts(name: str) -> list[str]:
    """The scripts of a name's letters (first word of each letter's Unicode name), sorted."""
    out = {unicodedata.name(ch, "?").split()[0] for ch in name if ch.isalpha()}
    return sorted(out)


@functools.lru_cache(maxsize=1)
def _prototypes() -> dict[str, str]:
    """Non-Latin letter -> the ASCII letter of the same case it is confusable with."""
    import confusables

    table: dict[str, str] = {}
    for ch, similar in confusables.CONFUSABLE_MAP.items():
        if len(ch) != 1 or ch.isascii() or not ch.isalpha():
            continue
        if unicodedata.name(ch, "").startswith("LATIN"):
            continue
        ascii_ = [c for c in similar if len(c) == 1 and c.isascii() and c.isalpha()]
        same_case = [c for c in ascii_ if c.isupper() == ch.isupper()]
        if same_case:
            table[ch] = sorted(same_case)[0]
    return table


def skeleton(name: str) -> str:
    """What a name looks like: NFKC (fullwidth and styled letters become plain ones), then
    non-Latin letters replaced by the Latin letter they are confusable with."""
    plain = unicodedata.normalize("NFKC", name)
    table = _prototypes()
    return "".join(table.get(ch, ch) for ch in plain)


def lookalike_of(name: str, existing: Iterable[str]) -> str | None:
    """The first of ``existing`` that looks like ``name`` but is another string, or None."""
    key = skeleton(name)
    for other in existing:
        if other != name and skeleton(other) == key:
            return other
    return None


def _oddity(name: str) -> str | None:
    """What makes a name look like another string: its forms or scripts (None: plain)."""
    if unicodedata.normalize("NFKC", name) != name:
        return "uses fullwidth or styled forms of ordinary letters"
    found = scripts(name)
    if len(found) > 1:
        return f"mixes {' and '.join(s.title() for s in found)} letters"
    if found and found != ["LATIN"]:
        return f"is written in {found[0].title()} letters that look like Latin ones"
    return None


def lookalike_error(name: str, other: str) -> SiamfaceError:
    """Why ``name`` is refused: it looks like ``other``, and which of the two is unusual."""
    if (odd := _oddity(name)) is not None:
        why = f"it {odd}"
    elif (odd := _oddity(other)) is not None:
        why = f"{other!r} {odd}"
    else:
        why = "other code points that look the same"
    return NameError_(
        f"name {name!r} looks like {other!r}, who is already enrolled ({why}); two people who "
        "look the same on the page would be confused: choose a name that can be told apart"
    )
