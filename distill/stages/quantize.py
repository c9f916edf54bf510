"""Stage `quantize`: a trained model as a smaller file a laptop runs.

    distill quantize --config students/demo-l.yaml --format gguf-q4_k_m   (gguf-q8_0, bnb-8bit, bnb-4bit)

Writes runs/<run>/quantize/<name>-<format>/model/, a folder the `eval` and `serve` stages load like any other
model (GGUF: backend llama_cpp; bitsandbytes: backend transformers, whose from_pretrained reads the
quantization config).

GGUF goes through llama.cpp's own tools, never a writer of ours: its converter (convert_hf_to_gguf.py with
its gguf-py, from the llama-cpp-python sdist `make install-local` unpacks into .venv/share/llama.cpp: the wheel
has no converter and PyPI's `gguf` does not match it) writes an f16 GGUF, then `llama_model_quantize` (the
llama.cpp library inside llama-cpp-python) makes q8_0 or Q4_K_M of it. llama.cpp does not know the
pre-tokenizer of a tokenizer trained here (its converter recognises known models by hashing their tokens):
it is told `pre_tokenizer` (default gpt-2, byte-level BPE), logged once and recorded in the manifest.
k-quants need rows whose width is a multiple of 256; llama.cpp quantizes narrower tensors to another type by
itself (its own fallback): the manifest counts the tensor types the file really holds.

Then a round-trip check, which must pass or nothing is written: token ids and detokenization by llama.cpp
equal transformers' on a set of strings (accents, emoji, whitespace, digits, the special tokens, a chat
rendered with the model's own template), and the GGUF carries the same chat template and end-of-sequence
token. bitsandbytes (8-bit LLM.int8, 4-bit NF4) keeps the transformers tokenizer as it is; its check is
the quantized model's greedy next token against the fp32 model's on the same strings.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from distill.artifacts import Fallbacks, UserError, atomic_write_json, finish, stage_dir, staging
from distill.config import Pos, opt

log = logging.getLogger("distill")
FORMATS = ("gguf-q8_0", "gguf-q4_k_m", "bnb-8bit", "bnb-4bit")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "generation_config.json", "config.json", "reasoning_effort.json")
CHECK_STRINGS = ["Hello world", "café naïve Ünïcödé", "🚀 emoji 😶‍🌫️ ✅", "  two  spaces\n\ttab\n\n",
                 "12345 3.14 -7", "<think>\nstep 1\n</think>\nFinal answer: 42", "'quotes' \"and\" (brackets)"]


@dataclass
class QuantizeConfig:
    run: str = opt("demo", "the run: every stage reads and writes under runs_dir/run/")
    runs_dir: str = opt("runs", "where runs live")
    name: str = opt("student", "the sft stage's name: the default model is runs/<run>/sft/<name>/model")
    model: str = opt("", "the model folder to quantize (default: runs/<run>/sft/<name>/model)")
    format: Literal["gguf-q8_0", "gguf-q4_k_m", "bnb-8bit", "bnb-4bit"] = opt(
        "gguf-q4_k_m", "gguf-q8_0 / gguf-q4_k_m (llama.cpp) or bnb-8bit / bnb-4bit (bitsandbytes)")
    pre_tokenizer: str = opt(
        "gpt-2", "told to llama.cpp's converter when it does not recognise the tokenizer")
    outtype: Literal["f32", "f16", "bf16"] = opt(
        "f16", "the converter's GGUF, which llama.cpp then quantizes")
    threads: Pos = opt(2, "llama_model_quantize's threads")
    converter: str = opt(
        "", "convert_hf_to_gguf.py (default: $LLAMA_CPP_CONVERTER, else <venv>/share/llama.cpp)")

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        if not isinstance(self.threads, int) or self.threads < 1:
            raise ValueError(f"threads must be an integer >= 1, got {self.threads!r}")


def _converter(cfg: QuantizeConfig) -> Path:
    path = Path(cfg.converter or os.environ.get("LLAMA_CPP_CONVERTER")
                or Path(sys.prefix) / "share" / "llama.cpp" / "convert_hf_to_gguf.py")
    if not path.is_file() or not (path.parent / "gguf-py").is_dir():
        raise UserError(f"llama.cpp's converter not found at {path} (with gguf-py beside it): run "
                        "`make install-local`, or set converter= / LLAMA_CPP_CONVERTER")
    return path


def _need_llama_cpp():
    try:
        import llama_cpp
    except ImportError:
        raise UserError("GGUF needs llama-cpp-python: run `make install-local`") from None
    return llama_cpp


# Run by the converter's subprocess (`python -m distill.quantize CONVERTER MODEL OUT OUTTYPE PRE`): llama.cpp's
# converter with its pre-tokenizer table extended by one answer, the one the recipe gives, for a tokenizer it
# does not recognise. It runs in its own process: it configures logging, reads sys.argv and may exit.
def _convert_main(converter: str, model: str, out: str, outtype: str, pre: str) -> None:
    root = Path(converter).parent
    sys.path[:0] = [str(root), str(root / "gguf-py")]
    from conversion import base

    known = base.TextModel.get_vocab_base_pre

    def get_vocab_base_pre(self, tokenizer):
        try:
            return known(self, tokenizer)
        except NotImplementedError:
            print(f"DISTILL-PRE-TOKENIZER {pre}", flush=True)
            return pre

    base.TextModel.get_vocab_base_pre = get_vocab_base_pre
    import convert_hf_to_gguf

    sys.argv = ["convert_hf_to_gguf.py", model, "--outfile", out, "--outtype", outtype]
    convert_hf_to_gguf.main()


def _gguf(cfg: QuantizeConfig, src: Path, dst: Path, fallbacks: Fallbacks) -> dict:
    llama_cpp = _need_llama_cpp()
    converter = _converter(cfg)
    dst.mkdir(parents=True)
    raw = dst.parent / f"model-{cfg.outtype}.gguf"
    started = time.time()
    proc = subprocess.run([sys.executable, "-m", "distill.stages.quantize", str(converter), str(src), str(raw),
                           cfg.outtype, cfg.pre_tokenizer], capture_output=True, text=True, check=False)
    (dst.parent / "convert.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        last = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()][-1:] or ["no output"]
        raise UserError(f"llama.cpp's converter failed on {src}: {last[0]}")
    if "DISTILL-PRE-TOKENIZER" in proc.stdout:
        fallbacks.add("pre-tokenizer recognised by llama.cpp", cfg.pre_tokenizer,
                      "a tokenizer llama.cpp's converter has no hash for (set pre_tokenizer= if it is not "
                      "byte-level BPE)")
    convert_s = time.time() - started
    ftype = {"gguf-q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "gguf-q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M"}[cfg.format]
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.nthread = getattr(llama_cpp, ftype), cfg.threads
    out = dst / "model.gguf"
    started = time.time()
    with _fd_to(dst.parent / "quantize.log"):  # llama.cpp writes its per-tensor log to the C stderr
        rc = llama_cpp.llama_model_quantize(str(raw).encode(), str(out).encode(), params)
    if rc != 0:
        raise UserError(f"llama_model_quantize failed (rc {rc}); see {dst.parent / 'quantize.log'}")
    raw.unlink()
    types = _tensor_types(converter, out)
    # what the format itself uses: Q4_K_M puts some matrices in q6_k; norms and biases stay f32
    planned = {"gguf-q8_0": {"f32", "q8_0"}, "gguf-q4_k_m": {"f32", "q4_k", "q6_k"}}[cfg.format]
    others = {t: n for t, n in types.items() if t not in planned}
    if others:
        fallbacks.add(f"{cfg.format} for every matrix", f"llama.cpp's own choice for {sum(others.values())} tensors",
                      f"types in the file: {types} (k-quants need rows of a multiple of 256 values, q8_0 of 32)")
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)
    return {"convert_s": round(convert_s, 2), "quantize_s": round(time.time() - started, 2),
            "tensor_types": types, "file": str(out)}


@contextlib.contextmanager
def _fd_to(path: Path):
    """Point file descriptor 2 (C code's stderr) at a file for the block."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "w") as f:
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _tensor_types(converter: Path, path: Path) -> dict:
    """How many tensors of each type the GGUF holds (read with llama.cpp's own gguf-py)."""
    sys.path.insert(0, str(converter.parent / "gguf-py"))
    try:
        from gguf import GGUFReader
    finally:
        sys.path.pop(0)
    counts: dict[str, int] = {}
    for t in GGUFReader(str(path)).tensors:
        counts[t.tensor_type.name.lower()] = counts.get(t.tensor_type.name.lower(), 0) + 1
    return dict(sorted(counts.items()))


def _check_strings(tok) -> list[str]:
    from distill import generate as G

    chat = tok.apply_chat_template([{"role": "user", "content": "What is 2 + 3?"},
                                    {"role": "assistant", "content": "5"},
                                    {"role": "user", "content": "And 4 × 5?"}], tokenize=False,
                                   add_generation_prompt=True)
    return CHECK_STRINGS + [chat, tok.decode(G.think_prompt(tok, "Reverse the list 3 1 2."))]


def _roundtrip_gguf(model_dir: Path) -> dict:
    """llama.cpp's tokenizer against transformers' on the check strings; any difference fails the stage."""
    import llama_cpp
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    with _fd_to(model_dir.parent / "check.log"):  # llama.cpp's context warnings go to the C stderr
        llm = llama_cpp.Llama(str(model_dir / "model.gguf"), vocab_only=True, verbose=False)
    rows, bad = [], []
    for s in _check_strings(tok):
        hf = tok.encode(s, add_special_tokens=False)
        cpp = llm.tokenize(s.encode(), add_bos=False, special=True)
        text = llm.detokenize(cpp, special=True).decode("utf-8", errors="replace")
        ok = hf == cpp and text == tok.decode(hf) == s
        rows.append({"text": s, "tokens": len(hf), "ids_equal": hf == cpp, "detokenized_equal": text == s})
        if not ok:
            bad.append(s)
    meta = llm.metadata
    template_ok = meta.get("tokenizer.chat_template") == tok.chat_template
    eos_ok = int(meta.get("tokenizer.ggml.eos_token_id", -1)) == tok.eos_token_id
    if bad or not template_ok or not eos_ok:
        what = (f"tokens differ on {bad[0]!r}" if bad else
                "the chat template differs" if not template_ok else "the end-of-sequence token differs")
        raise UserError(f"round-trip check failed: llama.cpp and transformers disagree: {what}")
    return {"strings": rows, "chat_template_equal": template_ok, "eos_equal": eos_ok, "passed": True}


def _linears(src: Path) -> dict[str, tuple[int, int]]:
    """Every linear layer's (out, in) widths, from the model built on the meta device (nothing loaded)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(src))
    return {n: (m.out_features, m.in_features) for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and n != "lm_head"}  # bnb never quantizes lm_head


def _bnb_skip(src: Path) -> list[str]:
    """The layers NF4 leaves in full precision. bnb's 4-bit CPU kernel (taken on CPUs with AVX512-BF16) needs
    output widths that are multiples of 32 and input widths of its block (64) and fails otherwise at the first
    forward: such layers stay unquantized, on every machine alike. None left to quantize: refused."""
    linears = _linears(src)
    skip = [n for n, (o, i) in linears.items() if o % 32 or i % 64]
    if linears and len(skip) == len(linears):
        raise UserError(f"bnb-4bit: none of the linear layers of {src} has widths bitsandbytes' 4-bit CPU kernel "
                        "takes (out a multiple of 32, in of 64): nothing would be quantized; use gguf-q4_k_m or "
                        "bnb-8bit")
    return skip


def _bnb(cfg: QuantizeConfig, src: Path, dst: Path, fallbacks: Fallbacks, skip: list[str]) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise UserError("bnb formats need bitsandbytes (a dependency of distill: reinstall with make install)") from None
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # 8-bit warns of its fp16 cast on every forward
    if skip:
        fallbacks.add("nf4 for every linear layer", f"{len(skip)} layers kept in full precision",
                      "bitsandbytes' 4-bit CPU kernel needs widths of multiples of 32 (out) and 64 (in)")
    qcfg = (BitsAndBytesConfig(load_in_8bit=True) if cfg.format == "bnb-8bit" else
            BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32,
                               llm_int8_skip_modules=skip + ["lm_head"]))
    started = time.time()
    model = AutoModelForCausalLM.from_pretrained(src, quantization_config=qcfg, device_map="cpu")
    model.save_pretrained(dst)
    tok = AutoTokenizer.from_pretrained(src)
    tok.save_pretrained(dst)
    for name in ("generation_config.json", "reasoning_effort.json"):
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)
    # the check: the saved file reloads, and its greedy next token against fp32's on the check strings
    reloaded = AutoModelForCausalLM.from_pretrained(dst, device_map="cpu")
    full = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    agree, delta = 0, 0.0
    strings = _check_strings(tok)
    with torch.inference_mode():
        for s in strings:
            ids = torch.tensor([tok.encode(s, add_special_tokens=False)])
            a, b = reloaded(ids).logits[0, -1].float(), full(ids).logits[0, -1]
            agree += int(a.argmax() == b.argmax())
            delta = max(delta, float((a - b).abs().max()))
    return {"quantize_s": round(time.time() - started, 2), "greedy_next_token_agreement": agree / len(strings),
            "max_abs_logit_delta": round(delta, 4), "strings": len(strings)}


def _size_mb(path: Path) -> float:
    files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]
    return round(sum(f.stat().st_size for f in files) / 1e6, 3)


def run(cfg: QuantizeConfig) -> Path:
    started = time.time()
    src = Path(cfg.model or stage_dir(cfg.runs_dir, cfg.run, "sft", cfg.name) / "model")
    if not (src / "config.json").is_file():
        raise UserError(f"model: {src} is not a model folder (no config.json): train it first "
                        f"(distill sft) or give model=")
    # everything that can refuse is checked before anything is written
    if cfg.format.startswith("gguf"):
        _converter(cfg), _need_llama_cpp()
    skip = _bnb_skip(src) if cfg.format == "bnb-4bit" else []
    out = stage_dir(cfg.runs_dir, cfg.run, "quantize", f"{cfg.name}-{cfg.format}")
    fallbacks = Fallbacks()
    with staging(out) as tmp:
        if cfg.format.startswith("gguf"):
            info = _gguf(cfg, src, tmp / "model", fallbacks)
            info["roundtrip"] = _roundtrip_gguf(tmp / "model")
        else:
            info = _bnb(cfg, src, tmp / "model", fallbacks, skip)
        atomic_write_json(tmp / "check.json", info.pop("roundtrip", None) or
                          {k: info[k] for k in ("greedy_next_token_agreement", "max_abs_logit_delta", "strings")})
        sizes = {"source_mb": _size_mb(src / "model.safetensors") if (src / "model.safetensors").is_file()
                 else _size_mb(src), "quantized_mb": _size_mb(tmp / "model" / "model.gguf")
                 if cfg.format.startswith("gguf") else _size_mb(tmp / "model" / "model.safetensors")}
        atomic_write_json(tmp / "model" / "quantized_from.json",
                          {"source": str(src), "format": cfg.format, "code": "distill quantize"})
        finish(tmp, "quantize", cfg, {"model": src / "model.safetensors"} if (src / "model.safetensors").is_file()
               else {}, sizes, started, fallbacks=fallbacks.items, quantize=info)
    print(f"quantize: {src} -> {out / 'model'} ({cfg.format}, {sizes['quantized_mb']} MB from "
          f"{sizes['source_mb']} MB); check passed: {out / 'check.json'}")
    return out


if __name__ == "__main__":
    _convert_main(*sys.argv[1:6])
