"""Online pairs: each batch's chosen answer and negatives, written while training, cached and counted."""

from __future__ import annotations

import logging
import math
import time
from collections import Counter

import torch

from ..data.rows import preference_row
from ..logprobs import completion_logprobs
from ..models import eval_mode
from .band import in_band, pair_margins
from .chosen_sources import reads_reference
from .losses import reads_rejected
from .negative_sources import SourceRequest, cut_suffix, example_key
from .source_context import SourceContext
from .trl_private import step_metrics, trainer_tokenizer

logger = logging.getLogger(__name__)

STEP_RATIOS = (
    ("negatives/mean_length", "length", "pairs", "pairs"),
    ("negatives/pairs_per_prompt", "pairs", "prompts", "pairs"),
    ("negatives/filtered_fraction", "filtered", "generated", "generated"),
    ("negatives/fallback_fraction", "fallback", "pairs", "generated"),
    ("negatives/tie_fraction", "ties", "pairs", "pairs"),
    ("band/filtered_fraction", "band_out", "band_scored", "band_scored"),
    ("band/margin_mean", "band_margin", "band_scored", "band_scored"),
    ("chosen/mean_length", "chosen_length", "chosen", "chosen"),
    ("chosen/cut_off_fraction", "chosen_cut_off", "chosen", "chosen"),
)
"""Per-batch metrics (metric, numerator, denominator, logged when this count is nonzero) from `OnlinePairs.stats`."""


class KeepExamples:
    """The online collator: hand the tokenized examples to the trainer's `_prepare_inputs`, which adds the pairs."""

    def __call__(self, examples: list[dict]) -> dict:
        return {"negteacher_examples": examples}


def online_rows(rows: list[dict], keep_dataset_rejected: bool) -> list[dict]:
    """Preference rows whose rejected side is a placeholder for the teacher's answer, plus, when
    kept, each dataset's own rejected answer as a fixed extra pair. An empty answer renders, after TRL's
    tokenization, to exactly the end-of-answer tokens that follow a generated one."""
    out = []
    for row in rows:
        base = preference_row(row)
        dataset_rejected = base.pop("rejected", None)
        empty = [{"role": "assistant", "content": ""}] if isinstance(base["chosen"], list) else ""
        out.append({**base, "rejected": empty, "negteacher_fixed": False})
        if keep_dataset_rejected and dataset_rejected is not None:
            out.append({**base, "rejected": dataset_rejected, "negteacher_fixed": True})
    return out


