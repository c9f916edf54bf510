"""distill/capabilities.py: the decision over the whole matrix of machine facts, the real probes on this machine,
and a run that asks for every GPU feature ending with a trained model and its fallbacks logged once."""

import dataclasses
import itertools
import logging
import typing

import pytest

from distill import capabilities as caps
from distill.artifacts import Fallbacks, UserError

GPUS = {"cpu": {"device": "cpu"}, "t4": {"device": "cuda:0", "capability": (7, 5), "bf16": False},
        "a100": {"device": "cuda:0", "capability": (8, 0), "bf16": True},
        "h200": {"device": "cuda:0", "capability": (9, 0), "bf16": True}}
OPTIONAL = {"flash_attn": ("", "2.1.0", "2.8.3"), "flash_attn_3": (False, True), "liger": ("", "0.6.2"),
            "bnb": (False, True), "deepspeed": ("", "0.18.2")}


def _all_facts():
    for gpu, extra in itertools.product(GPUS.values(), itertools.product(*OPTIONAL.values())):
        yield caps.Facts(**gpu, **dict(zip(OPTIONAL, extra)), bnb_error="" if extra[3] else "ImportError: x")


def _all_wants():
    lit = typing.get_args
    for attn, liger, optim, precision, dtype, ckpt, engine, packed in itertools.product(
            lit(caps.Attention), (False, True), lit(caps.Optimizer), lit(caps.Precision), lit(caps.Dtype),
            ("bfloat16", "float32"), ("ddp", "fsdp", "zero2", "zero3"), (False, True)):
        yield caps.Wants(attn, liger, optim, precision, dtype, ckpt, engine, packed)


def test_every_fact_and_want_gets_a_runnable_choice_with_its_reason():
    facts, wants = list(_all_facts()), list(_all_wants())
    assert len(facts) == 4 * 48 and len(wants) == 4 * 2 * 7 * 4 * 4 * 2 * 4 * 2
    seen = set()
    # every fact against a stride through the wants that still reaches every value of each feature's own ask
    for f, w in itertools.product(facts, wants[::13]):
        c = caps.decide(w, f)
        assert c == caps.decide(w, f)  # pure
        for key, choice in c.items():
            assert bool(choice.reason) == choice.fallback, (key, choice)
            seen.add((key, choice.used))
        flash_ok = f.cuda and f.capability >= (8, 0) and caps._version(f.flash_attn) >= caps.FLASH_MIN
        assert c["attention"].used in typing.get_args(caps.Attention)
        if c["attention"].used == "flash_attention_2":
            assert flash_ok
        if c["attention"].used == "flash_attention_3":
            assert f.capability >= (9, 0) and f.flash_attn_3
        if w.attn == "flash_attention_2":
            assert c["attention"].used == ("flash_attention_2" if flash_ok else "sdpa")
        if w.attn in ("sdpa", "eager"):
            assert c["attention"].used == w.attn
        assert c["liger"].used == ("on" if w.liger and f.cuda and f.liger else "off")
        opt = c["optimizer"].used
        assert opt in typing.get_args(caps.Optimizer)
        assert opt not in caps.BNB or f.bnb
        assert not opt.startswith("paged") or f.cuda
        if w.optim in caps.BNB and not f.bnb:
            assert opt == "adamw_torch_fused"
        p = c["precision"].used
        assert p in ("bf16", "fp16", "fp32")
        assert f.cuda or p == "fp32"
        assert p != "bf16" or f.bf16
        if w.precision == "bf16" and f.cuda and not f.bf16:
            assert p == "fp16"
        assert c["dtype"].used != "bfloat16" or f.bf16 or not f.cuda
        engine = "" if w.engine.startswith("zero") and not f.deepspeed else w.engine
        assert c["engine"].used == ("ddp" if engine == "fsdp" and not f.cuda else engine)
        flash = c["attention"].used.startswith("flash")
        assert c["batching"].used == ("packed rows" if w.packed and flash else "padded rows")
    # every outcome of the matrix was reached
    assert {u for k, u in seen if k == "attention"} == set(typing.get_args(caps.Attention))
    assert {u for k, u in seen if k == "precision"} == {"bf16", "fp16", "fp32"}
    assert {u for k, u in seen if k == "optimizer"} == set(typing.get_args(caps.Optimizer))
    assert {u for k, u in seen if k == "batching"} == {"packed rows", "padded rows"}


def test_the_box_of_first_contact():
    # an H200 with torch's CUDA but no flash-attn, liger-kernel or DeepSpeed, and bitsandbytes installed
    box = caps.Facts(device="cuda:0", capability=(9, 0), bf16=True, bnb=True)
    recipe = caps.Wants(attn="flash_attention_2", liger=True, optim="paged_adamw_8bit", precision="bf16",
                        checkpoint_dtype="bfloat16", packed=True)
    c = caps.decide(recipe, box)
    assert c["attention"] == caps.Choice("flash_attention_2", "sdpa",
                                         "flash_attn is not installed (pip install -e '.[gpu]'; it builds from source)")
    assert c["liger"].used == "off" and "liger-kernel is not installed" in c["liger"].reason
    assert c["optimizer"] == caps.Choice("paged_adamw_8bit", "paged_adamw_8bit")  # paged 8-bit runs there
    assert c["precision"] == caps.Choice("bf16", "bf16") and c["dtype"].used == "bfloat16"
    assert c["batching"].used == "padded rows" and "varlen" in c["batching"].reason
    assert caps.decide(recipe, dataclasses.replace(box, flash_attn="2.8.3"))["batching"].used == "packed rows"
    # a T4 (7.5): no FlashAttention-2 and no bf16
    t4 = dataclasses.replace(box, capability=(7, 5), bf16=False, flash_attn="2.8.3")
    c = caps.decide(recipe, t4)
    assert c["attention"].used == "sdpa" and "8.0 (Ampere)" in c["attention"].reason
    assert c["precision"].used == "fp16" and c["dtype"].used == "float16"


def test_record_logs_each_fallback_once_and_refuses_what_has_none(caplog):
    cpu = caps.Facts()
    c = caps.decide(caps.Wants(attn="flash_attention_2", liger=True, optim="paged_adamw_8bit", precision="bf16"), cpu)
    fb = Fallbacks()
    with caplog.at_level(logging.WARNING, logger="distill"):
        caps.record(c, fb)
        caps.record(c, fb)  # a second model of the same run: nothing new is logged
    assert [f["wanted"] for f in fb.items] == ["flash_attention_2", "Liger kernels", "paged_adamw_8bit",
                                               "bf16 mixed precision"]
    assert len([r for r in caplog.records if "fallback" in r.getMessage()]) == 4
    with pytest.raises(UserError, match=r"engine zero3: DeepSpeed is not installed"):
        caps.record(caps.decide(caps.Wants(engine="zero3"), cpu), Fallbacks())


def test_probes_are_real_on_this_machine():
    import importlib.util

    import torch

    f = caps.probe()
    assert f.device == ("cuda:0" if torch.cuda.is_available() else "cpu")
    if importlib.util.find_spec("flash_attn") is None:
        assert f.flash_attn == "" and caps.decide(caps.Wants(attn="flash_attention_2"), f)["attention"].used == "sdpa"
    assert bool(f.deepspeed) == (importlib.util.find_spec("deepspeed") is not None)
    # bitsandbytes' 8-bit AdamW steps on CPU here (its CPU kernels); a probe that fails says why
    assert f.bnb or f.bnb_error
    assert "device" in caps.table(f) and "bitsandbytes" in caps.table(f)
