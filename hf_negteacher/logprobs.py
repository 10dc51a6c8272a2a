"""Answer log-probabilities and perplexity of a causal LM, batched."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm
from trl.trainer.utils import pad, selective_log_softmax


def answer_logprobs(model, tokenizer, prompts: Sequence[str], answers: Sequence[str], *,
                    batch_size: int = 16, progress: bool = False) -> list[tuple[float, int]]:
    """Per row: (sum of log p(answer token | prompt, earlier answer tokens), number of answer tokens).

    Prompt and answer are tokenized separately and concatenated, so the answer's tokens are the
    same whatever the prompt.
    """
    prompt_ids = tokenizer(list(prompts), add_special_tokens=False).input_ids
    answer_ids = tokenizer(list(answers), add_special_tokens=False).input_ids
    return completion_logprobs(model, prompt_ids, answer_ids, pad_token_id=tokenizer.pad_token_id,
                               batch_size=batch_size, progress=progress)


def _completion_sums(model, prompt_ids: Sequence[Sequence[int]], completion_ids: Sequence[Sequence[int]],
                     per_token: Callable[[dict, int], torch.Tensor], *, pad_token_id: int, batch_size: int,
                     progress: bool, desc: str) -> list[tuple[float, int]]:
    """Per row: (a per-token score summed over the completion's tokens, their number). Rows are left-padded
    (positions from the attention mask), so every completion ends the sequence; `per_token(inputs, longest)`
    scores the batch's last `longest` positions."""
    device = next(model.parameters()).device
    results: list[tuple[float, int]] = []
    for start in tqdm(range(0, len(prompt_ids), batch_size), desc=desc, disable=not progress):
        rows = list(zip(prompt_ids[start:start + batch_size], completion_ids[start:start + batch_size], strict=True))
        longest = max(len(a) for _, a in rows)
        if longest == 0:
            results.extend((0.0, 0) for _ in rows)
            continue
        input_ids = pad([torch.tensor([*p, *a], dtype=torch.long) for p, a in rows], pad_token_id,
                        padding_side="left").to(device)
        attention = pad([torch.ones(len(p) + len(a), dtype=torch.long) for p, a in rows], 0,
                        padding_side="left").to(device)
        inputs = {"input_ids": input_ids, "attention_mask": attention,
                  "position_ids": (attention.cumsum(-1) - 1).clamp(min=0)}
        lengths = torch.tensor([len(a) for _, a in rows], device=device)
        mask = torch.arange(longest, device=device)[None] >= longest - lengths[:, None]
        sums = (per_token(inputs, longest) * mask).sum(-1)
        results.extend((float(s), int(n)) for s, n in zip(sums.tolist(), lengths.tolist(), strict=True))
    return results


def _completion_logits(model, inputs: dict, longest: int) -> torch.Tensor:
    """The logits that predict the last `longest` tokens (only those are computed: with a large vocabulary the
    prompt's logits would cost more than the rest of the forward)."""
    return model(**inputs, logits_to_keep=longest + 1).logits[:, -longest - 1:-1].float()


@torch.no_grad()
def completion_logprobs(model, prompt_ids: Sequence[Sequence[int]], completion_ids: Sequence[Sequence[int]], *,
                        pad_token_id: int, batch_size: int = 16, progress: bool = False) -> list[tuple[float, int]]:
    """Per row: (sum of the completion tokens' log-probabilities given the prompt, their number)."""
    def logprobs(inputs: dict, longest: int) -> torch.Tensor:
        return selective_log_softmax(_completion_logits(model, inputs, longest), inputs["input_ids"][:, -longest:])

    return _completion_sums(model, prompt_ids, completion_ids, logprobs, pad_token_id=pad_token_id,
                            batch_size=batch_size, progress=progress, desc="scoring answers")


@torch.no_grad()
def completion_kl(model, reference, prompt_ids: Sequence[Sequence[int]], completion_ids: Sequence[Sequence[int]], *,
                  pad_token_id: int, batch_size: int = 16, progress: bool = False) -> list[tuple[float, int]]:
    """Per row: (sum over the completion's positions of KL(reference || model), the next-token distributions
    given the prompt and the earlier completion tokens, over the full vocabulary; the completion's length)."""
    def kl(inputs: dict, longest: int) -> torch.Tensor:
        theirs = _completion_logits(reference, inputs, longest).log_softmax(-1)
        ours = _completion_logits(model, inputs, longest).log_softmax(-1)
        return torch.nn.functional.kl_div(ours, theirs, log_target=True, reduction="none").sum(-1)

    return _completion_sums(model, prompt_ids, completion_ids, kl, pad_token_id=pad_token_id,
                            batch_size=batch_size, progress=progress, desc="token KL")


@torch.no_grad()
def option_logprobs(model, prompt_ids: Sequence[Sequence[int]], option_ids: Sequence[Sequence[Sequence[int]]], *,
                    pad_token_id: int, batch_size: int = 16, progress: bool = False) -> list[list[float]]:
    """Per prompt: the summed log-probability of each of its options (a continuation) given the prompt.

    The same numbers as `completion_logprobs` on each (prompt, option) row, but each prompt runs once: its
    key/value cache is repeated for its options. Prompts are left-padded (positions from the attention mask)
    and only the last prompt position's logits are kept, so the cost is the prompt once plus the options.
    """
    device = next(model.parameters()).device
    results: list[list[float]] = []
    for start in tqdm(range(0, len(prompt_ids), batch_size), desc="scoring options", disable=not progress):
        prompts, options = prompt_ids[start:start + batch_size], option_ids[start:start + batch_size]
        widths = {len(o) for o in options}
        if len(widths) != 1 or any(not ids for o in options for ids in o):
            raise ValueError("every prompt needs the same number of options, each at least one token long")
        k = widths.pop()
        prompt = pad([torch.tensor(p, dtype=torch.long) for p in prompts], pad_token_id, padding_side="left")
        prompt_mask = pad([torch.ones(len(p), dtype=torch.long) for p in prompts], 0, padding_side="left")
        out = model(input_ids=prompt.to(device), attention_mask=prompt_mask.to(device),
                    position_ids=(prompt_mask.cumsum(-1) - 1).clamp(min=0).to(device), use_cache=True,
                    logits_to_keep=1)
        first = torch.log_softmax(out.logits[:, -1].float(), dim=-1).repeat_interleave(k, 0)
        cache = out.past_key_values
        cache.batch_repeat_interleave(k)
        flat = [torch.tensor(ids, dtype=torch.long) for o in options for ids in o]
        option = pad(flat, pad_token_id).to(device)
        option_mask = pad([torch.ones(len(ids), dtype=torch.long) for ids in flat], 0).to(device)
        sums = first.gather(-1, option[:, :1]).squeeze(-1)
        if option.shape[1] > 1:
            mask = torch.cat([prompt_mask.to(device).repeat_interleave(k, 0), option_mask[:, :-1]], dim=1)
            positions = prompt_mask.sum(-1).to(device).repeat_interleave(k, 0)[:, None] + torch.arange(
                option.shape[1] - 1, device=device)
            logits = model(input_ids=option[:, :-1], attention_mask=mask, position_ids=positions,
                           past_key_values=cache, use_cache=True).logits.float()
            later = selective_log_softmax(logits, option[:, 1:])
            sums = sums + (later * option_mask[:, 1:]).sum(-1)
        results.extend(sums.view(-1, k).tolist())
    return results


def perplexity(scores: Sequence[tuple[float, int]]) -> float:
    """Token-weighted perplexity of (sum log-prob, tokens) pairs."""
    tokens = sum(n for _, n in scores)
    if not tokens:
        raise ValueError("perplexity of zero tokens is undefined")
    return math.exp(-sum(s for s, _ in scores) / tokens)


def rolling_windows(num_tokens: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first scored position) of each window over `[prefix] + tokens`.

    Position p of the prefixed sequence (p >= 1) is scored exactly once, in the first window whose input
    covers p - 1; each window sees up to `window` input tokens. With stride == window the windows are
    disjoint, as lm-evaluation-harness's rolling loglikelihood with one token of context.
    """
    if window < 1 or not 1 <= stride <= window:
        raise ValueError(f"need window >= 1 and 1 <= stride <= window, got window={window}, stride={stride}")
    windows, scored_until = [], 1  # position 0 is the prefix token, never scored
    begin = 0
    while scored_until <= num_tokens:
        end = min(begin + window, num_tokens)  # the input is sequence[begin:end], predicting begin+1..end
        windows.append((begin, end, scored_until))
        scored_until = end + 1
        begin += stride
    return windows


@torch.no_grad()
def sliding_window_logprob(model, token_ids: Sequence[int], *, window: int, stride: int,
                           prefix_token_id: int, batch_size: int = 8) -> tuple[float, int]:
    """Sum of log p(token | earlier tokens within the window) over every token of a long text, and
    the number of tokens; the first token is predicted from `prefix_token_id` (BOS or EOS).
    Windows of equal length run `batch_size` at a time."""
    device = next(model.parameters()).device
    sequence = torch.tensor([prefix_token_id, *token_ids], device=device)
    windows = rolling_windows(len(token_ids), window, stride)
    total = 0.0
    for length in sorted({end - begin for begin, end, _ in windows}):
        same = [w for w in windows if w[1] - w[0] == length]
        for start in range(0, len(same), batch_size):
            batch = same[start:start + batch_size]
            inputs = torch.stack([sequence[begin:end] for begin, end, _ in batch])
            logprobs = torch.log_softmax(model(input_ids=inputs).logits.float(), dim=-1)
            for row, (begin, end, first) in enumerate(batch):  # position i predicts sequence[begin + i + 1]
                positions = torch.arange(first - 1 - begin, end - begin, device=device)
                total += float(logprobs[row, positions, sequence[first:end + 1]].sum())
    return total, len(token_ids)
