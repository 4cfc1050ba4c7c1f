"""One owner per concept: every part that needs a concept goes through its one implementation.

Each test swaps the owner's implementation (monkeypatch) and checks that every former caller follows, so a
caller that kept a private copy fails here.
"""

from __future__ import annotations

import pytest

from meditune.records import MCQItem

PUBMEDQA_LIKE = MCQItem(id="p1", question="Does aspirin prevent stroke?", options=["yes", "no", "maybe"], answer=0,
                        context="BACKGROUND: A trial of 200 patients.\nRESULTS: Fewer strokes.")


# ------------------------------------------------------------------------------------------ MCQ rendering

def mcq_prompts_of_every_part(item: MCQItem) -> dict[str, str]:
    """The MCQ text each part sends for an item: (training, generation, prefs, strategies, evaluation)."""
    from meditune.data.export import to_trl_sft
    from meditune.evaluation.strategies.cot import cot_messages
    from meditune.evaluation.strategies.direct import direct_messages
    from meditune.generation.inputs import record_messages
    from meditune.prefs.questions import question_text
    from meditune.prompts import PromptBuilder, get_template
    from meditune.training.rollouts import prompt_item

    return {
        "training export (chat_turn)": to_trl_sft(item)["messages"][0]["content"],
        "generation requests (chat_turn)": record_messages(item)[0]["content"],
        "rs/idpo rollouts (rollout)": prompt_item(item).messages[0]["content"],
        "prefs collection (prefs_question)": question_text(item),
        "cot strategies (cot)": cot_messages(item)[-1]["content"],
        "letter-only strategy (letter_only)": direct_messages(item)[-1]["content"],
        "evaluation (pubmedqa)": PromptBuilder(get_template("pubmedqa"), "full").render(item).context,
    }


def test_every_part_renders_mcqs_through_meditune_prompts(monkeypatch):
    from meditune import prompts

    monkeypatch.setattr(prompts.Template, "render_question", lambda self, item: f"<{self.name}:{item.id}>")
    for part, text in mcq_prompts_of_every_part(PUBMEDQA_LIKE).items():
        template = part.split("(")[1].rstrip(")")
        assert text == f"<{template}:p1>", part


def test_the_same_item_gives_the_same_prompt_in_training_generation_and_prefs():
    from meditune.prompts import render_mcq

    got = mcq_prompts_of_every_part(PUBMEDQA_LIKE)
    assert got["training export (chat_turn)"] == got["generation requests (chat_turn)"] \
        == render_mcq(PUBMEDQA_LIKE, "chat_turn")
    for part, text in got.items():
        # every part shows the abstract (prefs used to drop item.context: PubMedQA questions lost their abstract)
        assert "A trial of 200 patients." in text, part
        assert "Does aspirin prevent stroke?" in text, part
    assert got["prefs collection (prefs_question)"] == (
        "Context: BACKGROUND: A trial of 200 patients.\nRESULTS: Fewer strokes.\n\n"
        "Does aspirin prevent stroke?\nA. yes\nB. no\nC. maybe")


@pytest.mark.parametrize("template", ["chat_turn", "rollout", "prefs_question", "cot", "letter_only"])
def test_chat_variants_without_context_have_no_context_block(template):
    from meditune.prompts import render_mcq

    item = PUBMEDQA_LIKE.model_copy(update={"context": None})
    text = render_mcq(item, template)
    assert "Context" not in text and text.lstrip().startswith("Does aspirin")


# ------------------------------------------------------------------------------------ answer-letter parsing

def test_every_letter_parser_is_meditune_letters(monkeypatch):
    from meditune import letters
    from meditune.evaluation.strategies.cot import parse_cot_answer
    from meditune.evaluation.strategies.direct import parse_direct_answer
    from meditune.scoring.answer import AnswerScorer
    from meditune.scoring.base import ScoreInput
    from meditune.training.mcq_reasoning import correct_reward, format_score

    text = "«B» Answer: C"
    assert parse_direct_answer(text, 4, "generative") == 2 and parse_cot_answer(text, 4) == 2  # the real ones: C
    # every protocol reduced to one private cue: each former parser now reads B
    cue = letters.Cue("marker", r"«(<CLS>)»")
    monkeypatch.setattr(letters, "PROTOCOLS", {name: (cue,) for name in letters.PROTOCOLS})
    letters._compiled.cache_clear()
    try:
        assert parse_direct_answer(text, 4, "generative") == 1  # generative MCQA (lm_eval cascade)
        assert parse_cot_answer(text, 4) == 1  # CoT strategies
        assert parse_direct_answer(text, 4) == 1  # letter-only strategy
        opts = ["w", "x", "y", "z"]
        score = AnswerScorer().score([ScoreInput("a", "q", text, options=opts, gold=1)])[0]
        assert score.value == 1.0 and score.evidence["how"] == "marker"  # the `answer` scorer
        assert correct_reward([None], [text], gold=[1], n_options=[4]) == [1.0]  # GRPO's correctness reward
        assert format_score("«B»", 4) == 0.5  # GRPO's format reward: an answer, with no reasoning before it
    finally:
        letters._compiled.cache_clear()


