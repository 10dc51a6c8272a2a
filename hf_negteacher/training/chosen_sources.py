"""Where the chosen side comes from: the same kind of seam as the rejected side (`negative_sources`).

A chosen source gives one answer per example, as token ids without the end-of-answer tokens; the
trainer pairs it with the example's negatives (which are filtered against it). Shipped: `reference`, the
dataset's own answer (the default); `policy`, the policy's own answer; and `checkpoint`, the answer of the
model loaded from the unquantized checkpoint. The last two need no reference: rows may then be prompts
alone. Pass your own object as `NegativeTeacherTrainer(..., chosen_source=...)`; one whose
`reads_reference` is False lets prompt-only rows through.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch

from ..generation import GenerationSettings, generate_negative_ids, stop_token_ids
from ..logprobs import completion_logprobs
from ..models import eval_mode
from .negative_sources import SourceError, SourceRequest
from .source_context import SourceContext


@runtime_checkable
class ChosenSource(Protocol):
    """Writes the chosen answer of each example; `context` gives the policy, the teacher, the tokenizer and the
    config."""

    name: str

    def answers(self, context: SourceContext, request: SourceRequest) -> list[list[int]]:
        """Per example, one chosen answer as token ids (no end-of-turn suffix); `request.n` is 1."""
        ...


def reads_reference(source) -> bool:
    """Whether `source` needs each row's reference answer (sources that say nothing do)."""
    return getattr(source, "reads_reference", True)


class ReferenceSource:
    """The dataset's reference answer (what SFT trains on): the default."""

    name = "reference"
    reads_reference = True

    def answers(self, context: SourceContext, request: SourceRequest) -> list[list[int]]:
        return [list(reference) for reference in request.references]


class PolicySource:
    """The policy's own answer, adapter on, as it is at this step (offline: as it is before training): its
    greedy answer, or with `chosen_num_samples` > 1 the best of that many samples by its own length-normalized
    log-probability (`model_answers`). Prompts whose answers are all cut off are counted in
    `chosen/cut_off_fraction`."""

    name = "policy"
    reads_reference = False

    def answer_model(self, policy, args):
        """The model that writes the chosen answers, given the (unwrapped) policy and the config."""
        return policy

    def answers(self, context: SourceContext, request: SourceRequest) -> list[list[int]]:
        with context.policy_for_generation() as policy:
            return self.answers_of(policy, context, request)

    def answers_of(self, model, context: SourceContext, request: SourceRequest) -> list[list[int]]:
        """`model`'s chosen answers to `request`, counted in the batch's `chosen/` statistics."""
        picked = self.picked_answers(model, context, request)
        context.count_chosen([ids for ids, _ in picked], [complete for _, complete in picked])
        return [ids for ids, _ in picked]

    def picked_answers(self, model, context: SourceContext, request: SourceRequest) -> list[tuple[list[int], bool]]:
        """Per prompt of `request`, `model`'s answer and whether it is complete (`model_answers`)."""
        return model_answers(model, context.tokenizer, request.prompts, request.settings,
                             seed=request.seed, num_samples=context.args.chosen_num_samples)


class CheckpointSource(PolicySource):
    """The answer of the model loaded from the unquantized checkpoint (QDPO's direction, arXiv 2407.03051, when
    the policy is 4-bit): `chosen_checkpoint` (default: the policy's own source folder), loaded once without
    quantization or adapter, in the training precision, onto the policy's device, and chosen as `policy`
    chooses. It is a second full copy of the model in memory."""

    name = "checkpoint"

    def __init__(self) -> None:
        self._model = None

    def answers(self, context: SourceContext, request: SourceRequest) -> list[list[int]]:
        return self.answers_of(self.answer_model(context.policy, context.args), context, request)

    def answer_model(self, policy, args):
        if self._model is None:
            from ..models import load_causal_lm

            base = policy.get_base_model() if hasattr(policy, "get_base_model") else policy
            source = args.chosen_checkpoint or base.name_or_path
            if not source:
                raise SourceError("chosen_source='checkpoint': the policy names no checkpoint; set chosen_checkpoint")
            dtype = torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else torch.float32
            device = next(policy.parameters()).device
            self._model = load_causal_lm(source, dtype=dtype).to(device).requires_grad_(False)
        return self._model

    def release(self) -> None:
        """Drop the loaded checkpoint (offline, once its answers are written; loaded again if asked)."""
        self._model = None


