"""ssae_kit.bios: synthetic bios are balanced, varied and consistent, for every LabHC profession;
the loader maps LabHC's codes; the splits keep their groups apart; token deletion removes the gender
cues it names.

Offline and CPU-only: `HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python -m pytest tests/test_bios.py -q`.
"""

from __future__ import annotations

import json
import re
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from faker import Faker

from ssae_kit.bio_templates import DETAILS, INTROS, NEUTRAL_INTROS, PERSONAL
from ssae_kit.bios import (
    GENDERS,
    LABHC_PROFESSIONS,
    PROFESSION_CODES,
    Bio,
    delete_gender_tokens,
    group_of,
    load_bias_in_bios,
    make_splits,
    synthetic_bios,
    template_fields,
)

MALE_WORDS = re.compile(r"\b(?:he|him|his|himself|Mr)\b", re.IGNORECASE)
FEMALE_WORDS = re.compile(r"\b(?:she|her|hers|herself|Ms|Mrs|Miss)\b", re.IGNORECASE)


def _sentences(text: str) -> list[str]:
    """Split into sentences, not fooled by the abbreviations the templates use."""
    return re.split(r"(?<=[.!?])\s+", re.sub(r"\b(Dr|Prof|Mr|Ms|St)\.", r"\1", text))


def _opening(bio: Bio) -> str:
    """The first two lowercase words of the first sentence, once name, titles and pronouns are gone."""
    first = delete_gender_tokens(_sentences(bio.text)[0], bio.name)
    return " ".join([w for w in re.findall(r"[A-Za-z']+", first) if w.islower()][:2])


@pytest.fixture(scope="module")
def bios() -> list[Bio]:
    return synthetic_bios(200, seed=0)


def test_synthetic_bios_are_deterministic_by_seed_and_differ_across_seeds():
    assert synthetic_bios(40, seed=1) == synthetic_bios(40, seed=1)
    other = synthetic_bios(40, seed=2)
    assert len({b.text for b in other} & {b.text for b in synthetic_bios(40, seed=1)}) == 0, (
        "seeds share bios"
    )


def test_synthetic_bios_are_balanced_over_the_four_groups_and_shuffled(bios):
    assert Counter(group_of(b) for b in bios) == {
        "male professor": 50,
        "female professor": 50,
        "male nurse": 50,
        "female nurse": 50,
    }
    first_half = Counter(b.profession for b in bios[:100])
    assert 30 < first_half["nurse"] < 70, f"bios look sorted by group: {first_half}"


def test_an_n_not_divisible_by_four_stays_balanced_in_gender_and_profession():
    small = synthetic_bios(10, seed=3)
    assert Counter(b.gender for b in small) == {"male": 5, "female": 5}
    assert Counter(b.profession for b in small) == {"professor": 5, "nurse": 5}
    assert {b.profession for b in synthetic_bios(6, professions=("nurse",))} == {"nurse"}


def test_pronouns_and_titles_match_the_bio_gender(bios):
    for b in bios:
        wrong = FEMALE_WORDS if b.gender == "male" else MALE_WORDS
        assert not wrong.search(b.text), f"{b.gender} bio has {wrong.search(b.text).group()!r}: {b.text}"
    for gender, words in (("male", MALE_WORDS), ("female", FEMALE_WORDS)):
        share = sum(bool(words.search(b.text)) for b in bios if b.gender == gender) / 100
        assert share > 0.8, f"only {share:.0%} of {gender} bios show a gendered word"


def test_bios_are_varied_in_wording_and_length(bios):
    assert len({_sentences(b.text)[0] for b in bios}) >= 190
    for profession in ("professor", "nurse"):
        shapes = {_opening(b) for b in bios if b.profession == profession}
        assert len(shapes) >= 6, f"{profession} bios open in too few ways: {sorted(shapes)}"
    assert {len(_sentences(b.text)) for b in bios} == {2, 3, 4, 5}
    for profession, phrases in {
        "professor": ("professor", "lecturer", "faculty", "teaches", "PhD", "research"),
        "nurse": ("registered nurse", "RN", "ward", "nurse practitioner", "patients", "hospital"),
    }.items():
        texts = " ".join(b.text for b in bios if b.profession == profession)
        assert all(re.search(rf"\b{p}\b", texts, re.IGNORECASE) for p in phrases), profession
    assert len({b.name.split()[0] for b in bios}) > 60, "first names repeat too much"