# ---------------------------------------------------------------------------------------- direct answering

def test_every_direct_answer_is_asked_and_read_through_the_direct_strategy(monkeypatch, tmp_path, tiny_model_dir):
    """Direct answering has one owner (strategies/direct.py, its VARIANTS): the engine's generative variant
    (`meditune eval mcqa --mode generative`, eval_mcqa stages) and run_strategy's letter_only variant (the
    strategy bench) read answers with their variant's protocol; letter_only asks with its variant's template."""
    from dataclasses import replace

    from meditune import letters
    from meditune.evaluation import generative
    from meditune.evaluation.mcqa import MCQAOptions, evaluate_mcqa
    from meditune.evaluation.strategies import STRATEGIES, direct, run_strategy
    from meditune.generation.base import ScriptedBackend
    from meditune.io import read_jsonl
    from meditune.prompts import COT_INSTRUCTION
    from meditune.records import write_records

    assert STRATEGIES["direct"].run is direct.run_direct  # the engine's `direct`, loglik and generative
    text = "Answer: C «B»"  # the real protocols (lm_eval, letter_or_answer_line) read C
    monkeypatch.setitem(letters.PROTOCOLS, "marker", (letters.Cue("marker", r"«(<CLS>)»"),))
    monkeypatch.setitem(direct.VARIANTS, "generative", replace(direct.VARIANTS["generative"], parse="marker"))
    monkeypatch.setitem(direct.VARIANTS, "letter_only",
                        replace(direct.VARIANTS["letter_only"], parse="marker", template="cot", parse_rule="«X»"))

    def greedy_answers(backend, prompts, *, hooks, **kw):
        outs = [generative.GenOut(text, 1, 1, "stop") for _ in prompts]
        if hooks.wants(list(range(len(prompts)))):
            hooks.finished(list(range(len(prompts))), outs)
        return outs

    monkeypatch.setattr(generative, "generate_texts", greedy_answers)
    items = [MCQItem(id=f"q{i}", question=f"Question {i}?", options=["a", "b", "c"], answer=i % 3) for i in range(3)]
    write_records(tmp_path / "items.jsonl", items)
    try:
        paths = evaluate_mcqa(MCQAOptions(data=str(tmp_path / "items.jsonl"), device="cpu", mode="generative"),
                              tmp_path / "engine", model=str(tiny_model_dir))
        assert [s["pred"] for s in read_jsonl(paths["samples"])] == [1, 1, 1]
        asked = []

        def answer(req, i):
            asked.append(req.messages[-1]["content"])
            return text

        res = run_strategy("direct", items, ScriptedBackend(answer))
        assert [r["pred"] for r in res.predictions] == [1, 1, 1]
        assert len(asked) == 3 and all(COT_INSTRUCTION.format(letters="A, B, C") in a for a in asked)
        assert res.metrics["protocol"]["parse"] == "«X»" and res.metrics["protocol"]["variant"] == "letter_only"
    finally:
        letters._compiled.cache_clear()


def test_direct_prompts_and_parsers_are_named_only_by_the_direct_strategy():
    from pathlib import Path

    import meditune

    src = Path(meditune.__file__).parent
    for name in ('"letter_or_answer_line"', '"letter_only"', '"lm_eval"'):
        users = [str(p.relative_to(src)) for p in src.rglob("*.py") if name in p.read_text(encoding="utf-8")
                 and p.name not in ("letters.py", "prompts.py")]
        assert users == ["evaluation/strategies/direct.py"], (name, users)


# ------------------------------------------------------------------------------------------ reward scorer

def test_every_reward_model_user_gets_the_one_reward_scorer(monkeypatch):
    from meditune.scoring import reward
    from meditune.scoring.registry import RewardConfig, build_scorer
    from meditune.training import rm
    from meditune.training.rollouts import PromptItem, RolloutOptions, make_score_fn

    monkeypatch.setattr(reward.RewardScorer, "_rewards",
                        lambda self, prompts, responses: [(float(len(r)), 3) for r in responses])
    assert isinstance(build_scorer(RewardConfig(model="rm-dir")), reward.RewardScorer)  # prefs, `meditune score`
    score = make_score_fn(RolloutOptions(reward_model="rm-dir"), None, "cpu")  # rs / idpo rollouts
    assert score([PromptItem("p", [{"role": "user", "content": "q"}], "q")], ["four"]) == [4.0]
    assert rm.RewardScorer is reward.RewardScorer  # the rm stage's held-out pairwise accuracy