@torch.no_grad()
def model_answers(model, tokenizer, prompt_ids: Sequence[list[int]], settings: GenerationSettings, *, seed: int,
                  num_samples: int = 1) -> list[tuple[list[int], bool]]:
    """Per prompt (token ids), `model`'s answer as token ids without the end-of-answer tokens, and whether it is
    complete (`pick_answer`): the greedy answer, or with `num_samples` > 1 the best of that many samples
    (`settings`' temperature) by the model's own length-normalized log-probability."""
    if num_samples == 1:
        settings = dataclasses.replace(settings, temperature=0.0)
    with eval_mode(model):
        candidates = generate_negative_ids(model, prompt_ids, settings, seed=seed, pad_token_id=tokenizer.pad_token_id,
                                           stop_token_ids=stop_token_ids(tokenizer, model),
                                           num_return_sequences=num_samples, synced_gpus=False)
        if num_samples == 1:
            scores = [[0.0] for _ in candidates]
        else:
            flat = completion_logprobs(model, [p for p, c in zip(prompt_ids, candidates, strict=True) for _ in c],
                                       [a for c in candidates for a in c], pad_token_id=tokenizer.pad_token_id,
                                       batch_size=settings.batch_size)
            per_answer = [total / count if count else -math.inf for total, count in flat]
            scores = [per_answer[i * num_samples:(i + 1) * num_samples] for i in range(len(candidates))]
    return [pick_answer(c, s, settings.max_new_tokens) for c, s in zip(candidates, scores, strict=True)]


def pick_answer(candidates: Sequence[list[int]], scores: Sequence[float], max_new_tokens: int
                ) -> tuple[list[int], bool]:
    """The best-scoring complete candidate (not empty, ended before `max_new_tokens`), else the best-scoring
    one; and whether it is complete."""
    complete = [bool(c) and len(c) < max_new_tokens for c in candidates]
    best = max(range(len(candidates)), key=lambda i: (complete[i], scores[i]))
    return list(candidates[best]), complete[best]


CHOSEN_SOURCES: dict[str, type] = {source.name: source
                                   for source in (ReferenceSource, PolicySource, CheckpointSource)}
"""The shipped chosen sources by name (the config's `chosen_source`)."""


def chosen_source(name: str) -> ChosenSource:
    """The shipped chosen source called `name`."""
    if name not in CHOSEN_SOURCES:
        raise SourceError(f"chosen_source={name!r}; allowed: {', '.join(CHOSEN_SOURCES)}")
    return CHOSEN_SOURCES[name]()


def check_checkpoint(source: str, tokenizer, vocab_size: int) -> None:
    """Before any model loads: `chosen_checkpoint` is a model that loads offline and shares the policy's
    vocabulary (its answers and logits must be the policy's tokens). Raises `SourceError` naming the field."""
    from ..models import ModelSourceError, load_tokenizer, vocabulary_size

    try:
        theirs = load_tokenizer(source)
        their_size = vocabulary_size(source)
    except (ModelSourceError, OSError) as error:
        raise SourceError(f"chosen_checkpoint={source!r} cannot be loaded: {error}") from None
    if theirs.get_vocab() != tokenizer.get_vocab() or their_size != vocab_size:
        raise SourceError(f"chosen_checkpoint={source!r} has another vocabulary ({len(theirs)} tokens, output size "
                          f"{their_size}) than the policy ({len(tokenizer)} tokens, output size {vocab_size}): name "
                          "the unquantized checkpoint of the policy's own model")