def test_every_bio_names_its_person():
    for b in synthetic_bios(40, seed=5):
        assert b.name and b.name in b.text


def test_synthetic_bios_reject_unknown_professions_and_name_the_valid_ones():
    with pytest.raises(ValueError, match=r"\['astronaut'\] are unknown.*'accountant'.*'yoga_teacher'"):
        synthetic_bios(4, professions=("professor", "astronaut"))
    with pytest.raises(ValueError, match="at least one of LabHC's"):
        synthetic_bios(4, professions=())


# Words that give gender away without a placeholder: templates leave gender to {he}, {his}, {name}...
GENDERED_WORDS = re.compile(
    r"\b(?:he|she|his|her|hers|him|himself|herself|Mr|Ms|Mrs|Miss|man|woman|men|women|male|female|"
    r"wife|husband|son|daughter|mother|father|brother|sister|boy|girl|lady|gentleman|guy|actress|hostess|"
    r"chairman|spokesman|businessman|businesswoman|frontman|craftsman|sportsman|alumnus|alumna)\b",
    re.IGNORECASE,
)
# A word stem that states each profession or its work, which every intro of it must contain.
PROFESSION_CUES = {
    "accountant": "account",
    "architect": "architect",
    "attorney": "attorney|law|litigation",
    "chiropractor": "chiropract",
    "comedian": "comed|stand-up",
    "composer": "compos|music",
    "dentist": "dent",
    "dietitian": "dietitian|dietetic",
    "dj": "DJ|spinning records",
    "filmmaker": "film",
    "interior_designer": "interior design",
    "journalist": "journalis|reporter",
    "model": "model",
    "nurse": "nurs|RN",
    "painter": "paint",
    "paralegal": "paralegal",
    "pastor": "pastor",
    "personal_trainer": "personal trainer",
    "photographer": "photograph",
    "physician": "physician|medical",
    "poet": "poet|poetry",
    "professor": "professor|lecture|faculty|teaches|chair",
    "psychologist": "psycholog",
    "rapper": "rap|hip-hop",
    "software_engineer": "software|engineer",
    "surgeon": "surg",
    "teacher": "teach",
    "yoga_teacher": "yoga",
}


def _template_fields(profession: str, gender: str, seed: int = 0) -> dict[str, str]:
    fake = Faker("en_US")
    fake.seed_instance(seed)
    return template_fields(fake, np.random.default_rng(seed), profession, gender)


def test_templates_cover_every_labhc_profession():
    assert list(INTROS) == list(DETAILS) == list(LABHC_PROFESSIONS)
    for profession in LABHC_PROFESSIONS:
        assert len(set(INTROS[profession])) >= 5 and len(set(DETAILS[profession])) >= 5, profession


@pytest.mark.parametrize("profession", LABHC_PROFESSIONS)
def test_every_template_formats_as_one_sentence_for_both_genders(profession):
    templates = INTROS[profession] + DETAILS[profession] + NEUTRAL_INTROS + PERSONAL
    for gender in GENDERS:
        fields = _template_fields(profession, gender)
        wrong = FEMALE_WORDS if gender == "male" else MALE_WORDS
        for template in templates:
            text = template.format(**fields)  # a KeyError names a placeholder template_fields does not fill
            assert len(_sentences(text)) == 1 and text.endswith("."), text
            assert "{" not in text and not wrong.search(text), text


