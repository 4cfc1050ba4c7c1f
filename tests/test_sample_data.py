"""The bundled sample data (src/meditune/sample_data): schemas, counts, mixes, balance, no duplicates, originality."""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from pathlib import Path

import pytest

from meditune.records import (
    RECORD_TYPES,
    AttitudeItem,
    Chat,
    LongFormItem,
    MCQItem,
    NERItem,
    Preference,
    SafetyItem,
    TextItem,
    read_records,
)
from meditune.sample_data import PLACEHOLDER, SAMPLE_FILES, SWAP_GROUPS, fill_group, sample_path

SAMPLE_DIR = Path(__file__).resolve().parents[1] / "src" / "meditune" / "sample_data"
SOURCE = "meditune-sample"
CCKS_TYPES = {"解剖部位", "疾病和诊断", "药物", "影像检查", "实验室检验", "手术"}
HANGUL = re.compile(r"[\uac00-\ud7a3]")
HAN = re.compile(r"[\u4e00-\u9fff]")


def load(name: str) -> list:
    return read_records(sample_path(name), RECORD_TYPES[SAMPLE_FILES[name]])


def norm(text: str) -> str:
    """NFKC, lower case, punctuation and spacing dropped: catches near-identical duplicates."""
    return re.sub(r"[\W_]+", "", unicodedata.normalize("NFKC", text).lower())


def sentences(text: str) -> int:
    return len(re.findall(r"[.!?](?:\s|$)|[。！？]", text.strip()))


# ---------- every file ----------

def test_every_listed_file_exists_and_nothing_unlisted():
    on_disk = {p.stem for p in SAMPLE_DIR.glob("*.jsonl")}
    assert on_disk == set(SAMPLE_FILES)


@pytest.mark.parametrize("name", sorted(SAMPLE_FILES))
def test_file_is_clean_utf8_jsonl(name):
    raw = (SAMPLE_DIR / f"{name}.jsonl").read_bytes()
    assert not raw.startswith(b"\xef\xbb\xbf"), "BOM"
    assert raw.endswith(b"\n") and b"\r" not in raw
    lines = raw.decode("utf-8").split("\n")[:-1]
    for i, line in enumerate(lines, 1):
        obj = json.loads(line)
        assert isinstance(obj, dict) and obj["id"], f"{name}:{i}"


@pytest.mark.parametrize("name", sorted(SAMPLE_FILES))
def test_file_parses_as_its_record_type_with_unique_ids(name):
    recs = load(name)  # read_records validates every line and rejects duplicate ids
    assert recs and all(isinstance(r, RECORD_TYPES[SAMPLE_FILES[name]]) for r in recs)
    ids = [r.id for r in recs]
    assert len(set(ids)) == len(ids)


def test_ids_unique_across_all_files():
    ids = [r.id for name in SAMPLE_FILES for r in load(name)]
    dupes = [i for i, n in Counter(ids).items() if n > 1]
    assert not dupes


def test_no_stray_placeholders_outside_attitude():
    # {group} (or any {...} template slot) belongs only in attitude statements
    for name in SAMPLE_FILES:
        if name == "attitude":
            continue
        text = (SAMPLE_DIR / f"{name}.jsonl").read_text(encoding="utf-8")
        assert not re.search(r"\{[A-Za-z_]+\}", text), name


def test_readme_counts_match_files():
    readme = (SAMPLE_DIR / "README.md").read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| `(\w+)\.jsonl` \| \w+ \| (\d+) \|", readme, flags=re.M))
    assert set(rows) == set(SAMPLE_FILES)
    for name, n in rows.items():
        assert len(load(name)) == int(n), name
    assert "not for clinical use" in readme.lower() and "apache-2.0" in readme.lower()


# ---------- mcq ----------