# ------------------------------------------------------------------------------------------- DAHL factory

def test_hallucination_eval_builds_its_dahl_scorer_through_the_registry(monkeypatch, tmp_path):
    from meditune.evaluation.hallucination import HallucinationOptions, evaluate_hallucination
    from meditune.generation.base import ScriptedBackend
    from meditune.io import read_json
    from meditune.scoring import registry
    from meditune.scoring.base import Score

    seen = []

    class Fixed:
        name, value_range = "dahl", (0.0, 1.0)

        def score(self, items):
            return [Score(0.25) for _ in items]

    def fake_dahl(cfg, backends):
        seen.append(cfg)
        return Fixed()

    monkeypatch.setitem(registry.SCORERS, "dahl", fake_dahl)
    opts = HallucinationOptions(data="sample:longform", limit=3, coverage="off")
    paths = evaluate_hallucination(opts, tmp_path, backend=ScriptedBackend(lambda r, i: "An answer."))
    res = read_json(paths["results"])
    assert res["results"]["hallucination"]["dahl,none"] == pytest.approx(0.25)
    assert seen[0].splitter == "sentences" and seen[0].verifier == "embedding"


# ---------------------------------------------------------------------------------------------- embedder

def test_every_embedding_goes_through_meditune_embeddings(monkeypatch):
    import numpy as np

    from meditune import embeddings
    from meditune.evaluation.strategies.knn import KNNIndex
    from meditune.scoring.base import ScoreInput
    from meditune.scoring.dahl import EmbeddingVerifier

    loads = []

    class Fake:
        def encode(self, texts, **kw):
            return np.asarray([[1.0, 0.0] if "heart" in t else [0.0, 1.0] for t in texts])

    def fake_model(path, device):
        loads.append(path)
        return Fake()

    monkeypatch.setattr(embeddings, "_sentence_model", fake_model)
    monkeypatch.setattr(embeddings, "default_embedding_model", lambda: ".")
    verdicts = EmbeddingVerifier(0.9).verify([(ScoreInput("a", "q", "x", references=["the heart pumps"]),
                                               "a heart fact")])  # DAHL's embedding verifier and coverage
    assert verdicts[0][0] == "true"
    index = KNNIndex.build([MCQItem(id="t", question="heart?", options=["a", "b"], answer=0)],
                           embeddings.Embedder())  # kNN few-shot retrieval
    # each embedder fetches its model once and keeps it: one for the verifier (refs + facts), one for kNN
    assert index.embeddings.tolist() == [[1.0, 0.0]] and len(loads) == 2


# ------------------------------------------------------------------------------- results and metric CIs

def test_every_results_file_summarises_metrics_with_metric_summary(monkeypatch):
    from meditune.evaluation import open_common, results

    calls = []
    real = results.metric_summary

    def spy(values, seed=0, **kw):
        calls.append(kw.get("binary", False))
        return real(values, seed, **kw)

    monkeypatch.setattr(results, "metric_summary", spy)
    monkeypatch.setattr(open_common, "metric_summary", spy)
    results.aggregate([{"metrics": {"acc": 1.0}}, {"metrics": {"acc": 0.0}}])  # MCQA results.json
    open_common.by_group([{"metrics": {"x": 1.0}, "g": "a"}], "x", lambda s: s["g"], binary=True)  # open evals
    row = {"correct": True, "generations": 1, "failed": 0, "retries": 0, "completion_tokens": 1, "prompt_tokens": 1,
           "wall_s": 0.1, "pred": 0, "tie": False, "agreement": 1.0}
    results.strategy_summary([row], strategy="cot", model="m", protocol={}, bank=None, setup_wall_s=0.0)
    assert calls == [False, True, False, True]