def test_no_template_writes_a_gendered_word():
    templates = [t for table in (INTROS, DETAILS) for ts in table.values() for t in ts] + [
        *NEUTRAL_INTROS,
        *PERSONAL,
    ]
    for template in templates:
        words = re.sub(r"\{\w+\}", "", template)
        assert not GENDERED_WORDS.search(words), f"{GENDERED_WORDS.search(words).group()!r} in {template!r}"


def test_every_intro_states_its_profession():
    assert list(PROFESSION_CUES) == list(LABHC_PROFESSIONS)
    for profession, cue in PROFESSION_CUES.items():
        for intro in INTROS[profession]:
            assert re.search(rf"\b(?:{cue})", intro, re.IGNORECASE), f"{profession}: {intro!r}"


def test_all_28_professions_give_one_bio_per_gender_each():
    bios = synthetic_bios(56, seed=0, professions=LABHC_PROFESSIONS)
    assert Counter(map(group_of, bios)) == {f"{g} {p}": 1 for g in GENDERS for p in LABHC_PROFESSIONS}
    assert Counter(map(group_of, synthetic_bios(28 * 6, seed=1, professions=LABHC_PROFESSIONS))) == {
        f"{g} {p}": 3 for g in GENDERS for p in LABHC_PROFESSIONS
    }


def test_an_odd_number_of_professions_stays_balanced_in_gender_and_profession():
    three = ("surgeon", "rapper", "accountant")
    assert Counter(map(group_of, synthetic_bios(12, seed=0, professions=three))) == {
        f"{g} {p}": 2 for g in GENDERS for p in three
    }
    seven = synthetic_bios(7, seed=0, professions=three)
    assert sorted(Counter(b.gender for b in seven).values()) == [3, 4]
    assert sorted(Counter(b.profession for b in seven).values()) == [2, 2, 3]


def test_bios_of_every_profession_show_gender_only_through_its_cues():
    bios = synthetic_bios(28 * 8, seed=2, professions=LABHC_PROFESSIONS, profession_cue_rate=0.8)
    doctors = {"physician", "surgeon", "dentist", "chiropractor", "psychologist"}
    seen: set[tuple[bool, str]] = set()
    for b in bios:
        assert b.name and b.name in b.text, b.text
        wrong = FEMALE_WORDS if b.gender == "male" else MALE_WORDS
        assert not wrong.search(b.text), f"{b.gender} {b.profession}: {b.text}"
        titles = set(re.findall(rf"\b(Dr|Prof|Mr|Ms)\. {re.escape(b.name)}", b.text))
        assert titles <= (
            {"Dr", "Prof"}
            if b.profession == "professor"
            else {"Dr"}
            if b.profession in doctors
            else {"Mr"}
            if b.gender == "male"
            else {"Ms"}
        ), b.text
        seen |= {(b.profession in doctors, t) for t in titles}
        out = delete_gender_tokens(b.text, b.name)
        assert not MALE_WORDS.search(out) and not FEMALE_WORDS.search(out), out
    assert {(True, "Dr"), (False, "Mr"), (False, "Ms")} <= seen, f"some titles never show: {seen}"


def test_labhc_codes_from_the_dataset_card():
    assert PROFESSION_CODES["professor"] == 21 and PROFESSION_CODES["nurse"] == 13


LABHC_ROWS = [
    {"hard_text": "He teaches algebra.", "profession": 21, "gender": 0},
    {"hard_text": "She runs a lab.", "profession": 21, "gender": 1},
    {"hard_text": "He works nights on the ward.", "profession": 13, "gender": 0},
    {"hard_text": "She is an RN.", "profession": 13, "gender": 1},
    {"hard_text": "She argues cases.", "profession": 2, "gender": 1},  # attorney: filtered out
    {"hard_text": "He fixes teeth.", "profession": 6, "gender": 0},  # dentist: filtered out
    {"hard_text": "She is a charge nurse.", "profession": 13, "gender": 1},
]


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_loader_maps_codes_and_keeps_only_the_requested_professions(tmp_path, suffix):
    path = tmp_path / f"bios{suffix}"
    if suffix == ".parquet":
        pd.DataFrame(LABHC_ROWS).to_parquet(path)
    else:
        path.write_text("\n".join(json.dumps(r) for r in LABHC_ROWS))
    loaded = load_bias_in_bios(str(path))
    assert [(b.text, b.profession, b.gender) for b in loaded] == [
        ("He teaches algebra.", "professor", "male"),
        ("She runs a lab.", "professor", "female"),
        ("He works nights on the ward.", "nurse", "male"),
        ("She is an RN.", "nurse", "female"),
        ("She is a charge nurse.", "nurse", "female"),
    ]
    limited = load_bias_in_bios(str(path), limit_per_group=1)
    assert [b.text for b in limited if group_of(b) == "female nurse"] == ["She is an RN."]
    assert [b.profession for b in load_bias_in_bios(str(path), professions=("attorney",))] == ["attorney"]