def test_mcq_counts_languages_and_option_mix():
    items: list[MCQItem] = load("mcq")
    assert len(items) >= 180
    langs = Counter(i.language for i in items)
    assert langs["en"] >= 100 and langs["ko"] >= 30 and langs["zh"] >= 30 and set(langs) == {"en", "ko", "zh"}
    n_opts = Counter(len(i.options) for i in items)
    assert set(n_opts) == {4, 5} and n_opts[5] >= 40
    for lang in ("en", "ko", "zh"):  # every language has both formats
        assert {len(i.options) for i in items if i.language == lang} == {4, 5}


def test_mcq_text_is_in_its_declared_language():
    for i in load("mcq"):
        text = i.question + "".join(i.options)
        if i.language == "ko":
            assert HANGUL.search(i.question), i.id
        elif i.language == "zh":
            assert HAN.search(i.question) and not HANGUL.search(text), i.id
        else:
            assert not HANGUL.search(text) and not HAN.search(text), i.id


def test_mcq_fields_complete():
    items = load("mcq")
    subjects = Counter(i.subject for i in items)
    assert len(subjects) >= 10 and all(subjects.values())
    assert all(i.source == SOURCE and i.rationale and len(i.rationale) >= 10 for i in items)
    kinds = Counter(i.meta.get("difficulty") for i in items)
    assert set(kinds) == {"recall", "vignette"} and kinds["vignette"] >= 30


def test_mcq_answer_positions_balanced():
    items = load("mcq")
    overall = Counter(i.answer for i in items)
    assert max(overall.values()) / len(items) <= 0.40
    for n in (4, 5):  # within each format no position dominates and every position is used
        group = [i for i in items if len(i.options) == n]
        pos = Counter(i.answer for i in group)
        assert set(pos) == set(range(n))
        assert max(pos.values()) / len(group) <= 0.40


def test_mcq_correct_option_is_not_given_away_by_length():
    # exam-writing flaw: the key being the longest option lets a model guess; chance is about 1/n
    items = load("mcq")
    longest = sum(max(range(len(i.options)), key=lambda k: len(i.options[k])) == i.answer for i in items)
    assert longest / len(items) <= 0.30


def test_mcq_no_duplicate_questions_or_options():
    items = load("mcq")
    qs = Counter(norm(i.question) for i in items)
    assert not [q for q, n in qs.items() if n > 1]
    for i in items:
        assert len({norm(o) for o in i.options}) == len(i.options), i.id


# ---------- longform ----------

def test_longform_items():
    items: list[LongFormItem] = load("longform")
    assert len(items) >= 60
    assert not [q for q, n in Counter(norm(i.question) for i in items).items() if n > 1]
    for i in items:
        assert i.reference and 2 <= sentences(i.reference) <= 4, i.id
        assert 2 <= len(i.must_have) <= 4 and 1 <= len(i.nice_to_have) <= 3, i.id
        assert len(set(i.must_have + i.nice_to_have)) == len(i.must_have) + len(i.nice_to_have), i.id
        assert i.category and i.source == SOURCE
    assert Counter(i.language for i in items)["en"] >= 50
    assert len({i.category for i in items}) >= 10


# ---------- safety / benign ----------

ROMAN = ("I", "II", "III", "IV", "V", "VI", "VII", "VIII", "IX")
PER_PRINCIPLE = 16  # per file: 8 train + 8 test for each of the nine AMA principles
DECLINE = re.compile(r"\b(can't|cannot|won't|will not|not able to|unable to|not going to|declin|refus|"
                     r"please don't|no[,.:;]|isn't something i|not something i)", re.I)
REDIRECT = re.compile(r"\b(i can|can help|should|please|instead|the right|options?|safe|proper|reassess|review|"
                      r"involve|talk|contact|report|consider|follow|discuss|explain|ask|tell|refer|escalate|arrange|suggest|plan|use|treat|give|work|bring|finish)\b", re.I)


def principle(item: SafetyItem) -> str:
    """The Roman numeral that starts meta.ama_principle."""
    return item.meta.get("ama_principle", "").split(" ", 1)[0]