def test_every_mcqa_results_file_is_built_by_build_results(monkeypatch, tmp_path, tiny_model_dir):
    """The engine (direct and the strategies through it) and run_strategy write results.json through
    results.build_results; run_strategy's summary comes from results.strategy_summary and keeps its keys."""
    from meditune.evaluation import results
    from meditune.evaluation.mcqa import MCQAOptions, evaluate_mcqa
    from meditune.evaluation.strategies import run_strategy
    from meditune.generation.base import ScriptedBackend
    from meditune.io import read_json
    from meditune.records import write_records

    built, summarised = [], []
    real_build, real_summary = results.build_results, results.strategy_summary

    def build(task, samples, **kw):
        built.append(kw["protocol"].get("strategy"))
        return {**real_build(task, samples, **kw), "marker": 1}

    def summary(rows, **kw):
        summarised.append(kw["strategy"])
        return real_summary(rows, **kw)

    for module in ("meditune.evaluation.results", "meditune.evaluation.mcqa"):
        monkeypatch.setattr(f"{module}.build_results", build)
    for module in ("meditune.evaluation.results", "meditune.evaluation.strategies.runner"):
        monkeypatch.setattr(f"{module}.strategy_summary", summary)

    items = [MCQItem(id=f"q{i}", question=f"Question {i}?", options=["a", "b", "c"], answer=i % 3) for i in range(3)]
    write_records(tmp_path / "items.jsonl", items)
    evaluate_mcqa(MCQAOptions(data=str(tmp_path / "items.jsonl"), device="cpu"), tmp_path / "direct",
                  model=str(tiny_model_dir))  # meditune eval mcqa, eval_mcqa stages
    evaluate_mcqa(MCQAOptions(data=str(tmp_path / "items.jsonl"), device="cpu", strategy="cot",
                              strategy_options={"max_new_tokens": 2, "max_retries": 0}), tmp_path / "cot",
                  model=str(tiny_model_dir))  # a strategy through the engine
    res = run_strategy("direct", items, ScriptedBackend(lambda r, i: "B"), {}, tmp_path / "runner")  # benches
    assert built == ["direct", "cot", "direct"] and summarised == ["cot", "direct"]
    for name in ("direct", "cot", "runner"):
        assert read_json(tmp_path / name / "results.json")["marker"] == 1, name
    on_disk = read_json(tmp_path / "runner" / "results.json")
    assert {k: on_disk[k] for k in res.metrics} == res.metrics  # every key run_strategy's readers read
    assert on_disk["results"]["mcqa"]["acc,none"] == res.accuracy
    assert on_disk["meditune"]["strategy"] == {k: res.metrics[k] for k in results.STRATEGY_SECTION}
    cot = read_json(tmp_path / "cot" / "results.json")["meditune"]["strategy"]
    assert set(cot) == set(results.STRATEGY_SECTION)  # the same section, through the engine


# --------------------------------------------------------------------------------------- single definitions

@pytest.mark.parametrize("definition", [
    "def truncate_at_stop(", "def wilson_ci(", "def bootstrap_ci(", "def metric_summary(", "class RewardScorer",
    "class Embedder", "def render_mcq(", "def explain_choice(", "def set_pad_token(", "def package_versions(",
])
def test_one_definition_in_the_package(definition):
    from pathlib import Path

    import meditune

    src = Path(meditune.__file__).parent
    owners = [p.relative_to(src) for p in src.rglob("*.py") if definition in p.read_text(encoding="utf-8")]
    assert len(owners) == 1, owners


def test_pad_tokens_are_set_only_by_models():
    from pathlib import Path

    import meditune

    src = Path(meditune.__file__).parent
    setters = [str(p.relative_to(src)) for p in src.rglob("*.py")
               if ".pad_token = " in p.read_text(encoding="utf-8") or "pad_token_id = tok" in p.read_text()]
    assert setters == ["models.py"]


# ------------------------------------------------------------------------------------ resumable shards

