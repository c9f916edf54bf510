"""`distill quantize` (GGUF through llama.cpp's own converter and quantizer; bitsandbytes 8-bit and NF4) and the
quantized models evaluated and served like any other: the `llama_cpp` backend in `eval`, `distill serve` on a
.gguf file with the official openai client.

The model is trained briefly (greedy choices not near-ties) with widths of 256, so Q4_K_M really holds k-quants
(they need rows of a multiple of 256 values). Needs `make install-local`; CI installs it (.ci/run).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from distill.config import make
from distill.stages import eval as ev
from distill.stages import filter as filt
from distill.stages import sft, traces

from .conftest import ROOT, distill

try:
    import llama_cpp  # noqa: F401
    HAVE = (Path(sys.prefix) / "share/llama.cpp/convert_hf_to_gguf.py").is_file()
except ImportError:
    HAVE = False
pytestmark = pytest.mark.skipif(not HAVE and not os.environ.get("CI"),
                                reason="needs llama-cpp-python and its converter (make install-local)")
ARCH = {"hidden_size": 256, "num_hidden_layers": 1, "intermediate_size": 512, "num_attention_heads": 4,
        "num_key_value_heads": 4}


@pytest.fixture(scope="module")
def trained(built) -> Path:
    from distill.stages import init

    init.run(init.InitConfig(run="t", runs_dir=str(built), name="q256", arch=ARCH))
    traces.run(make(traces.TracesConfig, run="t", runs_dir=str(built), name="solver", backend="solver", n=1))
    data = filt.run(filt.FilterConfig(run="t", runs_dir=str(built), name="solver", keep_per_problem=1))
    sft.run(sft.SftConfig(run="t", runs_dir=str(built), name="q256", model=str(built / "t/init/q256"),
                          data=str(data / "train.jsonl"), epochs=25, lr=3e-3, batch_size=16, save_steps=1000,
                          logging_steps=50, threads=2))
    return built


def _quantize(runs: Path, fmt: str, *extra: str, check: bool = True):
    return distill("quantize", "--format", fmt, f"runs_dir={runs}", "run=t", "name=q256", *extra, check=check)


@pytest.fixture(scope="module")
def quantized(trained) -> dict[str, Path]:
    for fmt in ("gguf-q8_0", "gguf-q4_k_m", "bnb-8bit", "bnb-4bit"):
        _quantize(trained, fmt)
    return {fmt: trained / "t/quantize" / f"q256-{fmt}" for fmt in ("gguf-q8_0", "gguf-q4_k_m", "bnb-8bit",
                                                                   "bnb-4bit")}


def test_gguf_is_llama_cpps_own_and_its_tokenizer_round_trips(quantized):
    for fmt, kind in (("gguf-q8_0", "q8_0"), ("gguf-q4_k_m", "q4_k")):
        out = quantized[fmt]
        assert (out / "model/model.gguf").is_file() and (out / "model/tokenizer.json").is_file()
        assert not list(out.glob("model-*.gguf"))  # the converter's intermediate file is gone
        check = json.loads((out / "check.json").read_text())
        assert check["passed"] and check["chat_template_equal"] and check["eos_equal"]
        assert all(r["ids_equal"] and r["detokenized_equal"] for r in check["strings"])
        assert any("<|im_start|>" in r["text"] for r in check["strings"])  # a chat rendered by its template
        man = json.loads((out / "manifest.json").read_text())
        types = man["quantize"]["tensor_types"]
        assert types.get(kind, 0) >= 4, types  # widths of 256: the format itself, not llama.cpp's fallback
        assert [f["used"] for f in man["fallbacks"]] == ["gpt-2"]  # only: the pre-tokenizer it was told
        assert man["counts"]["quantized_mb"] < man["counts"]["source_mb"]
    q8, q4 = (json.loads((quantized[f] / "manifest.json").read_text())["counts"]["quantized_mb"]
              for f in ("gguf-q8_0", "gguf-q4_k_m"))
    assert q4 < q8


def test_quantized_models_evaluate_like_any_other(trained, quantized, tmp_path):
    fp32 = trained / "t/sft/q256/model"
    models = [{"name": "fp32", "role": "teacher", "path": str(fp32)}] + [
        {"name": fmt, "role": "student", "path": str(quantized[fmt] / "model"),
         **({"backend": "llama_cpp"} if fmt.startswith("gguf") else {})} for fmt in quantized]
    out = ev.run(make(ev.EvalConfig, run="q", runs_dir=str(tmp_path), problems=str(trained / "t/problems/eval.jsonl"),
                               models=models, budgets=[16, 64], n=1, temperature=0.0, max_answer_tokens=10,
                               threads=1))
    res = {m["name"]: m for m in json.loads((out / "results.json").read_text())["models"]}
    rows: dict[str, dict] = {}
    for line in (out / "samples.jsonl").read_text().splitlines():
        r = json.loads(line)
        rows.setdefault(r["model"], {})[(r["problem_id"], r["budget"])] = (r["thinking_tokens"], r["answer"])
    same = {m: sum(rows[m][k] == rows["fp32"][k] for k in rows["fp32"]) / len(rows["fp32"]) for m in rows}
    assert all(a.startswith("Final answer:") for _, a in rows["fp32"].values())  # trained: no near-tie choices
    assert same["gguf-q8_0"] >= 0.9, same  # greedy through llama.cpp: the fp32 model's own outputs
    assert same["bnb-8bit"] >= 0.8, same
    for fmt in quantized:
        assert res[fmt]["params"] == res["fp32"]["params"]  # a 4-bit model's packed weights counted as what they hold
    gg = res["gguf-q4_k_m"]["backend"]
    assert gg["backend"] == "llama_cpp" and gg["file_mb"] > 0
    assert res["gguf-q4_k_m"]["quantized_from"]["source"].endswith("q256/model")
    assert res["bnb-8bit"]["quantized_from"]["format"] == "bnb-8bit" and "quantized_from" not in res["fp32"]
    assert gg["settings"] == {} and res["gguf-q4_k_m"]["cost"]["tokens_per_s"] > 0


def test_serve_a_gguf_file_to_the_openai_client(quantized, tmp_path):
    import openai

    gguf = quantized["gguf-q8_0"] / "model/model.gguf"
    log = tmp_path / "serve.log"
    proc = subprocess.Popen([sys.executable, "-m", "distill.cli", "serve", f"model={gguf}", "port=0", "threads=1",
                             "max_thinking=24"], stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        deadline = time.time() + 300  # a guard against a hang, not a measurement
        while "http://127.0.0.1:" not in log.read_text():
            assert proc.poll() is None, log.read_text()[-2000:]
            assert time.time() < deadline
            time.sleep(0.2)
        url = log.read_text().split("http://")[1].split("/v1")[0]
        client = openai.OpenAI(base_url=f"http://{url}/v1", api_key="none")
        r = client.chat.completions.create(model=client.models.list().data[0].id, max_tokens=40, temperature=0,
                                           messages=[{"role": "user", "content": "Reverse the list 3 1 2."}])
        msg = r.choices[0].message
        assert msg.content and getattr(msg, "reasoning_content", None)
    finally:
        proc.kill()
        proc.wait()


def test_quantize_refuses_bad_input_in_one_line(trained, tmp_path):
    cases = [
        (("gguf-q4_k_m", "converter=/nonexistent/convert_hf_to_gguf.py"), "converter not found"),
        (("gguf-q3",), "format"),
        (("bnb-8bit", f"model={tmp_path}/missing"), "not a model folder"),
    ]
    for args, words in cases:
        proc = distill("quantize", "--format", args[0], f"runs_dir={tmp_path}", "run=bad", "name=q256",
                       f"model={trained / 't/sft/q256/model'}", *args[1:], check=False)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and words in lines[0], proc.stderr[-2000:]
        assert not (tmp_path / "bad").exists()
    # a model none of whose layers bnb's 4-bit CPU kernel takes (widths 24 and 48): refused, not written unquantized
    from distill.stages import init

    narrow = init.run(init.InitConfig(run="t", runs_dir=str(trained), name="narrow", arch={
        "hidden_size": 24, "num_hidden_layers": 1, "intermediate_size": 48, "num_attention_heads": 2,
        "num_key_value_heads": 2}))
    proc = distill("quantize", "--format", "bnb-4bit", f"runs_dir={tmp_path}", "run=bad", "name=narrow",
                   f"model={narrow}", check=False)
    assert proc.returncode == 2 and "nothing would be quantized" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "bad").exists()
