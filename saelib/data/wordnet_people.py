"""WordNet's person glosses ("United States writer (1889-1973)", "French painter ..."): nationality ×
profession, for an SCR task with headroom (issue 13 finding 6, issue 17).

Read from the Debian package ``wordnet-base`` (``/usr/share/wordnet/data.noun``, lexicographer file
18 = ``noun.person``; WordNet 3.0 licence, BSD-like). A gloss qualifies when it *starts* with a
nationality of :data:`NATIONALITY_GROUPS` followed, within its first :data:`PROFESSION_WINDOW` words,
by a profession of :data:`PROFESSION_GROUPS` ("United States film actor", "English lyric poet").
The text of a record is the gloss with the synset's longest lemma (the fullest name) in front
("Conrad Potter Aiken: United States writer (1889-1973)").

:func:`is_person_gloss` is the same test on a raw gloss: the training corpus (``saelib.data.corpus``)
must drop every gloss for which it is true, from its WordNet *and* its GCIDE source (GCIDE carries
WordNet 1.5's glosses), so that no text of this task is ever trained on.
"""
from __future__ import annotations

import re
from pathlib import Path

WORDNET_DIR = Path("/usr/share/wordnet")
"""Where Debian's ``wordnet-base`` puts the WordNet 3.0 database."""
PERSON_LEXFILE = 18
"""Lexicographer file number of ``noun.person``."""

NATIONALITY_GROUPS: dict[str, str] = {
    "United States": "american", "American": "american",
    **{n: "european" for n in (
        "English", "British", "Scottish", "Irish", "Welsh", "French", "German", "Italian", "Spanish",
        "Portuguese", "Dutch", "Flemish", "Belgian", "Swiss", "Austrian", "Swedish", "Danish", "Norwegian",
        "Finnish", "Polish", "Czech", "Hungarian", "Russian")},
}
"""Nationality word(s) at the start of a gloss → group (``american`` / ``european``)."""

PROFESSION_GROUPS: dict[str, str] = {
    **{p: "arts" for p in (
        "writer", "poet", "novelist", "playwright", "dramatist", "author", "essayist", "satirist", "humorist",
        "lyricist", "songwriter", "composer", "conductor", "pianist", "violinist", "cellist", "organist",
        "musician", "singer", "soprano", "tenor", "baritone", "painter", "sculptor", "artist", "illustrator",
        "cartoonist", "engraver", "photographer", "actor", "actress", "comedian", "comedienne", "dancer",
        "choreographer", "filmmaker")},
    **{p: "sciences" for p in (
        "physicist", "chemist", "biochemist", "mathematician", "astronomer", "astrophysicist", "biologist",
        "physiologist", "botanist", "zoologist", "naturalist", "geneticist", "bacteriologist", "anatomist",
        "pathologist", "neurologist", "paleontologist", "geologist", "geophysicist", "microbiologist",
        "embryologist", "entomologist", "crystallographer", "meteorologist", "anthropologist", "psychologist",
        "oceanographer", "virologist", "immunologist", "pharmacologist", "ornithologist")},
}
"""Profession word → group (``arts`` / ``sciences``)."""

PROFESSION_WINDOW = 3
"""The profession must be among the first this many words after the nationality."""

_NATIONALITY_RE = re.compile(r"^(" + "|".join(sorted(map(re.escape, NATIONALITY_GROUPS), key=len, reverse=True))
                             + r") ")
_WORD_RE = re.compile(r"[A-Za-z]+")


def parse_person_gloss(gloss: str) -> tuple[str, str] | None:
    """``(nationality, profession)`` of a gloss of the qualifying form, else None.

    >>> parse_person_gloss("United States film actor (1899-1957)")
    ('United States', 'actor')
    >>> parse_person_gloss("English king (1100-1135)") is None
    True
    """
    m = _NATIONALITY_RE.match(gloss.strip())
    if m is None:
        return None
    words = _WORD_RE.findall(gloss[m.end():].split(";")[0])[:PROFESSION_WINDOW]
    for word in words:
        if word in PROFESSION_GROUPS:
            return m.group(1), word
    return None


def is_person_gloss(gloss: str) -> bool:
    """True when ``gloss`` (or a ``"lemma: gloss"`` line) is a nationality + profession person gloss
    of this task: the training corpus must drop it."""
    text = gloss.split(": ", 1)[1] if ": " in gloss and parse_person_gloss(gloss) is None else gloss
    return parse_person_gloss(text) is not None


def read_wordnet_people(limit: int | None = None, *, root: str | Path = WORDNET_DIR) -> list[dict]:
    """Records ``{text, nationality, nationality_group, profession, profession_group}``, one per
    qualifying ``noun.person`` synset, in file order. Raises ``FileNotFoundError`` naming the
    package when the database is missing."""
    path = Path(root) / "data.noun"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: install the Debian package wordnet-base (apt-get install wordnet-base)")
    out = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if line.startswith("  ") or " | " not in line:
                continue  # licence header
            head, gloss = line.split(" | ", 1)
            fields = head.split()
            if int(fields[1]) != PERSON_LEXFILE:
                continue
            gloss = gloss.strip()
            parsed = parse_person_gloss(gloss)
            if parsed is None:
                continue
            nationality, profession = parsed
            n_words = int(fields[3], 16)
            lemmas = [fields[4 + 2 * i].replace("_", " ") for i in range(n_words)]
            lemma = max(lemmas, key=len)  # first of the longest
            out.append({"text": f"{lemma}: {gloss}", "nationality": nationality,
                        "nationality_group": NATIONALITY_GROUPS[nationality], "profession": profession,
                        "profession_group": PROFESSION_GROUPS[profession]})
    return out


__all__ = ["WORDNET_DIR", "NATIONALITY_GROUPS", "PROFESSION_GROUPS", "parse_person_gloss", "is_person_gloss",
           "read_wordnet_people"]
