"""meditune.plain_llama: the plain-torch Llama forward and tokenizer give transformers' numbers and tokens, cover
only what they reproduce, and keep `eval mcqa`'s log-likelihood runs free of transformers."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from meditune.evaluation.loglik import LoglikScorer
from meditune.plain_llama import PlainLlama, PlainTokenizer, plain_support, tokenizer_support
from tests.test_mcqa_loglik_tree import ITEMS, _assert_close, _requests

TEXTS = ["Question: A 45-year-old man has chest pain.\nA. MI\nB. PE\nAnswer:", " 다음 중 인슐린을 분비하는 장기는?",
         "胰岛素由哪个器官分泌？", "  leading and trailing spaces  \t\n\n", "<|im_start|>user\nhi<|im_end|>", ""]


@pytest.fixture(scope="module")
def untied_gqa_dir(tmp_path_factory, tiny_model_dir) -> Path:
    """A second tiny Llama: untied LM head, 6 query heads over 2 key/value heads, 3 layers, another rope base."""
    from transformers import LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny-untied")
    base = json.loads((tiny_model_dir / "config.json").read_text())
    cfg = LlamaConfig(vocab_size=base["vocab_size"], hidden_size=48, intermediate_size=96, num_hidden_layers=3,
                      num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=False, rope_theta=5000.0, rms_norm_eps=1e-5)
    torch.manual_seed(1)
    LlamaForCausalLM(cfg).save_pretrained(out, safe_serialization=True)
    for f in tiny_model_dir.iterdir():
        if f.name.startswith("tokenizer") or f.suffix == ".jinja":
            shutil.copy(f, out / f.name)
    return out


@pytest.fixture(scope="module", params=["tied", "untied"])
def pair(request, tiny_model_dir, untied_gqa_dir):
    """(directory, transformers model, plain model) for each tiny model."""
    from meditune.models import load_model

    path = tiny_model_dir if request.param == "tied" else untied_gqa_dir
    model, _ = load_model(str(path), device="cpu", dtype="float32")
    return path, model, PlainLlama(path)


def test_logits_match_transformers(pair):
    path, hf, plain = pair
    torch.manual_seed(0)
    ids = torch.randint(0, hf.config.vocab_size, (2, 37))
    with torch.inference_mode():
        want = hf(input_ids=ids).logits
        assert torch.allclose(plain(input_ids=ids).logits, want, atol=1e-5, rtol=0)
        assert torch.allclose(plain(input_ids=ids, logits_to_keep=3).logits, want[:, -3:], atol=1e-5, rtol=0)
        # explicit positions (with a gap: rotary attention sees only relative positions) as in transformers
        pos = torch.cat([torch.arange(20), torch.arange(25, 42)]).unsqueeze(0)
        shifted = hf(input_ids=ids[:1], position_ids=pos).logits
        assert torch.allclose(plain(input_ids=ids[:1], position_ids=pos).logits, shifted, atol=1e-5, rtol=0)
        assert not torch.allclose(shifted, want[:1], atol=1e-3)


def test_half_precision_files_load_as_transformers_upcasts_them(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    half = tmp_path / "bf16"
    AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16).save_pretrained(half)
    want = AutoModelForCausalLM.from_pretrained(half, dtype=torch.float32)
    ids = torch.tensor([[11, 12, 13, 14, 15]])
    with torch.inference_mode():
        assert torch.allclose(PlainLlama(half)(input_ids=ids).logits, want(input_ids=ids).logits, atol=1e-5)


def test_a_truncated_weights_file_is_refused(tiny_model_dir, tmp_path):
    cut = shutil.copytree(tiny_model_dir, tmp_path / "m")
    data = (cut / "model.safetensors").read_bytes()
    (cut / "model.safetensors").write_bytes(data[: len(data) - 64])
    with pytest.raises(ValueError, match="truncated"):
        PlainLlama(cut)
    (cut / "model.safetensors").write_bytes(b"\x10" + b"\x00" * 7 + b'{"a": {"dtype": 1}}    ')
    with pytest.raises(ValueError, match="header"):
        PlainLlama(cut)


def test_padding_and_caches_are_refused_not_ignored(tiny_model_dir):
    plain = PlainLlama(tiny_model_dir)
    ids = torch.tensor([[5, 6, 7, 8]])
    plain(input_ids=ids, attention_mask=torch.ones_like(ids))  # no padding: fine
    with pytest.raises(TypeError):
        plain(input_ids=ids, attention_mask=torch.tensor([[1, 1, 1, 0]]))
    with pytest.raises(TypeError):
        plain(input_ids=ids, use_cache=True)
    with pytest.raises(TypeError):
        plain(input_ids=ids, past_key_values=object())


def test_packed_tree_scores_match_transformers(pair, tiny_model_dir):
    _, hf, plain = pair
    tok = PlainTokenizer(tiny_model_dir)
    for choices in ("letters", "full"):
        reqs = _requests(tok, choices, chat=False)
        want = LoglikScorer(hf, tok, batch_size=3).score(reqs)
        scorer = LoglikScorer(plain, tok, batch_size=3)
        assert scorer.resolved_method() == "tree"
        _assert_close(scorer.score(reqs), want, 2e-5)


def test_tokenizer_encodes_as_transformers(default_model_dir):
    from transformers import AutoTokenizer

    hf, plain = AutoTokenizer.from_pretrained(default_model_dir), PlainTokenizer(default_model_dir)
    assert tokenizer_support(default_model_dir) is None
    for text in TEXTS + [it.question for it in ITEMS]:
        for special in (True, False):
            assert plain.encode(text, add_special_tokens=special) == hf.encode(text, add_special_tokens=special)
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        assert getattr(plain, name) == getattr(hf, name)
    assert plain.decode(plain.bos_token_id) == hf.decode(hf.bos_token_id)


def _edited(src: Path, dst: Path, file: str, **changes) -> Path:
    shutil.copytree(src, dst)
    data = json.loads((dst / file).read_text())
    data.update(changes)
    (dst / file).write_text(json.dumps(data))
    return dst


@pytest.mark.parametrize("changes,why", [
    ({"model_type": "mistral", "architectures": ["MistralForCausalLM"]}, "architecture"),
    ({"attention_bias": True}, "biases"),
    ({"hidden_act": "gelu"}, "activation"),
    ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}}, "rotary"),
])
def test_plain_support_refuses_what_it_does_not_reproduce(tiny_model_dir, tmp_path, changes, why):
    assert plain_support(tiny_model_dir) is None
    assert why in plain_support(_edited(tiny_model_dir, tmp_path / "m", "config.json", **changes))


def test_plain_support_needs_safetensors(tiny_model_dir, tmp_path):
    moved = shutil.copytree(tiny_model_dir, tmp_path / "m")
    (moved / "model.safetensors").unlink()
    assert "safetensors" in plain_support(moved)


@pytest.mark.parametrize("changes", [{"add_bos_token": True}, {"tokenizer_class": "LlamaTokenizer"},
                                     {"eos_token": "<|not-in-vocab|>"}])
def test_tokenizer_support_refuses_settings_transformers_applies(default_model_dir, tmp_path, changes):
    assert tokenizer_support(_edited(default_model_dir, tmp_path / "m", "tokenizer_config.json", **changes))


def test_load_scoring_model_picks_plain_only_where_it_reproduces(tiny_model_dir, tmp_path):
    from meditune.models import load_scoring_model

    model, tok = load_scoring_model(str(tiny_model_dir), device="cpu", dtype="float32")
    assert isinstance(model, PlainLlama) and isinstance(tok, PlainTokenizer)
    assert load_scoring_model(str(tiny_model_dir), device="cpu", dtype="float32")[0] is model  # shared
    _, chat_tok = load_scoring_model(str(tiny_model_dir), device="cpu", dtype="float32", chat=True)
    assert not isinstance(chat_tok, PlainTokenizer)  # chat templates are rendered by transformers' tokenizer
    no_pad = _edited(tiny_model_dir, tmp_path / "p", "tokenizer_config.json", pad_token=None)
    _, tok = load_scoring_model(str(no_pad), device="cpu", dtype="float32")
    assert isinstance(tok, PlainTokenizer) and tok.pad_token_id == tok.eos_token_id is not None  # set_pad_token
    half, _ = load_scoring_model(str(tiny_model_dir), device="cpu", dtype="bfloat16")
    assert not isinstance(half, PlainLlama)
    biased = _edited(tiny_model_dir, tmp_path / "m", "config.json", attention_bias=True)
    assert not isinstance(load_scoring_model(str(biased), device="cpu", dtype="float32")[0], PlainLlama)
    # untied in config.json but the file has no separate head: transformers' job, not a crash
    untied = _edited(tiny_model_dir, tmp_path / "u", "config.json", tie_word_embeddings=False)
    with pytest.raises(ValueError, match="lm_head"):
        PlainLlama(untied)
    assert not isinstance(load_scoring_model(str(untied), device="cpu", dtype="float32")[0], PlainLlama)


def test_eval_mcqa_loglik_imports_no_transformers_and_matches_the_transformers_engine(tiny_model_dir, tmp_path):
    data = tmp_path / "items.jsonl"
    data.write_text("".join(json.dumps(it.model_dump()) + "\n" for it in ITEMS))
    code = ("import sys, json; from meditune.evaluation.mcqa import MCQAOptions, evaluate_mcqa; "
            "evaluate_mcqa(MCQAOptions(model={'spec': sys.argv[1], 'device': 'cpu', 'dtype': 'float32'}, "
            "data=sys.argv[2], template='medqa', choices='full', engine=sys.argv[4]), sys.argv[3]); "
            "print(json.dumps('transformers' in sys.modules))")
    imported = {}
    for engine in ("auto", "transformers"):
        out = subprocess.run([sys.executable, "-c", code, str(tiny_model_dir), str(data), str(tmp_path / engine),
                              engine], check=True, capture_output=True, text=True)
        imported[engine] = json.loads(out.stdout.strip().splitlines()[-1])
    assert imported == {"auto": False, "transformers": True}
    runs = [[json.loads(line) for line in (tmp_path / e / "samples.jsonl").open()] for e in ("auto", "transformers")]
    assert [s["pred"] for s in runs[0]] == [s["pred"] for s in runs[1]]
    diffs = [abs(a - b) for s, t in zip(*runs, strict=True) for a, b in zip(s["loglik"], t["loglik"], strict=True)]
    assert max(diffs) < 2e-5