def test_every_resumable_loop_appends_through_meditune_shards(monkeypatch, tmp_path, tiny_model_dir):
    from meditune import shards
    from meditune.evaluation.mcqa import MCQAOptions, evaluate_mcqa
    from meditune.evaluation.open_common import ResumableBackend
    from meditune.evaluation.strategies import run_strategy
    from meditune.evaluation.strategies.cot_bank import build_cot_bank
    from meditune.generation.base import GenerationRequest, ScriptedBackend
    from meditune.generation.cache import GenerationCache
    from meditune.generation.job import run_job
    from meditune.prefs.build import score_answers
    from meditune.prefs.collect import CollectSettings, GeneratorConfig, collect
    from meditune.records import write_records
    from meditune.scoring.answer import AnswerScorer

    written: list[str] = []
    for cls in (shards.Shard, shards.ShardDir):
        real = cls.add

        def add(self, rows, *args, _real=real, **kw):
            rows = list(rows)
            written.append(f"{type(self).__name__}:{self.path.parent.name}/{self.path.name}")
            return _real(self, rows, *args, **kw)

        monkeypatch.setattr(cls, "add", add)

    items = [MCQItem(id=f"q{i}", question=f"Question {i}?", options=["a", "b", "c"], answer=i % 3) for i in range(3)]
    answer_b = ScriptedBackend(lambda req, i: "Answer: B")
    write_records(tmp_path / "items.jsonl", items)
    evaluate_mcqa(MCQAOptions(data=str(tmp_path / "items.jsonl"), device="cpu"), tmp_path / "mcqa",
                  model=str(tiny_model_dir))  # the direct strategy
    run_strategy("cot", items, answer_b, {}, tmp_path / "cot", save=False)  # strategies
    build_cot_bank(items, answer_b, tmp_path / "bank" / "bank.jsonl", model="m")  # the CoT bank
    reqs = [GenerationRequest(it.id, [{"role": "user", "content": it.question}]) for it in items]
    run_job(reqs, answer_b, tmp_path / "job", model={"m": 1}, cache=GenerationCache(tmp_path / "cache"),
            progress=False)  # generation jobs and the generation cache
    ResumableBackend(lambda: answer_b, tmp_path / "judge", {"m": 2}, "judge").generate(reqs)  # open evals
    answers = collect(items, [GeneratorConfig(name="g")], CollectSettings(), tmp_path / "answers",
                      lambda cfg: answer_b)  # preference answers
    score_answers({it.id: it for it in items}, answers["g"], AnswerScorer(), tmp_path / "scores.jsonl")
    from meditune.cli import main

    (tmp_path / "cmd").mkdir()
    (tmp_path / "cmd" / "a.jsonl").write_text('{"id": "1", "question": "q", "answer": "Answer: A", '
                                              '"options": ["x", "y"], "gold": 0}\n')
    assert main(["score", str(tmp_path / "cmd" / "a.jsonl"), "--scorer", "answer"]) == 0  # `meditune score`
    assert written.pop() == "Shard:cmd/a.scores.jsonl"
    assert written == ["Shard:mcqa/samples.partial.jsonl", f"Shard:cot/{written[1].split('/')[1]}",
                       "Shard:bank/bank.jsonl", "ShardDir:shards/shard-00000.jsonl", "ShardDir:cache/"
                       + written[4].split("/")[1], "ShardDir:shards/shard-00000.jsonl", "Shard:answers/g.jsonl",
                       f"Shard:{tmp_path.name}/scores.jsonl"]
    assert written[1].startswith("Shard:cot/.strategy-cot-") and written[4].startswith("ShardDir:cache/entries-")


# ----------------------------------------------------------------------------------- several ranks

def test_every_split_loop_takes_its_share_through_meditune_distributed(monkeypatch, tmp_path, tiny_model_dir):
    """As rank 1 of 2 (collectives faked in one process: rank 0 contributes nothing), every loop that splits its
    work does only the units meditune.distributed gives rank 1: the odd ones."""
    from meditune import distributed
    from meditune.evaluation import loglik_tree
    from meditune.evaluation.mcqa import MCQAOptions, evaluate_mcqa
    from meditune.evaluation.strategies import run_strategy
    from meditune.evaluation.strategies.cot_bank import build_cot_bank
    from meditune.generation.base import GenerationRequest, ScriptedBackend
    from meditune.generation.job import run_job
    from meditune.model_ref import ModelRef
    from meditune.prefs.build import score_answers
    from meditune.prefs.collect import CollectSettings, GeneratorConfig, collect
    from meditune.records import write_records
    from meditune.scoring.answer import AnswerScorer
    from meditune.training.rollouts import PromptItem, RolloutOptions, rollouts

    monkeypatch.setattr(distributed, "env_ranks", lambda: distributed.Ranks(rank=1, world=2))
    monkeypatch.setattr(distributed, "setup", lambda device="auto": None)
    monkeypatch.setattr(distributed.Ranks, "broadcast", lambda self, obj: obj)
    monkeypatch.setattr(distributed.Ranks, "all_gather", lambda self, obj: [[] if isinstance(obj, list) else obj, obj])
    monkeypatch.setattr(distributed.Ranks, "barrier", lambda self: None)

    items = [MCQItem(id=f"q{i}", question=f"Question {i}?", options=["a", "b", "c"], answer=i % 3) for i in range(4)]
    odd = ["q1", "q3"]

    def asked(backend: ScriptedBackend) -> list[str]:
        return [r.id.split("#")[0].removeprefix("bank-") for r in backend.calls]

    b = ScriptedBackend(lambda req, i: "Answer: B")
    with pytest.raises(RuntimeError, match="no result after the merge"):  # rank 0's half is missing here
        run_job([GenerationRequest(it.id, [{"role": "user", "content": it.question}]) for it in items], b,
                tmp_path / "job", model={"m": 1}, unit_size=1, progress=False)
    assert asked(b) == odd
    b = ScriptedBackend(lambda req, i: "Answer: B")
    with pytest.raises(KeyError):
        run_strategy("cot", items, b, {"chunk_size": 1}, tmp_path / "cot", save=False)
    assert asked(b) == odd
    b = ScriptedBackend(lambda req, i: "Answer: B")
    with pytest.raises(KeyError):
        build_cot_bank(items, b, tmp_path / "bank.jsonl", model="m", chunk_size=1)
    assert asked(b) == odd
    b = ScriptedBackend(lambda req, i: "Answer: B")
    answers = collect(items, [GeneratorConfig(name="g")], CollectSettings(chunk_size=1), tmp_path / "answers",
                      lambda cfg: b)
    assert asked(b) == odd and [a["question_id"] for a in answers["g"]] == odd
    all_answers = [{**answers["g"][0], "id": f"{it.id}|g|0", "question_id": it.id} for it in items]
    scores = score_answers({it.id: it for it in items}, all_answers, AnswerScorer(), tmp_path / "scores.jsonl", 1)
    assert sorted(scores) == ["q1|g|0", "q3|g|0"]
    b = ScriptedBackend(lambda req, i: "Answer: B")
    prompts = [PromptItem(it.id, [{"role": "user", "content": it.question}], it.question) for it in items]
    rows = rollouts(tmp_path / "round", ModelRef(spec="m", device="cpu"), prompts, 1, RolloutOptions(),
                    lambda its, rs: [1.0] * len(rs), seed=0, system_prompt=None, backend=b)
    assert asked(b) == odd and [r["id"] for r in rows] == odd and not (tmp_path / "round" / "rollouts.jsonl").exists()
    forwards: list[int] = []
    real = loglik_tree.score_tree_batch
    monkeypatch.setattr(loglik_tree, "score_tree_batch", lambda m, rs: (forwards.append(len(rs)), real(m, rs))[1])
    write_records(tmp_path / "items.jsonl", items)
    with pytest.raises(KeyError):
        evaluate_mcqa(MCQAOptions(data=str(tmp_path / "items.jsonl"), device="cpu", batch_size=1), tmp_path / "mcqa",
                      model=str(tiny_model_dir))
    assert forwards == [1, 1]  # 2 of the 4 one-question batches


