"""Bias in Bios data (PAPER §4): biographies labelled with profession and gender, and SHIFT's splits.

Two sources give the same `list[Bio]`: `load_bias_in_bios` reads LabHC/bias_in_bios (from the Hub
or a local .parquet/.jsonl with its schema) and maps its integer codes to names; `synthetic_bios`
writes bios of any of its 28 professions with faker and the sentences of `bio_templates`, so the
case study and the taxonomy probes run offline. `make_splits` builds the ambiguous set (profession
and gender coincide) and the balanced test set; `delete_gender_tokens` is the token-deletion
baseline that SHIFT is compared with.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from faker import Faker

from .bio_templates import DETAILS, INTROS, NEUTRAL_INTROS, PERSONAL

__all__ = [
    "delete_gender_tokens",
    "load_bias_in_bios",
    "make_splits",
    "synthetic_bios",
]

Gender = Literal["male", "female"]
GENDERS: tuple[Gender, Gender] = ("male", "female")

# Label codes of LabHC/bias_in_bios, from its dataset card (huggingface.co/datasets/LabHC/bias_in_bios):
# a profession's code is its index in this alphabetical list (nurse = 13, professor = 21), and a
# gender's code its index in GENDERS (0 = male, 1 = female).
LABHC_PROFESSIONS = (
    "accountant",
    "architect",
    "attorney",
    "chiropractor",
    "comedian",
    "composer",
    "dentist",
    "dietitian",
    "dj",
    "filmmaker",
    "interior_designer",
    "journalist",
    "model",
    "nurse",
    "painter",
    "paralegal",
    "pastor",
    "personal_trainer",
    "photographer",
    "physician",
    "poet",
    "professor",
    "psychologist",
    "rapper",
    "software_engineer",
    "surgeon",
    "teacher",
    "yoga_teacher",
)
PROFESSION_CODES = {name: code for code, name in enumerate(LABHC_PROFESSIONS)}
LABHC_COLUMNS = ("hard_text", "profession", "gender")

# The ambiguous set pairs each profession with one gender, so a probe can use either (PAPER §4).
AMBIGUOUS_GROUPS = ("male professor", "female nurse")
BALANCED_GROUPS = ("male professor", "female professor", "male nurse", "female nurse")


@dataclass(frozen=True)
class Bio:
    """One biography and its labels."""

    text: str
    """The biography, as a model reads it."""
    profession: str
    """A LabHC profession name, e.g. "professor" or "nurse"."""
    gender: Gender
    """The label the probe must not use (PAPER §4)."""
    name: str = ""
    """The person's name as written in `text`, for `delete_gender_tokens`: synthetic bios, and loaded
    ones whose source has a "name" column (LabHC/bias_in_bios has none: deletion then removes only
    pronouns and titles)."""


def group_of(bio: Bio) -> str:
    """The bio's group, e.g. "female nurse": the unit the splits balance over."""
    return f"{bio.gender} {bio.profession}"


# Who may carry "Dr." as a title (professors may also be "Prof."); everyone else is Mr. or Ms.
_DOCTORS = frozenset({"physician", "surgeon", "dentist", "chiropractor", "psychologist"})
_FIELDS = {
    "Chemistry": ("catalysis", "polymer synthesis", "battery materials"),
    "History": ("medieval trade networks", "the history of public health", "colonial Latin America"),
    "Economics": ("labor markets", "monetary policy", "development economics"),
    "Computer Science": ("machine learning", "distributed systems", "programming languages"),
    "Linguistics": ("language acquisition", "phonology", "endangered languages"),
    "Molecular Biology": ("protein folding", "gene regulation", "bacterial genetics"),
    "Philosophy": ("the ethics of technology", "philosophy of mind", "Kant's aesthetics"),
    "Mathematics": ("number theory", "stochastic processes", "algebraic topology"),
}
_UNIVERSITIES = ("the University of {state}", "{city} State University", "{last} College", "{last} Institute")
_HOSPITALS = (
    "{city} General Hospital",
    "St. {last}'s Medical Center",
    "{last} Memorial Hospital",
    "the {city} Clinic",
)
_WARDS = (
    "cardiac",
    "oncology",
    "pediatric",
    "maternity",
    "intensive care",
    "emergency",
    "surgical",
    "geriatric",
)
_SPECIALTIES = ("critical care", "oncology", "pediatrics", "emergency care", "palliative care", "wound care")
_CERTS = ("advanced cardiac life support", "pediatric advanced life support", "critical care nursing")
_AWARDS = (
    "a Fulbright Fellowship",
    "an NSF CAREER Award",
    "a Guggenheim Fellowship",
    "a university teaching prize",
)
_FAMILIES = ("partner and two children", "family", "partner and their dog", "three cats")
_HOBBIES = ("hiking", "gardening", "playing the piano", "baking bread", "running", "birdwatching", "sailing")


