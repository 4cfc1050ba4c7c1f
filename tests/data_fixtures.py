"""Small files in each benchmark layout, written by the tests (invented text, not copied from any dataset)."""

from __future__ import annotations

import csv
import json
from pathlib import Path


def jsonl(path: Path, rows: list[dict], encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding=encoding)
    return path


def csv_file(path: Path, header: list[str] | None, rows: list[list], encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding=encoding) as f:
        w = csv.writer(f)
        if header is not None:
            w.writerow(header)
        w.writerows(rows)
    return path


def medqa_row(q: str = "Which vitamin deficiency causes scurvy?", n: int = 5, answer: str = "C") -> dict:
    opts = {"A": "Vitamin A", "B": "Vitamin D", "C": "Vitamin C", "D": "Vitamin K", "E": "Vitamin B12"}
    opts = dict(list(opts.items())[:n])
    return {"question": q, "answer": opts[answer], "options": opts, "meta_info": "step1", "answer_idx": answer}


def medmcqa_row(i: int = 0, cop: int = 2) -> dict:
    return {"question": f"Which nerve supplies the deltoid muscle? ({i})", "exp": "It is the axillary nerve.",
            "cop": cop, "opa": "Radial", "opb": "Axillary", "opc": "Median", "opd": "Ulnar",
            "subject_name": "Anatomy", "topic_name": None, "id": f"m{i}", "choice_type": "single"}


def pubmedqa_obj() -> dict:
    return {"111": {"QUESTION": "Does daily walking lower resting blood pressure?",
                    "CONTEXTS": ["We followed 40 adults for a year.", "Pressure fell by 5 mmHg."],
                    "LABELS": ["METHODS", "RESULTS"], "MESHES": ["Walking"], "YEAR": "2001",
                    "final_decision": "yes", "LONG_ANSWER": "Walking lowered pressure modestly."},
            "222": {"QUESTION": "Is coffee a cause of appendicitis?", "CONTEXTS": ["No association was seen."],
                    "final_decision": "no"}}


KOR_HEADER = ["", "subject", "year", "period", "q_number", "question", "A", "B", "C", "D", "E", "answer", "cot"]


def kor_row(i: int, answer: str = "B", cot: str = "") -> list:
    return [i, "doctor", "2020", "1", str(i + 1), f"가상 질문 {i}: 가장 적절한 처치는?", "관찰", "수액", "항생제",
            "수술", "전원", answer, cot]


def headqa_obj(n_options: int = 4, image: str = "") -> dict:
    answers = [{"aid": i + 1, "atext": f"Answer {i + 1}"} for i in range(n_options)]
    return {"version": "1.0", "language": "en", "exams": {"Cuaderno_2099_1_M": {
        "name": "Cuaderno_2099_1_M", "category": "medicine", "year": "2099",
        "data": [{"qid": "1", "qtext": "Which organ produces insulin?", "ra": "2", "answers": answers,
                  "image": image},
                 {"qid": "2", "qtext": "Which organ filters blood?", "ra": "1", "answers": answers, "image": ""}]}}}


def medlfqa_row(i: int = 0) -> dict:
    return {"Question": f"What helps a tension headache? ({i})", "Free_form_answer": "Rest and simple analgesics.",
            "Must_have": ["Simple analgesics can relieve tension headaches."],
            "Nice_to_have": ["Regular sleep can reduce how often they occur."]}


LIVEQA_TEST = """<?xml version="1.0" encoding="UTF-8"?>
<LiveQA2017-Medical-Test-Set-Full>
  <NLM-QUESTION qid="TQ1">
    <Original-Question qfile="1.txt"><SUBJECT>knee pain</SUBJECT><MESSAGE>my knee hurts when I climb</MESSAGE>
    </Original-Question>
    <NIST-PARAPHRASE>What causes knee pain when climbing stairs?</NIST-PARAPHRASE>
    <ANNOTATIONS><FOCUS fid="F1" fcategory="Problem">knee pain</FOCUS><TYPE tid="T1">CAUSE</TYPE></ANNOTATIONS>
    <ReferenceAnswers>
      <ReferenceAnswer aid="TQ1A1"><ANSWER>Often the kneecap joint.</ANSWER><AnswerURL>u</AnswerURL></ReferenceAnswer>
      <RefAnswer aid="TQ1A2"><ANSWER>Sometimes arthritis.</ANSWER></RefAnswer>
    </ReferenceAnswers>
  </NLM-QUESTION>
  <NLM-QUESTION qid="TQ2">
    <Original-Question qfile="2.txt"><SUBJECT></SUBJECT><MESSAGE>is ginger safe in pregnancy</MESSAGE>
    </Original-Question>
    <NIST-PARAPHRASE />
    <NLM-Summary>Is ginger safe during pregnancy?</NLM-Summary>
    <ANNOTATIONS><TYPE tid="T1">SAFETY</TYPE></ANNOTATIONS>
    <ReferenceAnswers><ReferenceAnswer aid="TQ2A1"><ANSWER>Small amounts are usually fine.</ANSWER>
    </ReferenceAnswer></ReferenceAnswers>
  </NLM-QUESTION>
</LiveQA2017-Medical-Test-Set-Full>
"""

LIVEQA_TRAIN = """<?xml version="1.0" encoding="UTF-8"?>
<NLM-QUESTIONS>
<NLM-QUESTION questionid="Q1">
  <SUBJECT>gout</SUBJECT><MESSAGE>What should I eat with gout?</MESSAGE>
  <SUB-QUESTIONS><SUB-QUESTION subqid="Q1-S1"><ANNOTATIONS><FOCUS>gout</FOCUS><TYPE>diet</TYPE></ANNOTATIONS>
  <ANSWERS><ANSWER answerid="Q1-S1-A1">Limit purine-rich foods.</ANSWER></ANSWERS></SUB-QUESTION></SUB-QUESTIONS>
</NLM-QUESTION>
</NLM-QUESTIONS>
"""


def ccks_row(text: str = "患者右膝疼痛，诊断为骨关节炎。", spans=((2, 4, "解剖部位"), (10, 14, "疾病和诊断"))) -> dict:
    return {"text": text, "entity_list": [{"entity_index": {"begin": b, "end": e}, "entity_type": t,
                                           "entity": text[b:e]} for b, e, t in spans]}


def ultrafeedback_row(i: int = 0, metadata=None) -> dict:
    return {"prompt": f"Explain what a fever is. ({i})", "chosen": "A raised body temperature, usually from infection.",
            "rejected": "It is when you are hot.", "source_index": i,
            "metadata": {"score_chosen": 8.0, "score_rejected": 3.5} if metadata is None else metadata}


def sharegpt_row(turns=None) -> dict:
    turns = turns or [{"from": "system", "value": "你是医生助手。"}, {"from": "human", "value": "感冒要吃抗生素吗？"}]
    return {"conversations": turns, "chosen": "普通感冒多为病毒感染，一般不需要抗生素。", "rejected": "要，马上吃。"}


def write_xlsx(path: Path, header: list[str], rows: list[list]) -> Path:
    import openpyxl

    wb = openpyxl.Workbook()
    ws = wb.active
    ws.append(header)
    for r in rows:
        ws.append(r)
    wb.save(path)
    return path