def test_loader_names_missing_columns_and_the_ones_needed(tmp_path):
    path = tmp_path / "bios.jsonl"
    path.write_text(json.dumps({"text": "x", "profession": 21}))
    with pytest.raises(
        ValueError, match=r"lacks columns \['hard_text', 'gender'\].*\['profession', 'text'\]"
    ):
        load_bias_in_bios(str(path))


def test_loader_says_which_profession_has_no_rows(tmp_path):
    path = tmp_path / "bios.parquet"
    pd.DataFrame([r for r in LABHC_ROWS if r["profession"] != 21]).to_parquet(path)
    with pytest.raises(ValueError, match="no 'professor' rows.*code 21"):
        load_bias_in_bios(str(path))


def test_loader_rejects_unknown_gender_codes_and_professions(tmp_path):
    path = tmp_path / "bios.jsonl"
    rows = LABHC_ROWS + [{"hard_text": "x", "profession": 21, "gender": 2}]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(ValueError, match=r"gender codes \[2\].*0 = male, 1 = female"):
        load_bias_in_bios(str(path))
    with pytest.raises(ValueError, match="Unknown professions \\['nurses'\\]"):
        load_bias_in_bios(str(path), professions=("nurses",))


def test_hub_dataset_not_cached_offline_says_so_and_names_the_fix():
    with pytest.raises(ValueError, match="not cached.*OFFLINE.*local .parquet/.jsonl"):
        load_bias_in_bios("hf:no-such-org/no-such-bias-in-bios-xyz")


