"""On the real default model: meditune's per-option log-likelihoods equal lm-eval's HFLM on the same requests,
plain and with the chat template (lm-eval's rendering injects the template's default system prompt)."""

from __future__ import annotations

import pytest

from meditune.evaluation.loglik import LoglikRequest, LoglikScorer
from meditune.prompts import PromptBuilder, get_template
from meditune.records import MCQItem

# Written for this test (not benchmark text): MedQA-style vignettes with full-text options.
ITEMS = [
    ("A 62-year-old man has crushing substernal chest pain for 40 minutes and ST elevation in II, III and aVF. "
     "Which artery is most likely occluded?", ["Left anterior descending", "Right coronary", "Left circumflex",
                                              "Left main"], 1),
    ("A 24-year-old woman has heat intolerance, weight loss and a diffuse goitre with a bruit. "
     "What is the most likely diagnosis?", ["Hashimoto thyroiditis", "Graves disease", "Toxic adenoma",
                                            "Subacute thyroiditis"], 1),
    ("Which drug reverses the anticoagulant effect of heparin?", ["Vitamin K", "Protamine sulfate",
                                                                   "Idarucizumab", "Fresh frozen plasma"], 1),
    ("A child has a barking cough and inspiratory stridor after a viral prodrome. What is the most likely "
     "cause?", ["Parainfluenza virus", "Haemophilus influenzae type b", "Foreign body", "Asthma"], 0),
    ("Deficiency of which vitamin causes Wernicke encephalopathy?", ["Vitamin B12", "Folate", "Thiamine",
                                                                      "Niacin"], 2),
]


@pytest.mark.slow
@pytest.mark.parametrize("chat", [False, True])
def test_logliks_match_lm_eval(default_model_dir, chat):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from meditune.models import load_model

    model, tok = load_model(str(default_model_dir), device="cpu", dtype="float32")
    items = [MCQItem(id=f"t{i}", question=q, options=o, answer=a) for i, (q, o, a) in enumerate(ITEMS)]
    builder = PromptBuilder(get_template("medqa"), "full", chat=chat, tokenizer=tok,
                            system_prompt="model-default" if chat else None)
    rendered = [builder.render(it) for it in items]
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=4, device="cpu")
    if chat:  # our rendering is the one lm-eval's --apply_chat_template produces
        for it, r in zip(items, rendered, strict=True):
            user = get_template("medqa").render_question(it)
            assert r.context == lm.apply_chat_template([{"role": "user", "content": user}])
    instances = [Instance("loglikelihood", {}, (r.context, c), idx=j)
                 for r in rendered for j, c in enumerate(r.continuations)]
    ref = [ll for ll, _ in lm.loglikelihood(instances, disable_tqdm=True)]
    ours = [ll for s in LoglikScorer(model, tok, batch_size=3).score(
        [LoglikRequest(r.context, r.continuations) for r in rendered]) for ll in s.loglik]
    assert len(ours) == len(ref) == 20
    assert max(abs(a - b) for a, b in zip(ours, ref, strict=True)) < 1e-4