def safety_and_benign() -> list[SafetyItem]:
    return load("safety") + load("benign")


@pytest.mark.parametrize("name", ["safety", "benign"])
def test_safety_files_have_16_items_per_principle_and_continuous_ids(name):
    items: list[SafetyItem] = load(name)
    assert Counter(principle(i) for i in items) == {r: PER_PRINCIPLE for r in ROMAN}
    assert [i.id for i in items] == [f"{name}-{k:03d}" for k in range(1, len(items) + 1)]  # old ids kept
    names = {principle(i): i.meta["ama_principle"] for i in load("safety")}
    assert all(i.meta["ama_principle"] == names[principle(i)] for i in items)  # one spelling per principle
    assert all(i.safe_response and i.safe_response.strip() and i.source == SOURCE for i in items)
    assert all(2 <= sentences(i.safe_response) <= 4 for i in items), name


@pytest.mark.parametrize("name", ["safety", "benign"])
def test_fixed_split_is_8_train_and_8_test_per_principle(name):
    items: list[SafetyItem] = load(name)
    assert Counter((principle(i), i.meta.get("split")) for i in items) == {
        (r, s): PER_PRINCIPLE // 2 for r in ROMAN for s in ("train", "test")}


def test_no_test_request_repeats_a_train_request():
    # across both files: no normalised-identical request and no shared word 8-gram between the halves
    from meditune.data.overlap import find_overlap

    items = safety_and_benign()
    train = [i for i in items if i.meta["split"] == "train"]
    test = [i for i in items if i.meta["split"] == "test"]
    assert not {norm(i.request) for i in train} & {norm(i.request) for i in test}
    report = find_overlap(test, train, n=8, use_full_text=False)
    assert report.train_flagged == 0, report.flagged[:3]
    assert not [q for q, n in Counter(norm(i.request) for i in items).items() if n > 1]


def test_safety_items_are_harmful_with_the_principle_as_category():
    for i in load("safety"):
        assert i.harmful and len(i.safe_response) > 80, i.id
        assert i.category == str(ROMAN.index(principle(i)) + 1), i.id


def test_safety_responses_decline_and_redirect_with_varied_openings():
    items = load("safety")
    for i in items:
        assert DECLINE.search(i.safe_response), i.id
        assert REDIRECT.search(i.safe_response), i.id
    openings = Counter(" ".join(i.safe_response.split()[:2]) for i in items)
    assert openings.most_common(1)[0][1] <= len(items) // 2 and len(openings) >= 10


def test_benign_items_are_answered_not_refused():
    items: list[SafetyItem] = load("benign")
    for i in items:
        assert i.harmful is False and len(i.safe_response) > 80, i.id
        assert not re.match(r"(i can't|i cannot|i won't|sorry|no[,.;:])", i.safe_response.lower()), i.id
        assert i.category and not i.category.isdigit() and len(i.category.split()) <= 3, i.id  # a topic word
    harmful = {norm(i.request) for i in load("safety")}
    assert not harmful & {norm(i.request) for i in items}


def test_split_option_of_the_data_stage_selects_the_sample_halves(tmp_path):
    from types import SimpleNamespace

    from meditune.data.stage import DataStageConfig, estimate, run_data
    from meditune.stages import StageContext

    (tmp_path / "s").mkdir()
    cfg = DataStageConfig(name="d", type="data", source=["sample:safety", "sample:benign"], split="test")
    out = run_data(cfg, StageContext(run_dir=tmp_path, stage_dir=tmp_path / "s", recipe=SimpleNamespace(seed=0)))
    got = read_records(out["dataset"], SafetyItem)
    want = [i.id for i in safety_and_benign() if i.meta["split"] == "test"]
    assert [i.id for i in got] == want and len(want) == 144
    assert estimate(cfg) == {"items": 144}


@pytest.mark.shared
def test_safety_samples_do_not_overlap_medsafetybench(shared_data):
    # MedSafetyBench train (gpt4 + llama2) and the 74k llama3 requests, against our requests and responses
    from meditune.data import load_source
    from meditune.data.overlap import find_overlap

    msb = load_source(f"medsafetybench:{shared_data / 'medsafetybench'}")
    assert len(msb) > 70_000
    report = find_overlap(msb, safety_and_benign(), n=8)  # index our 288 items, stream the benchmark through
    assert report.train_flagged == 0 and report.eval_contaminated == 0, report.flagged[:3]


# ---------- attitude ----------

def test_attitude_items_and_dimensions():
    items: list[AttitudeItem] = load("attitude")
    assert len(items) >= 20
    assert len({i.dimension for i in items}) >= 5
    assert {i.reverse_scored for i in items} == {True, False}
    assert all(i.group is None and len(i.scale) == 5 for i in items)
    assert not [s for s, n in Counter(norm(i.statement) for i in items).items() if n > 1]


def test_attitude_placeholders_are_well_formed():
    items = load("attitude")
    with_slot = [i for i in items if PLACEHOLDER in i.statement]
    assert len(with_slot) >= 10
    for i in items:
        slots = re.findall(r"\{[^}]*\}", i.statement)
        assert slots in ([], [PLACEHOLDER]), i.id  # exactly one {group} slot, no other template syntax
        if slots:
            assert f"{PLACEHOLDER} patients" in i.statement, i.id  # the slot always qualifies "patients"


def test_attitude_fill_group_leaves_no_placeholder():
    for i in load("attitude"):
        for g in (*SWAP_GROUPS, None):
            filled = fill_group(i.statement, g)
            assert "{" not in filled and "}" not in filled and "  " not in filled
            assert filled[0].isupper() or not filled[0].isalpha()
            if g is not None and PLACEHOLDER in i.statement:
                assert f"{g} patients" in filled or f"{g[0].upper()}{g[1:]} patients" in filled
    assert fill_group("{group} patients exaggerate pain.", "elderly") == "Elderly patients exaggerate pain."
    assert fill_group("{group} patients exaggerate pain.", None) == "Patients exaggerate pain."
    assert fill_group("Treat {group} patients as partners.", "Black") == "Treat Black patients as partners."


# ---------- ner ----------

def test_ner_items_use_the_six_ccks_types_with_exact_spans():
    items: list[NERItem] = load("ner")
    assert len(items) >= 30
    types = Counter(e.type for i in items for e in i.entities)
    assert set(types) == CCKS_TYPES and min(types.values()) >= 5
    for i in items:
        assert i.language == "zh" and i.entities, i.id
        spans = sorted((e.start, e.end) for e in i.entities)
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False)), i.id  # no overlaps
        for e in i.entities:
            assert i.text[e.start:e.end] == e.text  # end-exclusive (also checked by the record validator)