# -------------------------------------------------------------------------------- recipe-wide defaults

def test_every_stage_takes_recipe_defaults_through_one_function(monkeypatch):
    from meditune import stages
    from meditune.evaluation.mcqa import MCQAOptions
    from meditune.evaluation.stage import effective_options
    from meditune.generation.stage import backend_config_of
    from meditune.recipe import parse_recipe
    from meditune.training.common import settings

    recipe = parse_recipe({"name": "r", "model": "org/m", "seed": 3, "device": "cpu", "system_prompt": "S",
                           "stages": [
                               {"name": "d", "type": "data", "source": "sample:mcq"},
                               {"name": "g", "type": "generate", "data": "x.jsonl", "system_prompt": ""},
                               {"name": "p", "type": "prefs", "questions": "q", "generators": [{"name": "a"}]},
                               {"name": "t", "type": "sft", "data": "x.jsonl", "seed": 9},
                               {"name": "e", "type": "eval_mcqa", "data": "x.jsonl", "device": "cuda"}]})
    applied = {s.name: stages.apply_recipe_defaults(s, recipe) for s in recipe.stages}
    assert applied["d"].seed == 3
    assert applied["p"].generators[0].model.spec == "org/m" and applied["p"].generators[0].system_prompt is None
    assert (applied["t"].model.spec, applied["t"].seed, applied["t"].system_prompt) == ("org/m", 9, "S")
    assert (applied["e"].model.spec, applied["e"].model.device, applied["e"].seed) == ("org/m", "cuda", 3)
    assert applied["g"].system_prompt is None  # "" = explicitly none

    calls = []
    real = stages.apply_recipe_defaults

    def spy(config, recipe):
        calls.append(config.type)
        return real(config, recipe)

    for module in ("meditune.stages", "meditune.generation.stage", "meditune.training.common",
                   "meditune.evaluation.stage"):
        monkeypatch.setattr(f"{module}.apply_recipe_defaults", spy)
    backend_config_of(recipe.stages[1], recipe)
    settings(recipe.stages[3], recipe)
    effective_options(recipe.stages[4], MCQAOptions, recipe)
    assert calls == ["generate", "sft", "eval_mcqa"]