class OnlinePairs:
    """A `NegativeTeacherTrainer`'s online pairs: the chosen answer (its `chosen_source`) and exactly
    `num_negatives` negatives (its `negative_source`, filtered, optionally kept in the band) per example,
    cached for `refresh_every` steps, with the per-batch statistics of `STEP_RATIOS`."""

    def __init__(self, trainer) -> None:
        self.trainer = trainer
        self.context = SourceContext(trainer)  # what the sources see of the trainer
        self.cache: dict[str, tuple[int, list[int], list[list[int]]]] = {}
        """example key -> (the step it trains at, the chosen answer, exactly num_negatives negatives)"""
        self.stats: Counter[str] = Counter()  # this batch's statistics, reduced over processes when logged
        self.generation_seconds = 0.0  # in this run so far (training and evaluation)
        self.generation_calls = 0
        self._counting: tuple[bool, int] = (True, -1)  # (training, step) whose negatives calls are counted
        self.calls_this_step = 0
        self.warned_ties = False

    @property
    def uses_negatives(self) -> bool:
        """False for losses that never read the rejected side (`sft`, and registered terms that say so):
        then only the chosen answer is written."""
        return reads_rejected(self.trainer.args.loss_type)

    def pairs(self, examples: list[dict]) -> list[dict]:
        """Examples with negatives as `rejected_ids`, exactly `num_negatives` per example, so every
        process holds the same number of pairs (TRL gathers per-pair tensors across processes). Cached
        pairs younger than `refresh_every` steps are reused (older ones dropped), the others generated in one
        batched call.
        Rows marked `negteacher_fixed` (a dataset's own rejected answer, kept) pass through unchanged. With a
        loss that never reads the rejected side (`sft` alone) only the chosen answer is written, one pair per
        example with an empty rejected placeholder."""
        fixed = [e for e in examples if e.get("negteacher_fixed")]
        examples = [e for e in examples if not e.get("negteacher_fixed")]
        step = self.trainer.state.global_step
        refresh_every = self.trainer.args.refresh_every
        self.cache = {key: entry for key, entry in self.cache.items() if step - entry[0] < refresh_every}
        keys = [example_key(e) for e in examples]
        stale = [i for i, key in enumerate(keys) if key not in self.cache]
        if stale:
            self.generate([examples[i] for i in stale], [keys[i] for i in stale], [step] * len(stale))
        out, ties = [], 0
        for example, key in zip(examples, keys, strict=True):
            suffix = example["rejected_ids"]  # the placeholder: end-of-answer tokens only
            _, chosen, negatives = self.cache[key]
            for negative in negatives:
                out.append({"prompt_ids": example["prompt_ids"], "chosen_ids": chosen + suffix,
                            "rejected_ids": negative + suffix})
                self.stats["length"] += len(negative)
                ties += negative == chosen
        if self.uses_negatives:
            self.stats["pairs"] += len(out)
            self.stats["prompts"] += len(examples)
            self.stats["ties"] += ties
            self._warn_on_ties(ties, len(out))
        self.log_stats()
        return out + fixed

    def log_stats(self) -> None:
        """This batch's statistics, summed over processes (every process calls this once per batch)."""
        trainer = self.trainer
        names = sorted({n for ratio in STEP_RATIOS for n in ratio[1:]} | {"reference_logprob", "reference_tokens"})
        local = torch.tensor([float(self.stats[n]) for n in names], device=trainer.accelerator.device)
        total = dict(zip(names, trainer.accelerator.reduce(local, reduction="sum").tolist(), strict=True))
        self.stats.clear()
        metrics = step_metrics(trainer)
        for metric, numerator, denominator, when in STEP_RATIOS:
            if total[when]:
                metrics[metric].append(total[numerator] / total[denominator])
        if total["reference_tokens"]:
            metrics["teacher/reference_ppl"].append(math.exp(-total["reference_logprob"] / total["reference_tokens"]))

    def count_chosen(self, answers: list[list[int]], complete: list[bool]) -> None:
        """A chosen source's statistics for this batch's log: `chosen/mean_length`, `chosen/cut_off_fraction`."""
        self.stats["chosen"] += len(answers)
        self.stats["chosen_length"] += sum(len(a) for a in answers)
        self.stats["chosen_cut_off"] += sum(not c for c in complete)

    def next_seed(self) -> int:
        """The next negatives call's seed: a function of (process, step, call within the step) only, so a
        resumed run samples as the original did. Evaluation counts its calls apart (an evaluation at a save step
        must not shift the seeds of the training step after it, which a resumed run would not)."""
        counting = (self.trainer.model.training, self.trainer.state.global_step)
        if self._counting != counting:
            self._counting, self.calls_this_step = counting, 0
        self.calls_this_step += 1
        call = self.calls_this_step - 1
        return self.seed(call if counting[0] else -2 - call)

    def seed(self, call: int) -> int:
        """Call -1 is the chosen source's (one per batch), 0, 1, ... the negative source's in training, -2, -3,
        ... in evaluation."""
        trainer = self.trainer
        return (trainer.args.generation_settings().seed + 1_000_003 * trainer.accelerator.process_index
                + 7919 * trainer.state.global_step + 104_729 * call)

    def lookahead_steps(self) -> int:
        """How many optimizer steps ahead the trainer generates negatives (`negatives_lookahead`): where they depend
        on neither the policy nor the other examples of a call, else 0 (each micro-batch generates its own)."""
        return self.trainer.args.negatives_lookahead if not self.why_not_ahead() else 0

    def why_not_ahead(self) -> list[str]:
        """What makes the negatives depend on the policy or on the batch, so they cannot be generated ahead."""
        trainer, args = self.trainer, self.trainer.args
        return [reason for reason, applies in (
            ("negatives_mode=offline", args.negatives_mode != "online"),
            ("a loss that reads no rejected side", not self.uses_negatives),
            ("teacher_follow_every", bool(args.teacher_follow_every)),
            ("teacher_strength_target", args.teacher_strength_target is not None),
            ("band_min_margin / band_max_margin", args.band_min_margin is not None or args.band_max_margin is not None),
            (f"chosen_source={trainer.chosen_source.name!r}", not reads_reference(trainer.chosen_source)),
            (f"negative_source={trainer.negative_source.name!r}", not getattr(trainer.negative_source, "per_example",
                                                                              False)),
        ) if applies]

    def prefetch(self, batches: list[tuple[int, list[dict]]]) -> None:
        """Generate, in as few calls as `generation_batch_size` allows, whatever the examples of `batches` (each with
        the optimizer step it will train at) will lack in the cache then."""
        todo: dict[str, tuple[dict, int]] = {}
        for step, examples in batches:
            for example in examples:
                key = example_key(example)
                entry = self.cache.get(key)
                stale = entry is None or step - entry[0] >= self.trainer.args.refresh_every
                if not example.get("negteacher_fixed") and stale and key not in todo:
                    todo[key] = (example, step)
        if todo:
            self.generate([example for example, _ in todo.values()], list(todo), [step for _, step in todo.values()])

    def example_seeds(self, keys: list[str], steps: list[int], attempt: int) -> list[int]:
        """Per example, its seed for try `attempt`: a function of (example, the step it trains at, the try) only,
        so it draws the same negatives however far ahead and with whichever examples it is generated, and as the
        original run did after a resume. Evaluation draws from its own seeds."""
        base = self.trainer.args.generation_settings().seed + (0 if self.trainer.model.training else 15_485_863)
        return [(base + int(key[:10], 16) + 7919 * step + 104_729 * attempt) % 2**40
                for key, step in zip(keys, steps, strict=True)]

    @torch.no_grad()
    def generate(self, examples: list[dict], keys: list[str], steps: list[int]) -> None:
        """The chosen answer and exactly `num_negatives` negatives per example (for the optimizer step in `steps`)
        into the cache: filtered candidates are asked for again, up to `negatives_max_tries` tries in all (at most two
        calls where each example draws from its own seeds), then filled from the filtered candidates (counted as
        fallbacks)."""
        trainer, args = self.trainer, self.trainer.args
        start = time.perf_counter()
        settings = args.generation_settings()
        self.generation_calls += 1
        prompts = [e["prompt_ids"] for e in examples]
        references = [cut_suffix(e["chosen_ids"], e["rejected_ids"]) for e in examples]
        chosen = trainer.chosen_source.answers(self.context, SourceRequest(
            prompts=prompts, references=references, n=1, seed=self.seed(-1),
            settings=args.chosen_generation_settings(), examples=examples))
        if not self.uses_negatives:
            for i, key in enumerate(keys):
                self.cache[key] = (steps[i], chosen[i], [[]])
            self.generation_seconds += time.perf_counter() - start
            return
        negative_filter = trainer.negative_filter
        generated_before, filtered_before = negative_filter.counts["generated"], negative_filter.filtered
        kept: list[list[list[int]]] = [[] for _ in examples]
        candidates: list[list[list[int]]] = [[] for _ in examples]
        short, attempt = list(range(len(examples))), 0
        while short and attempt < args.negatives_max_tries:
            tries = self._next_tries(attempt)
            drawn = self._draw(examples, keys, steps, short, tries, chosen, settings)
            for this_try in tries:
                passing = {}
                for i in short:
                    candidates[i] += drawn[i, this_try]
                    passing[i] = negative_filter.apply(drawn[i, this_try], chosen[i], kept[i])
                if args.band_min_margin is not None or args.band_max_margin is not None:
                    passing = self._in_band(passing, prompts, chosen, examples)
                for i, good in passing.items():
                    kept[i] += good
                short = [i for i in short if len(kept[i]) < args.num_negatives]
                if not short:
                    break
            attempt = tries.stop
        if short:
            logger.info("negatives: %d of %d prompts still short after %d tries; filled from filtered candidates",
                        len(short), len(examples), args.negatives_max_tries)
        for i, key in enumerate(keys):
            missing = args.num_negatives - len(kept[i])
            if missing > 0:
                kept[i] += ([c for c in candidates[i] if c not in kept[i]] + candidates[i])[:missing]
                self.stats["fallback"] += missing
            self.cache[key] = (steps[i], chosen[i], kept[i][: args.num_negatives])
        self.stats["generated"] += negative_filter.counts["generated"] - generated_before
        self.stats["filtered"] += negative_filter.filtered - filtered_before
        if hasattr(trainer.negative_source, "scored_model") and self._logs_this_step():
            # how far the source's model is from the references: one more forward, so only where it is logged
            scored = trainer.negative_source.scored_model(self.context)
            with eval_mode(scored):
                scores = completion_logprobs(scored, prompts, references,
                                             pad_token_id=trainer_tokenizer(trainer).pad_token_id,
                                             batch_size=settings.batch_size)
            self.stats["reference_logprob"] += sum(score for score, _ in scores)
            self.stats["reference_tokens"] += sum(n for _, n in scores)
        self.generation_seconds += time.perf_counter() - start

    def _next_tries(self, attempt: int) -> range:
        """The tries one call draws from `attempt` on: the first alone; then, where each example draws from its own
        seeds, every try left at once for the few examples still short (one call, one prefill), which writes what
        the tries one by one would have, as only the tries an example still needs are read."""
        last = self.trainer.args.negatives_max_tries
        batched = attempt > 0 and getattr(self.trainer.negative_source, "per_example", False)
        return range(attempt, last if batched else attempt + 1)

    def _draw(self, examples, keys, steps, short, tries: range, chosen, settings) -> dict[tuple[int, int], list]:
        """The candidates of each example in `short` at each try in `tries`, from one source call."""
        args = self.trainer.args
        wanted = [(i, attempt) for attempt in tries for i in short]
        seeds = {attempt: dict(zip(short, self.example_seeds([keys[i] for i in short], [steps[i] for i in short],
                                                              attempt), strict=True)) for attempt in tries}
        request = SourceRequest(prompts=[examples[i]["prompt_ids"] for i, _ in wanted],
                                references=[chosen[i] for i, _ in wanted], n=args.num_negatives,
                                seed=self.next_seed(), settings=settings, examples=[examples[i] for i, _ in wanted],
                                example_seeds=[seeds[attempt][i] for i, attempt in wanted])
        return dict(zip(wanted, self.trainer.negative_source.candidates(self.context, request), strict=True))

    def _logs_this_step(self) -> bool:
        """Whether the step being trained ends in a log line (always in evaluation, and for other logging
        strategies than `steps`)."""
        trainer = self.trainer
        args, state = trainer.args, trainer.state
        if not trainer.model.training or args.logging_strategy != "steps":
            return True
        step = state.global_step + 1  # the step being trained, as the Trainer numbers it once done
        return step % (state.logging_steps or args.logging_steps) == 0 or (step == 1 and args.logging_first_step)

    def _warn_on_ties(self, ties: int, pairs: int) -> None:
        """Once per run: most of this batch's pairs have rejected == chosen. Such a pair has no preference gradient
        (its margin is 0 whatever the policy), so only non-preference terms (`sft`) train on it."""
        if self.warned_ties or 2 * ties <= pairs:
            return
        self.warned_ties = True
        logger.warning("negatives: %d of %d pairs at step %d have rejected == chosen (the negative source wrote "
                       "nothing else within negatives_max_tries); they carry no preference gradient. "
                       "negatives/tie_fraction tracks the share from now on. A different negative_source, a higher "
                       "negatives_temperature or more negatives_max_tries give the pairs a rejected side.",
                       ties, pairs, self.trainer.state.global_step)

    def _in_band(self, passing: dict[int, list[list[int]]], prompts, chosen, examples) -> dict[int, list[list[int]]]:
        """The candidates whose pair margin under the current policy lies in the configured band."""
        flat = [(i, candidate) for i, candidates in passing.items() for candidate in candidates]
        if not flat:
            return passing
        args = self.trainer.args
        margins = pair_margins(self.trainer, [prompts[i] for i, _ in flat], [chosen[i] for i, _ in flat],
                               [c for _, c in flat], [examples[i]["rejected_ids"] for i, _ in flat])
        inside: dict[int, list[list[int]]] = {i: [] for i in passing}
        for (i, candidate), margin in zip(flat, margins, strict=True):
            if in_band(margin, args.band_min_margin, args.band_max_margin):
                inside[i].append(candidate)
            else:
                self.stats["band_out"] += 1
            self.stats["band_scored"] += 1
            self.stats["band_margin"] += margin
        return inside
