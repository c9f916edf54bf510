"""The GPU student recipes: their architectures match the model cards, their settings exist, and the accelerate
engine configs load with accelerate's own loader. Nothing is downloaded: models are built on the meta device."""

import dataclasses
from pathlib import Path

import pytest
import yaml

from distill.cli import STAGES, _config_class
from distill.config import build, keys, load_recipe
from distill.planner import architecture, load_arch

ROOT = Path(__file__).resolve().parents[1]
# Model cards' "Number of Parameters", which cut (not round) to three digits: 7,615,616,512 is "7.61B" and
# 14,770,033,664 is "14.7B". Qwen2.5-Math-1.5B has Qwen2.5-1.5B's shape (1.54B, tied embeddings). The 32B card's
# "32.5B" does not follow from its own config.json: 64 layers x 487.6M + 2 x 778.6M embeddings = 32.76B (its
# "31.0B non-embedding" is likewise below 64 x 487.6M = 31.2B), so the 32B is held to the exact count instead.
CARDS = {"qwen2.5-1.5b": 1.54e9, "qwen2.5-7b": 7.61e9, "qwen2.5-14b": 14.7e9, "qwen2.5-32b": 32.7e9}
EXACT = {"qwen2.5-7b": 7_615_616_512, "qwen2.5-32b": 32_763_876_352}
ENGINES = {"ddp": ("MULTI_GPU", None), "fsdp": ("FSDP", None), "zero2": ("DEEPSPEED", 2),
           "zero3": ("DEEPSPEED", 3), "zero3_offload": ("DEEPSPEED", 3)}


def _three_digits(x: int) -> float:
    digits = len(str(x)) - 3
    return float(x // 10**digits * 10**digits)


@pytest.mark.parametrize("name", sorted(CARDS))
def test_architecture_matches_model_card(name):
    recipe = load_recipe(str(ROOT / "students" / f"{name}.yaml"))
    arch = architecture(load_arch(str(ROOT / recipe["plan"]["arch"])))
    assert _three_digits(arch["params"]) == CARDS[name], arch["params"]
    assert arch["class"] == "Qwen2DecoderLayer"  # the wrap unit named in students/accelerate/fsdp.yaml
    if name in EXACT:
        assert arch["params"] == EXACT[name]


@pytest.mark.parametrize("name", sorted(CARDS))
def test_recipe_builds_and_trl_settings_exist(name):
    import trl

    path = ROOT / "students" / f"{name}.yaml"
    recipe = load_recipe(str(path))
    all_fields = {k for s in STAGES for k in keys(_config_class(s))}
    sft = build(_config_class("sft"), "sft", recipe, {}, str(path), set(STAGES), all_fields)
    plan = build(_config_class("plan"), "plan", recipe, {}, str(path), set(STAGES), all_fields)
    assert plan.training == recipe["sft"]  # the YAML alias: the plan sees exactly the sft section
    unknown = set(sft.trl) - {f.name for f in dataclasses.fields(trl.SFTConfig)}
    assert not unknown, unknown
    assert sft.trl["packing"] and sft.trl["padding_free"] and sft.attn_implementation == "flash_attention_2"
    assert plan.global_batch == sft.batch_size * sft.grad_accum * plan.gpus


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_accelerate_configs_load(engine):
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(ROOT / "students" / "accelerate" / f"{engine}.yaml"))
    kind, stage = ENGINES[engine]
    assert cfg.distributed_type.name == kind and cfg.mixed_precision == "bf16"
    if stage:
        assert cfg.deepspeed_config["zero_stage"] == stage
        assert cfg.deepspeed_config["offload_optimizer_device"] == ("cpu" if "offload" in engine else "none")
    if engine == "fsdp":
        assert cfg.fsdp_config["fsdp_transformer_layer_cls_to_wrap"] == "Qwen2DecoderLayer"
        assert cfg.fsdp_config["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"


# What each shipped recipe asks for falls back to on this CPU, decided by distill/capabilities.py.
CPU_FALLBACKS = {"flash_attention_2": "sdpa", "Liger kernels": "off", "paged_adamw_8bit": "adamw_bnb_8bit",
                 "bf16 mixed precision": "fp32", "packed rows": "padded rows"}


@pytest.mark.parametrize("name", sorted(CARDS))
def test_recipe_trains_as_shipped_on_cpu(name, built, tmp_path):
    """Every student recipe, as shipped, with a tiny local model in place of its base: packing, padding_free,
    gradient checkpointing, Liger, paged 8-bit AdamW, bf16 and flash-attention each run or fall back, logged
    once and in the manifest, and the plan plans the model that loads (not the recipe's 1.5B-32B)."""
    import json

    from transformers import AutoModelForCausalLM

    from .conftest import distill
    from .test_sft_eval import _data

    data = _data(built) / "train.jsonl"
    tiny = built / "t" / "init" / "tiny"
    proc = distill("sft", "--config", f"students/{name}.yaml", f"model={tiny}", f"data={data}", "trl.max_steps=2",
                   f"runs_dir={tmp_path}")
    out = tmp_path / "qwen" / "sft" / name
    m = json.loads((out / "manifest.json").read_text())
    assert {f["wanted"]: f["used"] for f in m["fallbacks"]} == CPU_FALLBACKS
    for wanted in CPU_FALLBACKS:  # each logged once
        assert proc.stderr.count(f"fallback: {wanted} ->") == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert m["counts"]["steps"] == 2 and m["optimizer"] == "adamw_bnb_8bit"
    used = {k: v["used"] for k, v in m["capabilities"]["decisions"].items()}
    assert used == {"attention": "sdpa", "liger": "off", "optimizer": "adamw_bnb_8bit", "precision": "fp32",
                    "dtype": "float32", "engine": "ddp", "batching": "padded rows"}
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["trl"]["packing"] and cfg["trl"]["padding_free"] and cfg["gradient_checkpointing"]
    # planned: the tiny model that loaded, with this machine's features, on one process
    assert m["plan"]["shape"]["attn"] == "sdpa" and m["plan"]["shape"]["head"] == "logits"
    assert not m["plan"]["shape"]["packed"]
    assert m["plan"]["params"] == 19_552 and m["plan"]["gb"] < 80
    assert m["memory"]["peak_gb"] > 0
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    assert model.config._attn_implementation == "sdpa" and model.num_parameters() == 19_552
