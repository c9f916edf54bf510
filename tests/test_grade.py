"""The answer grader (distill/verify.py) and `distill grade` (distill/grade.py).

How we grade
------------
Only the text after the last `</think>` is graded; `<think>` without `</think>` is wrong; a response with
no tags is graded whole. The candidate is the last `\\boxed{}`, else what follows "The answer is" /
"Final answer:", else (math) whatever math-verify extracts from the answer text or (integer) its last
number. "math" answers are compared by math-verify 0.9 (gold wrapped in `$…$`, LaTeX with boxed first plus
plain expressions, float_rounding 6, strict); "integer" answers (GSM8K, AIME, AMC) must also match the
gold exactly as integers. Identical strings up to LaTeX spacing and \\dfrac/\\tfrac are equal without
parsing (a fast path; it never turns a math-verify "equal" into "not equal").

Cases from ../shared/data/grader_cases (see its PROVENANCE.md):
- math_verify_tests.jsonl: all 269 go through `verify.math_equal`, our comparison, with the extraction
  types, precision, strict and allow_set_relation_comp the row names ("compare_strings" rows); the 14
  "verify(parse(gold), parse(pred))" rows run with our defaults (boxed first instead of math-verify's
  default priority, which changes none of them). All 269 give the expected verdict.
- hendrycks_math_equivalence_tests.jsonl: the 16 pairs of the original MATH `is_equiv` (string
  normalisation) go through `verify.grade_one` as a boxed answer, `\\boxed{pred}` against gold. Verdicts:

  | case              | gold                          | pred                          | MATH | ours |
  |-------------------|-------------------------------|-------------------------------|------|------|
  | test_fractions    | \\tfrac{1}{2} + \\frac1{72}   | \\\\frac{1}{2} + 2/3          | 0    | 0    |
  | test_order        | 10, 4, -2                     | 4, 10, -2                     | 0    | 1 *  |
  | test_order2       | 10, 4, 2                      | 4, 12, 2                      | 0    | 0    |
  | test_dfrac        | \\tfrac{1}{2} +\\! \\frac1{72}| \\\\dfrac{1}{2} +\\frac{1}{72}| 1    | 1    |
  | test_units        | 10\\text{ units}              | 10                            | 1    | 1    |
  | test_units2       | 10\\text{ units}              | 100                           | 0    | 0    |
  | test_dollars      | 10                            | \\$10                         | 1    | 1    |
  | test_parentheses  | \\left(x-2\\right)\\left(x+2\\right) | (x-2)(x+2)             | 1    | 1    |
  | test_decimals     | 0.1, 4, 2                     | 4, .1, 2                      | 0    | 1 *  |
  | test_decimals2    | 0.1                           | .1                            | 1    | 1    |
  | test_percentage   | 10\\%                         | 10                            | 1    | 1    |
  | test_sqrt         | 10\\sqrt{3} + \\sqrt4         | 10\\sqrt3 + \\sqrt{4}         | 1    | 1    |
  | test_frac         | \\frac34i                     | \\frac{3}{4}i                 | 1    | 1    |
  | test_tfrac        | \\tfrac83                     | \\frac{8}{3}                  | 1    | 1    |
  | test_expression   | 5x - 7y + 11z + 4 = 0         | x + y - z + 2 = 0             | 0    | 0    |
  | test_half         | 1/2                           | \\frac{1}{2}                  | 1    | 1    |

  We pass 14 of 16. The two we deliberately differ on (*) are bare comma-separated lists in another
  order: math-verify reads "10, 4, -2" as a set, and in MATH such a list is the answer to "find all
  solutions / enter all values, separated by commas", where order does not matter; MATH writes an ordered
  answer (a point, a vector) in parentheses, and `(10, 4, -2)` vs `(4, 10, -2)` is a tuple, which we
  grade as different (checked below). Hendrycks' is_equiv compares normalised strings, so any reordering
  fails there. (The "\\\\frac" with two backslashes in two preds is in the source data as it is.)
"""

