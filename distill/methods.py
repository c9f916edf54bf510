"""What each `sft` method needs beyond plain SFT: its TRL trainer and config, the rows it trains on, and its
teacher. A library for distill/stages/sft.py; it imports no stage.

- `sft`: TRL's SFTTrainer on the traces (distill/training.py adds the CPU loss path).
- `distill`: on-policy distillation, TRL's DistillationTrainer: the student samples completions to the
  training prompts and learns the teacher's next-token distribution on every token of its own samples
  (generalized JSD, `trl.beta`, reverse KL by default). Starts from an SFT'd student. The teacher is a model
  folder loaded beside the student, or a vLLM server's URL (`teacher: http://host:8000/v1`, as `backend:
  openai` takes it), scored through TRL's ServerDistillationTrainer (the server's top-k prompt logprobs; the
  teacher is never loaded here).
- `gkd`: TRL's GKDTrainer: generalized JSD on a mix of the traces (off-policy) and the student's own samples
  (a share `trl.lmbda` of the steps), or sequence-level KD (`trl.seq_kd`); the same tokenizer for both.
- `gold`: TRL's GOLDTrainer, GKD's mix across tokenizers: when the teacher's tokenizer differs from the
  student's, Universal Logit Distillation aligns the two by text (`use_uld_loss`, set here)."""

from __future__ import annotations

import dataclasses
from typing import Literal

from distill import backends, training
from distill.artifacts import UserError

Method = Literal["sft", "distill", "gkd", "gold"]
WITH_TEACHER = ("distill", "gkd", "gold")


def is_server(teacher: str) -> bool:
    return teacher.startswith(("http://", "https://"))


def server_root(url: str) -> str:
    """TRL's client appends /v1/completions itself: the URL a user gives the openai backend, less its /v1."""
    url = url.rstrip("/")
    return url.removesuffix("/v1")


def check_server(url: str, timeout_s: float = 10.0) -> None:
    """One request to the teacher server's /health before any model loads (a wrong URL is one line now, not a
    minute of TRL's retries after the student has loaded), and the vllm package TRL's client needs."""
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(f"{server_root(url)}/health", timeout=timeout_s).close()
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise UserError(f"sft: teacher server {url} does not answer ({type(e).__name__}); start it first "
                        "(a vLLM OpenAI server: `vllm serve <teacher>`)") from None
    import importlib.util

    if importlib.util.find_spec("vllm") is None:  # TRL's vLLM client refuses to start without it
        raise UserError("sft: a server teacher needs vllm installed where sft runs (TRL's vLLM client): "
                        "pip install vllm (on CPU: make install-vllm, then .venv-vllm/bin/distill sft ...)")


def _classes(method: str, server: bool):
    if method == "distill" and server:
        from trl.experimental.server_distillation import ServerDistillationConfig as Config
        from trl.experimental.server_distillation import ServerDistillationTrainer as Trainer
    elif method == "distill":
        from trl import DistillationConfig as Config
        from trl import DistillationTrainer as Trainer
    elif method == "gkd":
        from trl.experimental.gkd import GKDConfig as Config
        from trl.experimental.gkd import GKDTrainer as Trainer
    elif method == "gold":
        from trl.experimental.gold import GOLDConfig as Config
        from trl.experimental.gold import GOLDTrainer as Trainer
    else:
        from trl import SFTConfig as Config

        Trainer = training.sft_trainer()
    return Trainer, Config


def trainer(method: str, ours: dict, recipe: dict, decided: dict, server: bool = False):
    """TRL's trainer and config for the method. `ours` are sft's settings, `recipe` the recipe's `trl:` (over
    ours; an unknown one is an error), `decided` the capabilities' decisions (over both). Of ours and the
    decisions, those the method's config does not have are left out (DistillationConfig is not an
    SFTConfig: no max_length, packing, assistant-only loss). The config is the Trainer's arguments: built
    before the model loads (see training.load_model)."""
    Trainer, Config = _classes(method, server)
    if method in ("gkd", "gold"):
        # their collators tokenize the raw `messages` themselves (prompt + completion): no lengths for
        # batch_rebalance to read, and their loss covers the whole assistant turn anyway
        ours = ours | {"train_sampling_strategy": "random", "assistant_only_loss": False}
    known = {f.name for f in dataclasses.fields(Config)}
    settings = ({k: v for k, v in ours.items() if k in known} | recipe
                | {k: v for k, v in decided.items() if k in known})
    try:
        return Trainer, Config(**settings)
    except (TypeError, ValueError) as e:
        raise UserError(f"sft: bad trl setting for method={method}: {str(e).splitlines()[0]}") from None


def rows(method: str, dataset):
    """The rows the method trains on. `distill` samples its own completions: the prompts alone (each user
    turn once; train.jsonl holds up to keep_per_problem traces of a problem), in the conversational form TRL
    takes."""
    if method != "distill":
        return dataset
    seen, keep = set(), []
    for i, m in enumerate(dataset["messages"]):
        key = repr(m[:-1])
        if key not in seen:
            seen.add(key)
            keep.append(i)
    return dataset.select(keep).map(lambda r: {"prompt": r["messages"][:-1]},
                                    remove_columns=dataset.column_names)


def teacher_settings(cfg) -> dict:
    """The config settings a method's teacher needs before the Trainer's arguments are built: the server's
    URL (distill), the teacher's tokenizer and ULD when the tokenizers differ (gold). gkd's and a local
    distill teacher's vocabulary must be the student's: their divergence compares next-token distributions
    id by id."""
    if cfg.method == "distill" and is_server(cfg.teacher):
        return {"teacher_model_server_url": server_root(cfg.teacher)}
    from transformers import AutoTokenizer

    kw = backends.tokenizer_kwargs(backends.policy(backends.recipe_policy(cfg)))
    vocab = {}
    for key in ("model", "teacher"):  # the tokenizers alone (kB), before the Trainer's arguments and weights
        try:
            vocab[key] = AutoTokenizer.from_pretrained(getattr(cfg, key), **kw).get_vocab()
        except OSError as e:
            raise UserError(f"sft: cannot load {key} {getattr(cfg, key)}'s tokenizer: "
                            f"{str(e).splitlines()[0]}") from None
    same = vocab["model"] == vocab["teacher"]
    if cfg.method == "gold":
        return {"teacher_tokenizer_name_or_path": cfg.teacher, "use_uld_loss": not same}
    if not same:
        raise UserError(f"sft: teacher {cfg.teacher} and student {cfg.model} have different tokenizers; "
                        f"{cfg.method} needs the same one (method=gold distils across tokenizers)")
    return {}


def teacher_loaded(cfg) -> bool:
    """Whether the method loads its teacher beside the student (not for sft, nor a server teacher)."""
    return cfg.method in WITH_TEACHER and not is_server(cfg.teacher)


def teacher_model(cfg, attn: str, dtype: str):
    """The teacher loaded beside the student (None for a server teacher)."""
    if not teacher_loaded(cfg):
        return None
    return training.load_model(cfg.teacher, attn, dtype, backends.recipe_policy(cfg))[0]