# Every config that loads a model, and the reference it holds (issue 17: they used to re-declare the flat fields).
MODEL_REF_OWNERS = [
    "meditune.generation.base.BackendConfig", "meditune.generation.stage.GenerateStageConfig",
    "meditune.evaluation.mcqa.MCQAOptions", "meditune.evaluation.open_common.OpenEvalOptions",
    "meditune.training.common.TrainOptions", "meditune.training.rationales.RationalesStageConfig",
    "meditune.scoring.registry.RewardConfig", "meditune.recipe.Recipe",
]


def _meditune_configs() -> list[type]:
    """Every pydantic class of the package (stage modules, scorers, prefs, recipes imported)."""
    from pydantic import BaseModel

    import meditune.prefs.build  # noqa: F401
    import meditune.recipe  # noqa: F401
    from meditune.stages import registry

    registry()
    found, todo = set(), [BaseModel]
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub not in found:
                found.add(sub)
                todo.append(sub)
    return sorted((c for c in found if c.__module__.startswith("meditune")), key=lambda c: c.__qualname__)


def test_every_config_declares_its_model_settings_only_through_model_ref():
    import importlib

    from meditune.model_ref import ModelRef, ModelRefOwner

    configs = _meditune_configs()
    assert len(configs) > 40
    for cls in configs:
        fields = cls.model_fields
        if cls is ModelRef:
            continue
        # dtype of a merge is what tensors are cast to while merging, not how a model is loaded
        loose = {"device", "trust_remote_code"} | ({"dtype"} if cls.__name__ not in ("MergeSpec",
                                                                                     "MergeStageConfig") else set())
        assert not loose & set(fields), (cls, loose & set(fields))
        refs = [n for n, f in fields.items() if f.annotation is ModelRef]
        assert refs in ([], ["model"]) and (not refs or issubclass(cls, ModelRefOwner)), cls
    for path in MODEL_REF_OWNERS:
        module, _, name = path.rpartition(".")
        cls = getattr(importlib.import_module(module), name)
        assert cls.model_fields["model"].annotation is ModelRef, path
        # one validation: a device no config accepts is refused by each through the reference
        with pytest.raises(ValueError, match="unknown device 'gpu'"):
            cls.model_validate({"name": "x", "type": "t", "data": "d", "model": "m", "device": "gpu"})


def test_a_recipe_batch_size_reaches_the_inference_stages_that_set_none():
    from meditune import stages
    from meditune.evaluation.mcqa import MCQAOptions
    from meditune.evaluation.stage import effective_options
    from meditune.generation.stage import backend_config_of
    from meditune.recipe import parse_recipe

    def recipe(**top):
        return parse_recipe({"name": "r", **top, "stages": [
            {"name": "g", "type": "generate", "data": "x.jsonl"},
            {"name": "g8", "type": "generate", "data": "x.jsonl", "batch_size": 8},
            {"name": "e", "type": "eval_mcqa", "data": "x.jsonl"},
            {"name": "o", "type": "eval_open", "data": "x.jsonl"},
            {"name": "why", "type": "rationales", "data": "x.jsonl"},
            {"name": "p", "type": "prefs", "questions": "q", "generators": [{"name": "a"}, {"name": "b",
                                                                            "batch_size": 2}]},
            {"name": "t", "type": "sft", "data": "x.jsonl"},
            {"name": "rs", "type": "rs", "data": "x.jsonl"}]})

    r = recipe(batch_size=3)
    applied = {s.name: stages.apply_recipe_defaults(s, r) for s in r.stages}
    assert [applied[n].batch_size for n in ("g", "g8", "e", "o", "why")] == [3, 8, 3, 3, 3]
    assert [g.batch_size for g in applied["p"].generators] == [3, 2]  # the prefs stage's generators
    # training batches are the optimizer's: a recipe batch size does not reach them
    assert (applied["t"].batch_size, applied["rs"].batch_size, applied["rs"].gen_batch_size) == (4, 4, 16)
    assert backend_config_of(r.stages[0], r).batch_size == 3  # what the generate stage runs with
    assert effective_options(r.stages[2], MCQAOptions, r).batch_size == 3  # what eval_mcqa runs with
    plain = recipe()  # no recipe batch size: every stage keeps its own default
    applied = {s.name: stages.apply_recipe_defaults(s, plain) for s in plain.stages}
    assert [applied[n].batch_size for n in ("g", "g8", "e", "o", "why", "t")] == [16, 8, 16, 16, 16, 4]


@pytest.mark.parametrize("bad", [0, -2, True, 2.5, "8", [4]])
def test_a_recipe_batch_size_must_be_a_positive_whole_number(bad):
    from meditune.errors import ConfigError
    from meditune.recipe import parse_recipe

    with pytest.raises(ConfigError, match=r"'batch_size': must be a positive whole number"):
        parse_recipe({"name": "r", "batch_size": bad, "stages": []})


