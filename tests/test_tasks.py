import random

import pytest

from distill import tasks, verify


@pytest.mark.parametrize("task", sorted(tasks.FAMILIES))
def test_deterministic_by_seed_and_splits_disjoint(task):
    a = tasks.generate(task, [1, 2], 60, "train", seed=3, eval_fraction=0.2)
    b = tasks.generate(task, [1, 2], 60, "train", seed=3, eval_fraction=0.2)
    c = tasks.generate(task, [1, 2], 60, "train", seed=4, eval_fraction=0.2)
    held_out = tasks.generate(task, [1, 2], 60, "eval", seed=3, eval_fraction=0.2)
    assert a == b and a != c
    assert not {p["problem"] for p in a} & {p["problem"] for p in held_out}
    assert len({p["problem"] for p in a}) == 60


@pytest.mark.parametrize("task", sorted(tasks.FAMILIES))
def test_reference_solver_is_right_and_thinks_longer_when_harder(task):
    make = tasks.FAMILIES[task][0]
    mean_len = {}
    top = {"chain": 4, "search": 2, "recall": 3}[task]
    for level in (1, top):
        lens = []
        for seed in range(200):
            p = {"task": task, **make(random.Random(seed), level)}
            thinking, answer = tasks.reference_solution(p)
            assert tasks.check(p, answer), (p, thinking, answer)
            lens.append(len(thinking))
        mean_len[level] = sum(lens) / len(lens)
    # chain and recall: one line per round (4x at level 4, 3x at 3); search: one more addend per guess, but the number of
    # guesses depends on the answer, not the level, so it grows less
    assert mean_len[top] > {"chain": 3.0, "search": 1.05, "recall": 2.5}[task] * mean_len[1]


def test_search_checker_scores_the_start():
    p = {"task": "search", "meta": {"adds": [5, 1, 2]}}  # x + 5 + 1 + 2 = 0 (mod 10): x = 2
    assert tasks.check(p, "Final answer: 2") and not tasks.check(p, "Final answer: 3")
    assert not tasks.check(p, "Final answer: 12") and not tasks.check(p, "no idea")


def test_search_reference_checks_and_moves_on():
    p = {"task": "search", "meta": {"adds": [1, 4, 4]}, "answer": "1"}
    lines = tasks.reference_solution(p)[0].splitlines()
    assert lines[0] == "9 9+1=0+4=4+4=8 no" and lines[-1] == "1 1+1=2+4=6+4=0 ok" and len(lines) == 9


def test_recall_facts_are_fixed_and_composed_in_rounds():
    # the facts are the task's, not the run's: every seed and every machine sees the same 50
    assert len(tasks.TABLE) == 5 and all(sorted(row) == list(range(10)) for row in tasks.TABLE.values())
    assert tasks.TABLE["a"] == [1, 4, 8, 9, 5, 6, 2, 0, 7, 3]  # pinned: a Python that seeds otherwise changes the task
    c, d = "b", "e"
    p = {"task": "recall", "meta": {"x": 3, "ops": [c, d], "rounds": 2}}
    y1 = tasks.TABLE[d][tasks.TABLE[c][3]]
    y2 = tasks.TABLE[d][tasks.TABLE[c][y1]]
    thinking, answer = tasks.reference_solution({**p, "answer": str(y2)})
    assert thinking.splitlines()[1].startswith(f"1 {y1}{c}=") and answer == f"Final answer: {y2}"
    assert tasks.check(p, f"Final answer: {y2}") and not tasks.check(p, f"Final answer: {(y2 + 1) % 10}")


def test_tape_lines_have_equal_token_width(built):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(built / "t" / "tokenizer")
    for task, level in (("chain", 4), ("search", 1), ("search", 2), ("recall", 3)):
        p = {"task": task, **tasks.FAMILIES[task][0](random.Random(1), level)}
        widths = {len(tok(line).input_ids) for line in tasks.reference_solution(p)[0].splitlines()}
        assert len(widths) == 1, (task, widths)


def test_final_answer_only_after_think_close():
    assert verify.final_answer("<think>\n5+2=7\n</think>\nThe answer is 7.") == "\nThe answer is 7."
    assert verify.final_answer("<think>\n5+2=7 so 7") is None  # never closed: no fallback into thinking
    assert verify.final_answer("The answer is 7.") == "The answer is 7."  # no tags: graded whole
    p = {"task": "chain", "meta": {"x": 2, "adds": [3, 1], "rounds": 1}}  # 2 -> 5 -> 6
    assert verify.is_correct(p, "The answer is 6.") and not verify.is_correct(p, "The answer is 5.")
    assert not verify.is_correct(p, None)
