"""`distill grade`: re-grade a JSONL file of generations without generating.

    distill grade --input IN.jsonl --output OUT.jsonl [--response-field response] [--gold-field gold]
                  [--benchmark NAME] [--processes 2] [--timeout 5]

Each output row is the input row plus "correct" (bool) and "extracted" (str or null), in input order; the
last line printed is `graded N: C correct (P%)`. This contract is used by other scripts: keep it stable.

A bad row (not JSON, not an object, a missing or null response/gold, a non-integer gold for an integer
benchmark) is reported on stderr as `IN.jsonl:LINE: what`, kept in the output with correct=false,
extracted=null and an "error" field (a line that is not a JSON object becomes {"line", "raw"}), counted as
wrong in N and announced in the summary. An answer whose grading exceeds --timeout is wrong, with
"grade_error" saying so. Blank lines are not rows.

--benchmark picks the answer type (see distill/verify.py): gsm8k, aime24, aime25, amc23 grade integers
(GSM8K: the last number of the answer; a raw GSM8K gold "… #### 1,450" is reduced to 1450); math, math500
(the default) grade with math-verify.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from distill import verify
from distill.artifacts import UserError, jsonl_lines, write_jsonl

BENCHMARKS = {"gsm8k": "integer", "aime24": "integer", "aime25": "integer", "amc23": "integer",
              "math": "math", "math500": "math"}


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="distill grade", description=__doc__.split("\n")[0])
    ap.add_argument("--input", required=True, help="JSONL file of generations")
    ap.add_argument("--output", required=True, help="JSONL file to write (atomically; may be the input)")
    ap.add_argument("--response-field", default="response", help="field holding the model's response")
    ap.add_argument("--gold-field", default="gold", help="field holding the gold answer")
    ap.add_argument("--benchmark", default="math", help=f"one of {', '.join(BENCHMARKS)} (default math)")
    ap.add_argument("--processes", type=int, default=2, help="grading processes (default 2)")
    ap.add_argument("--timeout", type=float, default=5.0, help="seconds per answer before it counts as wrong")
    return ap


def _gold(value, answer_type: str, benchmark: str) -> tuple[str | None, str | None]:
    """(gold as a string, None) or (None, why the row is bad)."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return None, f"gold is {json.dumps(value)[:40]}, expected a string or a number"
    gold = str(value)
    if benchmark == "gsm8k" and "####" in gold:
        gold = gold.rsplit("####", 1)[1].strip()  # the raw GSM8K answer: solution, then "#### 1,450"
    if answer_type == "integer":
        if verify.integer_value(gold) is None:
            return None, f"gold {gold[:40]!r} is not an integer (benchmark {benchmark} grades integers)"
        gold = str(verify.integer_value(gold))  # AMC's "27.0" -> "27"
    return gold, None


def _check(line: str, response_field: str, gold_field: str, answer_type: str, benchmark: str):
    """(row, job, error) of one input line: job is (response, gold, answer_type) when the row is good."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        return None, None, f"not valid JSON ({e.msg})"
    if not isinstance(row, dict):
        return None, None, f"expected a JSON object, got {type(row).__name__}"
    missing = [f for f in (response_field, gold_field) if f not in row]
    if missing:
        return row, None, f"missing field(s) {', '.join(missing)}"
    if not isinstance(row[response_field], str):
        return row, None, f"{response_field} is {json.dumps(row[response_field])[:40]}, expected a string"
    gold, why = _gold(row[gold_field], answer_type, benchmark)
    if why:
        return row, None, why
    return row, (row[response_field], gold, answer_type), None


def _read(path: Path, args, answer_type: str) -> tuple[list[dict], list[tuple[int, tuple]], int]:
    """Output rows (bad ones already marked), the jobs to grade as (row index, job), and the bad count.
    A file in which no row can be graded (not JSONL at all, a binary file) is one error, not one per line."""
    rows, jobs, errors = [], [], []
    for lineno, line in jsonl_lines(path):
        row, job, error = _check(line, args.response_field, args.gold_field, answer_type, args.benchmark)
        if error:
            errors.append(f"{path}:{lineno}: {error}")
            row = row if row is not None else {"line": lineno, "raw": line.rstrip("\n")}
            rows.append({**row, "correct": False, "extracted": None, "error": error})
        else:
            jobs.append((len(rows), job))
            rows.append(row)
    if not jobs:
        first = f" (first: {errors[0]})" if errors else ""
        raise UserError(f"{path}: no row to grade: {len(errors)} line(s), none a JSON object with "
                        f"{args.response_field} and {args.gold_field}{first}")
    for e in errors:
        print(e, file=sys.stderr)
    return rows, jobs, len(errors)


def run(args) -> tuple[int, int]:
    """Grade args.input into args.output; (rows, correct)."""
    answer_type = BENCHMARKS.get(args.benchmark.lower())
    if answer_type is None:
        raise UserError(f"unknown benchmark {args.benchmark!r}; known: {', '.join(BENCHMARKS)}")
    args.benchmark = args.benchmark.lower()
    if args.processes < 1 or args.timeout <= 0:
        raise UserError("--processes must be >= 1 and --timeout > 0")
    path = Path(args.input)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    rows, jobs, bad = _read(path, args, answer_type)
    results = verify.grade_all([job for _, job in jobs], args.processes, args.timeout)
    failed = 0
    for (i, _), (correct, extracted, error) in zip(jobs, results, strict=True):
        rows[i] = {**rows[i], "correct": correct, "extracted": extracted}
        if error:
            rows[i]["grade_error"] = error
            failed += 1
    write_jsonl(Path(args.output), rows)
    correct = sum(r["correct"] for r in rows)
    if bad:
        print(f"{bad} bad row(s), reported on stderr with their line numbers: in the output with an "
              f"\"error\" field, counted as wrong")
    if failed:
        print(f"{failed} answer(s) could not be graded (timeout or grader error, see \"grade_error\"): "
              f"counted as wrong")
    print(f"wrote {args.output}")
    print(f"graded {len(rows)}: {correct} correct ({100 * correct / max(len(rows), 1):.1f}%)")
    return len(rows), correct


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        run(args)
    except UserError as e:
        print(f"distill grade: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("distill grade: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