def synthetic_bios(
    n: int,
    seed: int = 0,
    professions: Sequence[str] = ("professor", "nurse"),
    profession_cue_rate: float = 1.0,
) -> list[Bio]:
    """`n` varied, faker-written bios, balanced over gender and profession, deterministic by seed.

    They stand in for LabHC/bias_in_bios offline. As in the real bios, gender shows only through
    pronouns, names and titles, the cues that `delete_gender_tokens` removes. With probability
    1 - `profession_cue_rate` a bio is written without any profession cue (a neutral intro and
    personal sentences only): real bios often state the profession weakly while pronouns are
    everywhere, which is what makes a classifier on the ambiguous set take the gender shortcut.
    """
    if not 0.0 <= profession_cue_rate <= 1.0:
        raise ValueError(f"profession_cue_rate={profession_cue_rate} must be between 0 and 1.")
    if n < 0:
        raise ValueError(f"n={n}: ask for n >= 0 bios.")
    unknown = [p for p in professions if p not in INTROS]
    if unknown or not professions:
        raise ValueError(
            f"synthetic_bios got professions={list(professions)}"
            + (f", of which {unknown} are unknown" if unknown else "")
            + f": name at least one of LabHC's {list(LABHC_PROFESSIONS)}."
        )
    rng = np.random.default_rng(seed)
    fake = Faker("en_US")
    fake.seed_instance(seed)
    # Walk the groups so that any n is balanced in gender and in profession (to within one).
    k = len(professions)
    labels = [(professions[i % k], GENDERS[(i + (i // k) * (k % 2 == 0)) % 2]) for i in range(n)]
    return [
        _bio(fake, rng, *labels[i], cued=bool(rng.random() < profession_cue_rate)) for i in rng.permutation(n)
    ]


def _bio(fake: Faker, rng: np.random.Generator, profession: str, gender: Gender, cued: bool = True) -> Bio:
    """One bio: an intro sentence, then 1-4 sentences of detail, personal ones last; without a
    profession cue (`cued=False`) a neutral intro and 1-3 personal sentences."""
    fields = template_fields(fake, rng, profession, gender)
    details = DETAILS[profession] if cued else ()
    pool = details + PERSONAL
    picked = rng.choice(len(pool), size=int(rng.integers(1, min(5, len(pool) + 1))), replace=False)
    picked = sorted(picked, key=lambda i: i >= len(details))  # stable: keeps the random order
    sentences = [_pick(rng, INTROS[profession] if cued else NEUTRAL_INTROS)] + [pool[i] for i in picked]
    text = " ".join(s.format(**fields) for s in sentences)
    return Bio(text, profession, gender, name=f"{fields['first']} {fields['last']}")


def _titles(profession: str, gender: Gender) -> tuple[str, ...]:
    """The titles a bio may put before the name: Dr. or Prof. for professors, Dr. for doctors."""
    if profession == "professor":
        return ("Dr.", "Prof.")
    if profession in _DOCTORS:
        return ("Dr.",)
    return ("Mr.",) if gender == "male" else ("Ms.",)


def template_fields(fake: Faker, rng: np.random.Generator, profession: str, gender: Gender) -> dict[str, str]:
    """Everything a template can name, drawn once per person so the sentences agree."""
    first = fake.first_name_male() if gender == "male" else fake.first_name_female()
    last = fake.last_name()
    title = _pick(rng, _titles(profession, gender)) if rng.random() < 0.3 else ""
    he, his, him = ("he", "his", "him") if gender == "male" else ("she", "her", "her")
    field = _pick(rng, tuple(_FIELDS))
    topic, topic2 = (_FIELDS[field][i] for i in rng.choice(len(_FIELDS[field]), size=2, replace=False))
    year = int(rng.integers(1985, 2013))
    place = dict(city=fake.city(), state=fake.state(), last=fake.last_name())
    fields = dict(
        first=first,
        last=last,
        name=f"{title} {first} {last}".strip(),
        short=f"{title} {last}" if title else first,
        he=he,
        He=he.capitalize(),
        his=his,
        His=his.capitalize(),
        him=him,
        city=place["city"],
        state=place["state"],
        other=fake.last_name(),
        uni=_pick(rng, _UNIVERSITIES).format(**place),
        uni2=f"{fake.last_name()} University",
        hospital=_pick(rng, _HOSPITALS).format(**place),
        hospital2=f"{fake.city()} Community Hospital",
        field=field,
        topic=topic,
        topic2=topic2,
        year=str(year),
        year2=str(year + int(rng.integers(3, 12))),
        n=str(rng.integers(2, 20)),
        count=str(rng.integers(20, 150)),
        ward=_pick(rng, _WARDS),
        specialty=_pick(rng, _SPECIALTIES),
        cert=_pick(rng, _CERTS),
        award=_pick(rng, _AWARDS),
        family=_pick(rng, _FAMILIES),
        hobby=_pick(rng, _HOBBIES),
    )
    # Workplaces made from names already drawn, with no draw of their own, so that adding them
    # changed no bio that was written before.
    city, other = place["city"], fields["other"]
    return fields | dict(
        firm=f"{place['last']} & {other}",
        company=f"{other} Systems",
        studio=f"{place['last']} Studio",
        school=f"{city} High School",
        church=f"{city} Community Church",
        gym=f"{city} Fitness",
        paper=f"the {city} Herald",
    )


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def load_bias_in_bios(
    source: str = "hf:LabHC/bias_in_bios",
    split: str = "train",
    professions: Sequence[str] = ("professor", "nurse"),
    limit_per_group: int | None = None,
) -> list[Bio]:
    """Bios of `professions` from LabHC/bias_in_bios (`"hf:<id>"`) or a local .parquet/.jsonl.

    A local file has LabHC's columns and codes (hard_text, profession, gender); `split` applies to
    the Hub only. `limit_per_group` keeps the first rows of each (profession, gender) group.
    """
    unknown = [p for p in professions if p not in PROFESSION_CODES]
    if unknown:
        raise ValueError(f"Unknown professions {unknown}: choose from LabHC's {list(LABHC_PROFESSIONS)}.")
    if limit_per_group is not None and limit_per_group < 1:
        raise ValueError(f"limit_per_group={limit_per_group} keeps nothing: use None or an int >= 1.")
    table = _read_table(source, split)
    names = {PROFESSION_CODES[p]: p for p in professions}
    table = table[table["profession"].isin(list(names))]
    bad = sorted(set(table["gender"].tolist()) - {0, 1})
    if bad:
        raise ValueError(f"{source} has gender codes {bad}; LabHC/bias_in_bios uses 0 = male, 1 = female.")
    for code, name in names.items():
        if not (table["profession"] == code).any():
            raise ValueError(
                f"{source} (split {split!r}) has no {name!r} rows (profession code {code}): check the "
                "split, and that the profession column holds LabHC's integer codes."
            )
    if limit_per_group is not None:
        table = table.groupby(["profession", "gender"], sort=False).head(limit_per_group)
    # LabHC has no name column; a source that has one gives token deletion the names to remove.
    people = table["name"].fillna("").astype(str) if "name" in table.columns else [""] * len(table)
    return [
        Bio(str(text), names[int(prof)], GENDERS[int(gender)], name)
        for text, prof, gender, name in zip(table["hard_text"], table["profession"], table["gender"], people)
    ]


def _read_table(source: str, split: str) -> pd.DataFrame:
    if source.startswith("hf:"):
        import datasets

        try:
            ds = datasets.load_dataset(source[3:], split=split)
        except (ConnectionError, FileNotFoundError) as err:
            if datasets.config.HF_HUB_OFFLINE:
                raise ValueError(
                    f"{source} is not cached and HF_DATASETS_OFFLINE / HF_HUB_OFFLINE is set: load it once "
                    "online to cache it, or pass a local .parquet/.jsonl file with LabHC's columns."
                ) from err
            raise ValueError(
                f"Could not load {source} (split {split!r}): {err}. Check the dataset id."
            ) from err
        _check_columns(ds.column_names, source)
        return ds.select_columns(list(LABHC_COLUMNS)).to_pandas()
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"Bias in Bios source {source!r} does not exist: give 'hf:<dataset id>' or a .parquet/.jsonl "
            f"file with columns {list(LABHC_COLUMNS)}."
        )
    if path.suffix == ".parquet":
        table = pd.read_parquet(path)
    elif path.suffix == ".jsonl":
        with path.open(encoding="utf-8") as f:
            table = pd.DataFrame([json.loads(line) for line in f if line.strip()])
    else:
        raise ValueError(f"Unsupported Bias in Bios file type {path.suffix!r}: use .parquet or .jsonl.")
    _check_columns(list(table.columns), source)
    return table


def _check_columns(found: list[str], source: str) -> None:
    missing = [c for c in LABHC_COLUMNS if c not in found]
    if missing:
        raise ValueError(
            f"{source} lacks columns {missing}; it has {sorted(found)}. Bias in Bios needs "
            f"{list(LABHC_COLUMNS)} with LabHC/bias_in_bios' integer codes."
        )


@dataclass
class BiosSplits:
    """The three disjoint sets of the SHIFT experiment (PAPER §4)."""

    ambiguous_train: list[Bio]
    """Male professors and female nurses: profession and gender predict each other."""
    ambiguous_test: list[Bio]
    """Held-out bios from the same two groups."""
    balanced_test: list[Bio]
    """All four groups in equal numbers: a probe that uses gender scores ~50% on profession."""


def make_splits(
    bios: Sequence[Bio], n_train_per_group: int, n_test_per_group: int, seed: int = 0
) -> BiosSplits:
    """Draw the ambiguous train/test sets and the balanced test set, disjoint and shuffled.

    Duplicate texts are dropped first, so no text sits in two sets. Test bios are drawn before
    train bios, so raising `n_train_per_group` leaves both test sets unchanged.
    """
    if n_train_per_group < 1 or n_test_per_group < 1:
        raise ValueError(
            f"n_train_per_group={n_train_per_group}, n_test_per_group={n_test_per_group}: both must be >= 1."
        )
    by_group: dict[str, list[Bio]] = {g: [] for g in BALANCED_GROUPS}
    seen: set[str] = set()
    for bio in bios:
        if group_of(bio) in by_group and bio.text not in seen:
            seen.add(bio.text)
            by_group[group_of(bio)].append(bio)
    # Every group gives the balanced test set; the two ambiguous groups also give train and test.
    need = {
        g: n_test_per_group + (n_test_per_group + n_train_per_group) * (g in AMBIGUOUS_GROUPS)
        for g in by_group
    }
    short = [
        f"{g!r} has {len(by_group[g])} bios, needs {need[g]}" for g in by_group if len(by_group[g]) < need[g]
    ]
    if short:
        raise ValueError(
            f"Too few bios for make_splits: {'; '.join(short)}. Lower n_train_per_group / "
            "n_test_per_group (notebook 05: n_a_per_group + n_b_per_group), or load more bios "
            "(a larger limit_per_group, n, or notebook 05's n_bios)."
        )
    rng = np.random.default_rng(seed)
    train: list[Bio] = []
    ambiguous_test: list[Bio] = []
    balanced_test: list[Bio] = []
    for g in BALANCED_GROUPS:
        members = [by_group[g][i] for i in rng.permutation(len(by_group[g]))]
        balanced_test += members[:n_test_per_group]
        if g in AMBIGUOUS_GROUPS:
            ambiguous_test += members[n_test_per_group : 2 * n_test_per_group]
            train += members[2 * n_test_per_group : 2 * n_test_per_group + n_train_per_group]
    return BiosSplits(
        *([s[i] for i in rng.permutation(len(s))] for s in (train, ambiguous_test, balanced_test))
    )


_PRONOUNS = re.compile(r"[ \t]*\b(?:he|she|him|her|his|hers|himself|herself)\b", re.IGNORECASE)
# Titles and names are proper nouns, so they match as written: "miss" or "grant" as words stay.
_TITLES = re.compile(r"[ \t]*\b(?:Mr|Mrs|Ms|Miss)\b\.?")


def delete_gender_tokens(text: str, name: str = "") -> str:
    """The token-deletion baseline: drop gendered pronouns, gendered titles and each part of `name`.

    Each deleted word takes the space before it, so "proud of him." becomes "proud of."; a
    possessive "'s" after a name goes with the name.
    """
    text = _TITLES.sub("", _PRONOUNS.sub("", text))
    parts = [re.escape(p) for p in name.split()]
    if parts:
        text = re.sub(rf"[ \t]*\b(?:{'|'.join(parts)})(?:'s)?\b", "", text)
    return re.sub(r"[ \t]{2,}", " ", text).strip()