from __future__ import annotations

import json
import random
import threading
import time
from pathlib import Path

import pytest

from distill import tasks, verify

from .conftest import ROOT, distill

CASES = Path(__file__).resolve().parents[2] / "shared" / "data" / "grader_cases"
NESTED = "\\frac{1}{" * 500 + "2" + "}" * 500  # 5,001 characters: parsing alone takes seconds, verify hangs


def _rows(name: str) -> list[dict]:
    path = CASES / name
    if not path.is_file():
        pytest.skip(f"{path} is absent (the shared grader cases live next to the repo, in ../shared/data)")
    return [json.loads(line) for line in path.open()]


def _mv_case_ids():
    path = CASES / "math_verify_tests.jsonl"
    if not path.is_file():
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"{path} is absent"))]
    rows = [json.loads(line) for line in path.open()]
    return [pytest.param(r, id=f"{Path(r['source_file']).stem}-{r['test_function']}-{r['case_index']}")
            for r in rows]


@pytest.mark.parametrize("row", _mv_case_ids())
def test_math_verify_cases(row):
    kwargs = {}
    if row["harness"] == "compare_strings":
        kwargs = {"match_types": tuple(row["match_types"]), "precision": row["precision"],
                  "strict": row["strict"], "allow_set_relation_comp": row["allow_set_relation_comp"]}
    assert verify.math_equal(row["gold"], row["pred"], **kwargs) == bool(row["expected"])


HENDRYCKS_DIFFERENT = {"test_order", "test_decimals"}  # see the module docstring for why


def test_hendrycks_cases():
    rows = _rows("hendrycks_math_equivalence_tests.jsonl")
    assert len(rows) == 16
    for r in rows:
        ours, _ = verify.grade_one(f"\\boxed{{{r['pred']}}}", r["gold"])
        want = not r["expected"] if r["test_function"] in HENDRYCKS_DIFFERENT else bool(r["expected"])
        assert ours == want, r["test_function"]
    # ordered answers are still ordered: the difference is only about bare lists
    assert not verify.grade_one("\\boxed{(4, 10, -2)}", "(10, 4, -2)")[0]


@pytest.mark.parametrize("response,gold,answer_type,correct,extracted", [
    ("<think>so 7</think> Thus \\boxed{\\frac{1}{\\sqrt{2}}}.", "\\frac{\\sqrt2}{2}", "math", True,
     "\\frac{1}{\\sqrt{2}}"),  # nested braces
    ("First \\boxed{3}, then: \\boxed{\\{1, 2\\}}", "\\{1,2\\}", "math", True, "\\{1, 2\\}"),  # the last
    ("<think>\\boxed{5}</think> The answer is 4.", "5", "math", False, "4"),  # boxed in thinking ignored
    ("<think>the answer is 42 and \\boxed{42}", "42", "math", False, None),  # unclosed think: wrong
    ("<think>x</think><think>y</think> Final answer: 9", "9", "math", True, "9"),  # last </think>
    ("Final answer: $x = \\frac{3}{4}$.", "\\frac34", "math", True, "x = \\frac{3}{4}"),  # no tags: whole
    # no box, no cue: math-verify extracts (and reports the answer in its own normal form)
    ("We get $0.5$ in the end", "\\frac{1}{2}", "math", True, "\\frac{1}{2}"),
    ("\\boxed{}", "1", "math", False, None),  # an empty final box is no answer
    ("<think>16-3-4=9</think> She makes 9 * 2 = $1,450 a day.", "1450", "integer", True, "1450"),
    ("The answer is 1,450,000 dollars.", "1450000", "integer", True, "1450000"),
    ("<think>12</think> It is \\boxed{27}.", "27.0", "integer", True, "27"),  # AMC gold as a float
    ("\\boxed{033}", "33", "integer", True, "033"),  # AIME style zero padding
    ("\\boxed{27.5}", "27", "integer", False, "27.5"),
    ("\\boxed{\\frac{54}{2}}", "27", "integer", False, None),  # equal, but not an integer answer
    ("\\boxed{2^{10}}", "10", "integer", False, None),  # no stand-alone number, not "10"
])
def test_extraction(response, gold, answer_type, correct, extracted):
    assert verify.grade_one(response, gold, answer_type) == (correct, extracted)