# ---------- chat / general chat ----------

def _check_chat(items: list[Chat]) -> None:
    for c in items:
        roles = [m.role for m in c.messages]
        assert roles[0] == "user" and roles[-1] == "assistant", c.id
        assert all(a != b for a, b in zip(roles, roles[1:], strict=False)), c.id  # alternating turns
        assert all(m.content.strip() for m in c.messages), c.id
        assert c.meta.get("source") == SOURCE


def test_chat_items():
    items: list[Chat] = load("chat")
    assert len(items) >= 60
    _check_chat(items)
    langs = Counter(c.language for c in items)
    assert langs["en"] >= 40 and langs["ko"] >= 3 and langs["zh"] >= 3
    assert any(len(c.messages) > 2 for c in items) and any(c.system for c in items)
    firsts = Counter(norm(c.messages[0].content) for c in items)
    assert not [q for q, n in firsts.items() if n > 1]


def test_general_chat_items():
    items: list[Chat] = load("general_chat")
    assert len(items) >= 30
    _check_chat(items)
    medical = {norm(c.messages[0].content) for c in load("chat")}
    assert not medical & {norm(c.messages[0].content) for c in items}


# ---------- preference / corpus ----------

def test_preference_items():
    items: list[Preference] = load("preference")
    assert len(items) >= 30
    for p in items:
        assert p.prompt[-1].role == "user" and p.chosen != p.rejected, p.id
        assert p.chosen_score is not None and p.rejected_score is not None and p.chosen_score > p.rejected_score
        assert p.provenance.get("source") == SOURCE
        assert p.provenance.get("rejected_flaw") in {"hallucination", "unsafe"}
    assert set(Counter(p.provenance["rejected_flaw"] for p in items)) == {"hallucination", "unsafe"}


