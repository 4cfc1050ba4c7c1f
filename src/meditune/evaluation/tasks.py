"""Named multiple-choice tasks in lm-eval's spirit: a task binds a data loader, a prompt template and the
metrics lm-eval reports for it, so `--task medqa_4options` (or `task: medqa_4options` in an eval_mcqa stage)
gets lm-eval's protocol. A task name that is not registered stays a plain label in results.json."""

from __future__ import annotations

from dataclasses import dataclass

# The medical subjects of MMLU (MultiMedQA / Med42 / Meditron) and of CMMLU.
MMLU_MEDICAL = ("anatomy", "clinical_knowledge", "college_biology", "college_medicine", "medical_genetics",
                "professional_medicine")
CMMLU_MEDICAL = ("anatomy", "clinical_knowledge", "college_medical_statistics", "college_medicine", "genetics",
                 "high_school_biology", "nutrition", "professional_medicine", "traditional_chinese_medicine",
                 "virology")


@dataclass(frozen=True)
class Task:
    """A benchmark = how its files are read (a meditune.data loader), how a question is written (a
    meditune.prompts template: mode and choices come with it) and what is reported (lm-eval's metric_list)."""

    name: str  # lm-eval's task (or group) name where one exists
    loader: str  # the loader a plain path is read with (a `loader:path` or `sample:` spec is used as given)
    template: str
    metrics: tuple[str, ...]
    subjects: tuple[str, ...] = ()  # keep only items of these subjects (empty: all)
    lm_eval: str = ""  # the lm-eval task(s) this reproduces


TASKS: dict[str, Task] = {t.name: t for t in [
    Task("medqa_4options", "medqa", "medqa", ("acc", "acc_norm"), lm_eval="medqa_4options"),
    Task("medmcqa", "medmcqa", "medmcqa", ("acc", "acc_norm"), lm_eval="medmcqa"),
    Task("pubmedqa", "pubmedqa", "pubmedqa", ("acc",), lm_eval="pubmedqa"),
    Task("mmlu_medical", "mmlu", "mmlu", ("acc", "acc_norm"), subjects=MMLU_MEDICAL,
         lm_eval="mmlu_anatomy, mmlu_clinical_knowledge, ... (6 medical subjects)"),
    Task("kormedmcqa", "kormedmcqa", "kormedmcqa", ("exact_match",),
         lm_eval="kormedmcqa (doctor, nurse, pharm, dentist)"),
    Task("cmmlu_medical", "cmmlu", "cmmlu", ("acc", "acc_norm"), subjects=CMMLU_MEDICAL,
         lm_eval="cmmlu_anatomy, cmmlu_clinical_knowledge, ... (10 medical subjects)"),
    Task("headqa", "headqa", "continuation", ("acc", "acc_norm"), lm_eval="headqa_en, headqa_es"),
]}


def get_task(name: str | None) -> Task | None:
    """The registered task of that name, or None (the name is then only a label)."""
    return TASKS.get(name) if name else None