def test_is_correct_and_grade_problems_in_a_thread():
    """Built-in tasks keep their own checker; no signal is used, so a non-main thread can grade."""
    chain = {**tasks.FAMILIES["chain"][0](random.Random(0), 1), "task": "chain"}
    amc = {"id": "a", "answer": "27.0", "answer_type": "integer"}
    assert verify.is_correct(chain, f"Final answer: {chain['answer']}")
    assert verify.is_correct(amc, "so \\boxed{27}") and not verify.is_correct(amc, None)
    items = [(chain, f"Final answer: {chain['answer']}"), (amc, "\\boxed{27}"), (amc, "\\boxed{28}"),
             ({"answer": "\\frac12"}, "The answer is 0.5"), (amc, None)]
    box = []
    worker = threading.Thread(target=lambda: box.append(verify.grade_problems(items, processes=2)))
    worker.start()
    worker.join(60)
    assert box == [[(True, chain["answer"], None), (True, "27", None), (False, "28", None), (True, "0.5", None),
                    (False, None, None)]]


def test_pathological_answer_times_out_and_the_rest_are_graded():
    items = [("<think>1</think> \\boxed{3}", "3", "math"),
             (f"<think>1</think> The answer is \\boxed{{{NESTED}}}.", "3", "math"),
             ("<think>1</think> \\boxed{\\dfrac{1}{2}}", "0.5", "math"),
             ("\\boxed{14}", "14", "integer")]
    start = time.monotonic()
    results = verify.grade_all(items, processes=2, timeout_s=1.0)
    assert time.monotonic() - start < 10  # 1 s of timeout plus starting and replacing workers
    assert [r[0] for r in results] == [True, False, True, True]
    assert results[1][2].startswith("timeout")


def _write(path: Path, lines: list) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def test_cli_gsm8k_style(tmp_path):
    src = _write(tmp_path / "gen.jsonl", [
        {"id": 1, "response": "<think>16-3-4=9</think> She makes 9*2 = $18 a day.", "gold": "... #### 18"},
        {"id": 2, "response": "<think>x</think> The answer is 1,450.", "gold": "1,450"},
        "{not json",
        {"id": 4, "gold": "3"},
        "",
        {"id": 6, "response": "<think>the total is 5", "gold": 5},
        {"id": 7, "response": "\\boxed{27}", "gold": 27.0},
        {"id": 8, "response": "\\boxed{2}", "gold": "1.5"},
    ])
    out = tmp_path / "out.jsonl"
    proc = distill("grade", "--input", str(src), "--output", str(out), "--benchmark", "gsm8k")
    assert proc.stdout.strip().splitlines()[-1] == "graded 7: 3 correct (42.9%)"
    assert "3 bad row(s)" in proc.stdout
    not_json = "not valid JSON (Expecting property name enclosed in double quotes)"
    not_int = "gold '1.5' is not an integer (benchmark gsm8k grades integers)"
    assert proc.stderr.splitlines() == [f"{src}:3: {not_json}", f"{src}:4: missing field(s) response",
                                        f"{src}:8: {not_int}"]
    rows = [json.loads(line) for line in out.open()]
    assert [(r.get("id"), r["correct"], r["extracted"]) for r in rows] == [
        (1, True, "18"), (2, True, "1450"), (None, False, None), (4, False, None), (6, False, None),
        (7, True, "27"), (8, False, None)]
    assert rows[2] == {"line": 3, "raw": "{not json", "correct": False, "extracted": None,
                       "error": not_json}
    assert rows[0]["response"].startswith("<think>") and "error" not in rows[0]