def test_missing_path_and_bad_suffix(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist.*hf:<dataset id>"):
        load_bias_in_bios(str(tmp_path / "nope.parquet"))
    (tmp_path / "bios.csv").write_text("hard_text,profession,gender\n")
    with pytest.raises(ValueError, match="use .parquet or .jsonl"):
        load_bias_in_bios(str(tmp_path / "bios.csv"))


def test_splits_have_the_right_groups_counts_and_no_shared_text(bios):
    splits = make_splits(bios, n_train_per_group=20, n_test_per_group=10, seed=0)
    assert Counter(map(group_of, splits.ambiguous_train)) == {"male professor": 20, "female nurse": 20}
    assert Counter(map(group_of, splits.ambiguous_test)) == {"male professor": 10, "female nurse": 10}
    assert Counter(map(group_of, splits.balanced_test)) == {
        "male professor": 10,
        "female professor": 10,
        "male nurse": 10,
        "female nurse": 10,
    }
    sets = [
        {b.text for b in s} for s in (splits.ambiguous_train, splits.ambiguous_test, splits.balanced_test)
    ]
    assert sum(map(len, sets)) == len(set.union(*sets)), "a bio is in two splits"


def test_splits_are_deterministic_by_seed_and_test_sets_ignore_train_size(bios):
    a = make_splits(bios, 20, 10, seed=0)
    assert a == make_splits(bios, 20, 10, seed=0)
    assert a.balanced_test != make_splits(bios, 20, 10, seed=1).balanced_test
    bigger = make_splits(bios, 30, 10, seed=0)
    assert sorted(b.text for b in bigger.balanced_test) == sorted(b.text for b in a.balanced_test)


def test_splits_drop_duplicate_texts_before_drawing():
    bio = Bio("Same text.", "professor", "male")
    others = [
        Bio(f"{g} {i}.", g.split()[1], g.split()[0])
        for g in ("female professor", "male nurse", "female nurse")
        for i in range(2)
    ]
    with pytest.raises(ValueError, match="'male professor' has 1 bios, needs 3"):
        make_splits([bio] * 5 + others, n_train_per_group=1, n_test_per_group=1)


def test_too_few_bios_names_each_short_group_and_the_counts(bios):
    both = r"'male professor' has 50 bios, needs 60; 'female nurse' has 50 bios, needs 60"
    with pytest.raises(ValueError, match=both):
        make_splits(bios, n_train_per_group=40, n_test_per_group=10)
    with pytest.raises(ValueError, match="notebook 05: n_a_per_group \\+ n_b_per_group.*n_bios"):
        make_splits(bios, n_train_per_group=40, n_test_per_group=10)
    with pytest.raises(ValueError, match="'female professor' has 0 bios"):
        make_splits([b for b in bios if group_of(b) != "female professor"], 5, 5)


def test_delete_gender_tokens_removes_pronouns_titles_and_the_name():
    text = "Dr. Anna Smith is a nurse. She loves her job, and Smith's patients thank her herself."
    out = delete_gender_tokens(text, name="Anna Smith")
    assert out == "Dr. is a nurse. loves job, and patients thank.", out
    out = delete_gender_tokens("Mr. Lee said HE would see HIM and his dog.", name="Lee")
    assert out == "said would see and dog.", out
    assert delete_gender_tokens("Ms. Ray and Mrs. Ng  met Miss Cole.") == "Ray and Ng met Cole."


def test_delete_gender_tokens_keeps_words_that_only_contain_pronouns():
    text = "Heather, the other chair, will never miss the theme; hers is there."
    assert delete_gender_tokens(text) == "Heather, the other chair, will never miss the theme; is there."


def test_delete_gender_tokens_leaves_synthetic_bios_without_gender_words(bios):
    for b in bios[:50]:
        out = delete_gender_tokens(b.text, b.name)
        assert not MALE_WORDS.search(out) and not FEMALE_WORDS.search(out), out
        assert not any(re.search(rf"\b{re.escape(p)}\b", out) for p in b.name.split()), out


def test_profession_cue_rate_controls_how_many_bios_state_the_profession():
    cues = re.compile(
        r"\b(professor|lecturer|faculty|nurse|nursing|RN|hospital|ward|university|PhD|patients)\b",
        re.IGNORECASE,
    )
    silent = synthetic_bios(80, seed=3, profession_cue_rate=0.0)
    assert not [b.text for b in silent if cues.search(b.text)], "a cue-less bio names its profession"
    assert all(
        re.search(r"\b(he|she|his|her)\b", b.text, re.IGNORECASE) for b in silent
    )  # gender still shows
    half = synthetic_bios(400, seed=3, profession_cue_rate=0.5)
    assert 0.35 < sum(bool(cues.search(b.text)) for b in half) / 400 < 0.65
    with pytest.raises(ValueError, match="between 0 and 1"):
        synthetic_bios(4, profession_cue_rate=1.5)


def test_loaded_bios_carry_a_name_only_when_the_source_has_one(tmp_path):
    plain, named = tmp_path / "plain.jsonl", tmp_path / "named.parquet"
    plain.write_text("\n".join(json.dumps(r) for r in LABHC_ROWS))
    pd.DataFrame([{**r, "name": f"Ann Lee{i}"} for i, r in enumerate(LABHC_ROWS)]).to_parquet(named)
    assert {b.name for b in load_bias_in_bios(str(plain))} == {""}  # LabHC: deletion removes pronouns only
    first = load_bias_in_bios(str(named))[1]
    assert (
        first.name == "Ann Lee1" and delete_gender_tokens("Ann Lee1 runs a lab.", first.name) == "runs a lab."
    )