# ------------------------------------------------------------------------- command-line options from configs

def _command_options(*words: str) -> set[str]:
    import typer

    from meditune.cli import app

    group = typer.main.get_command(app)
    for w in words:
        group = group.commands[w]
    return {opt for p in group.params for opt in [*p.opts, *p.secondary_opts]} | {p.name for p in group.params}


@pytest.mark.parametrize("words,config", [
    (("eval", "mcqa"), "meditune.evaluation.mcqa.MCQAOptions"),
    (("eval", "open"), "meditune.evaluation.openqa.OpenQAOptions"),
    (("eval", "safety"), "meditune.evaluation.safety.SafetyOptions"),
    (("eval", "hallucination"), "meditune.evaluation.hallucination.HallucinationOptions"),
    (("generate",), "meditune.generation.stage.GenerateStageConfig"),
])
def test_commands_offer_every_scalar_option_of_their_config(words, config):
    import importlib

    from meditune.commands.options import cli_type
    from meditune.model_ref import ModelRef

    module, _, name = config.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    offered = _command_options(*words)
    for field, info in cls.model_fields.items():
        if info.annotation is ModelRef:  # the model reference: its flat keys, as users have always written them
            assert {"--model", "--device", "--dtype", "--trust-remote-code"} <= offered, words
            continue
        if field in ("name", "type") or cli_type(info.annotation)[0] is None:
            continue
        assert f"--{field.replace('_', '-')}" in offered or field in offered, (words, field)
    assert {"--config", "--set"} <= offered


def test_every_command_parses_overrides_with_the_one_parser(monkeypatch, tmp_path, capsys):
    from meditune import recipe
    from meditune.cli import main

    seen = []
    real = recipe.apply_overrides

    def spy(data, overrides, **kw):
        seen.extend(overrides)
        return real(data, overrides, **kw)

    monkeypatch.setattr(recipe, "apply_overrides", spy)
    q = tmp_path / "q.jsonl"
    q.write_text('{"id": "a", "question": "Q?"}\n')
    assert main(["train", "dpo", "--data", "x.jsonl", "--out", str(tmp_path / "t"), "--set", "betaa=1"]) == 2
    assert main(["prefs", "build", "-q", str(q), "-g", "x", "--set", "pairing.polcy=1"]) == 2
    assert main(["eval", "bias", "--out", str(tmp_path / "b"), "--set", "max_new_tokens=0"]) == 2
    assert main(["eval", "mcqa", "x.jsonl", "--strategy-option", "k=1", "--set", "shots=-1"]) == 2
    assert main(["generate", "x.jsonl", "-o", str(tmp_path / "g"), "--set", "n=0"]) == 2
    assert main(["run", "quickstart", "--dry-run", "--set", "eval_before.shots=-1"]) == 2
    assert seen == ["betaa=1", "pairing.polcy=1", "max_new_tokens=0", "k=1", "shots=-1", "n=0",
                    "eval_before.shots=-1"]
    err = capsys.readouterr().err
    assert "did you mean 'beta'" in err and "--max-new-tokens" in err and "--n:" in err


def test_no_command_reaches_into_private_recipe_helpers():
    from pathlib import Path

    import meditune.commands

    for path in Path(meditune.commands.__file__).parent.glob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert "_format_error" not in text and "yaml.safe_load" not in text, path.name


def test_a_strategy_results_file_states_one_confidence_for_its_intervals():
    """run_strategy's results.json holds the summary's accuracy CI and build_results' per-item acc CI side by side;
    both, and the stated confidence, follow the strategy's `confidence` (not a fixed 95 %)."""
    from meditune.evaluation import results

    rows = [{"id": str(i), "correct": i % 3 == 0, "generations": 1, "failed": 0, "retries": 0,
             "completion_tokens": 1, "prompt_tokens": 1, "wall_s": 0.1, "pred": 0, "tie": False, "agreement": 1.0}
            for i in range(30)]
    intervals = {}
    for confidence in (0.8, 0.95):
        summary = results.strategy_summary(rows, strategy="cot", model="m", protocol={}, bank=None,
                                           setup_wall_s=0.0, confidence=confidence)
        out, _ = results.strategy_results("t", rows, summary, run_config={})
        acc = out["results"]["t"]
        assert out["meditune"]["ci"]["confidence"] == confidence == out["ci"]["confidence"]
        assert (acc["acc_ci_low,none"], acc["acc_ci_high,none"]) == (out["ci_low"], out["ci_high"])
        intervals[confidence] = out["ci_high"] - out["ci_low"]
    assert intervals[0.8] < intervals[0.95]