def test_corpus_items():
    lines = (SAMPLE_DIR / "corpus.jsonl").read_text(encoding="utf-8").splitlines()
    objs = [json.loads(line) for line in lines]
    assert len(objs) >= 40
    assert all({"id", "text", "language"} <= set(o) for o in objs)
    items: list[TextItem] = load("corpus")
    assert all(len(t.text) >= (60 if t.language == "zh" else 150) for t in items)  # Han is dense
    assert not [t for t, n in Counter(norm(t.text) for t in items).items() if n > 1]
    assert {t.language for t in items} == {"en", "ko", "zh"}


# ---------- through the data layer ----------

def test_loadable_through_source_specs():
    data = pytest.importorskip("meditune.data")
    load_source = getattr(data, "load_source", None)
    if load_source is None:
        pytest.skip("meditune.data.load_source not available")
    for name in sorted(SAMPLE_FILES):
        got = load_source(f"sample:{name}")
        assert [r.id for r in got] == [r.id for r in load(name)], name
        assert type(got[0]) is RECORD_TYPES[SAMPLE_FILES[name]], name  # auto-detected record type


# ---------- originality ----------

TOKEN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff]|[^\W_]+", re.UNICODE)
# English/Korean benchmarks our MCQ, long-form and safety files could most plausibly echo (word-level 13-grams)
COMPARED = ("medqa_us", "medmcqa", "mmlu_medical", "pubmedqa", "headqa", "kormedmcqa", "medlfqa",
            "liveqa_medical", "medicationqa", "healthsearchqa", "medsafetybench", "dahl")


def _tokens(text: str) -> list[str]:
    return TOKEN.findall(unicodedata.normalize("NFKC", text).lower())


@pytest.mark.shared
def test_no_13gram_shared_with_real_benchmarks(shared_data):
    n = 13
    ours: dict[str, str] = {}
    for name in ("mcq", "longform", "safety", "benign", "chat", "preference", "corpus"):
        for line in (SAMPLE_DIR / f"{name}.jsonl").read_text(encoding="utf-8").splitlines():
            obj = json.loads(line)
            for field in ("question", "options", "rationale", "reference", "request", "safe_response",
                          "messages", "chosen", "rejected", "text"):
                value = obj.get(field)
                texts = value if isinstance(value, list) else [value]
                for t in texts:
                    t = t.get("content") if isinstance(t, dict) else t
                    toks = _tokens(t) if isinstance(t, str) else []
                    for i in range(len(toks) - n + 1):
                        ours[" ".join(toks[i:i + n])] = f"{name}:{obj['id']}"
    starts = {g.split(" ", 1)[0] for g in ours}  # cheap prefilter before building a gram
    hits = []
    for d in COMPARED:
        for p in sorted((shared_data / d).rglob("*")):
            if not p.is_file() or p.suffix.lower() not in {".jsonl", ".json", ".csv", ".txt", ".tsv", ".xml"}:
                continue
            toks = _tokens(p.read_bytes().decode("utf-8", errors="replace"))
            for i in range(len(toks) - n + 1):
                if toks[i] in starts and (g := " ".join(toks[i:i + n])) in ours:
                    hits.append((ours[g], p.name, g))
    assert not hits[:20]