def test_cli_math_style_with_a_pathological_answer(tmp_path):
    src = _write(tmp_path / "gen.jsonl", [
        {"out": "<think>so</think> \\boxed{\\frac{1}{2}}", "answer": "\\dfrac12"},
        {"out": "<think>so</think> \\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "answer": "(3,\\pi/2)"},
        {"out": f"<think>so</think> \\boxed{{{NESTED}}}", "answer": "3"},
        {"out": "<think>so</think> The answer is $x=2$.", "answer": "3"},
    ])
    out = tmp_path / "sub" / "graded.jsonl"
    start = time.monotonic()
    proc = distill("grade", "--input", str(src), "--output", str(out), "--response-field", "out",
                   "--gold-field", "answer", "--benchmark", "math500", "--timeout", "1")
    assert time.monotonic() - start < 15
    assert proc.stdout.strip().splitlines()[-1] == "graded 4: 2 correct (50.0%)"
    rows = [json.loads(line) for line in out.open()]
    assert [r["correct"] for r in rows] == [True, True, False, False]
    assert rows[2]["grade_error"].startswith("timeout") and rows[3]["extracted"] == "x=2"


def test_cli_user_errors(tmp_path):
    for args, message in [(["--input", str(tmp_path / "none.jsonl")], "file not found"),
                          (["--input", str(_write(tmp_path / "x.jsonl", [])), "--benchmark", "mmlu"],
                           "unknown benchmark 'mmlu'")]:
        proc = distill("grade", *args, "--output", str(tmp_path / "o.jsonl"), check=False)
        assert proc.returncode == 2 and message in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert not (tmp_path / "o.jsonl").exists()


def test_filter_and_eval_count_gradings_that_timed_out(built, tmp_path, monkeypatch):
    """A grading that times out is a wrong answer, and counted as such: filter's stats.json and eval's
    results.json (per model) say how many, instead of folding them into the wrong ones unseen."""
    from distill import cli
    from distill.stages import filter as filt

    problems = _write(tmp_path / "p.jsonl", [{"id": "a", "problem": "x?", "answer": "3"},
                                             {"id": "b", "problem": "y?", "answer": "3"}])
    good = {"sample": 0, "thinking": "t", "finish_reason": "stop", "thinking_tokens": 5}
    traces = _write(tmp_path / "t.jsonl", [{"problem_id": "a", "answer": "\\boxed{3}", **good},
                                           {"problem_id": "b", "answer": f"\\boxed{{{NESTED}}}", **good}])
    out = filt.run(filt.FilterConfig(run="g", runs_dir=str(tmp_path / "r"), traces=str(traces),
                                     problems=str(problems), grade_timeout=1.0))
    stats = json.loads((out / "stats.json").read_text())
    assert stats["kept"] == 1 and stats["dropped"]["wrong"] == 1
    assert stats["grading_failed"] == {"timeouts": 1, "errors": 0}
    # eval: every math-verify grading of a tiny model's answers over its timeout
    monkeypatch.chdir(ROOT)
    model = f"models=[{{name: tiny, role: student, path: {built / 't' / 'init' / 'tiny'}}}]"
    assert cli.main(["eval", f"runs_dir={tmp_path / 'r'}", "run=g", model, f"problems={problems}",
                     "budgets=[4]", "n=1", "max_answer_tokens=4", "threads=1", "grade_timeout=0.000001"]) == 0
    [m] = json.loads((tmp_path / "r" / "g" / "eval" / "results.json").read_text())["models"]
    samples = [json.loads(x) for x in (tmp_path / "r" / "g" / "eval" / "samples.jsonl").read_text().splitlines()]
    assert m["grading"] == {"timeouts": 2, "errors": 0}
    assert all(s["grade_error"].startswith("timeout") and not s["correct"] for s in samples)
