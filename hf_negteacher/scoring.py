"""Answer log-probabilities and perplexity of a causal LM, batched."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm


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


@torch.no_grad()
def completion_logprobs(model, prompt_ids: Sequence[Sequence[int]], completion_ids: Sequence[Sequence[int]], *,
                        pad_token_id: int, batch_size: int = 16, progress: bool = False) -> list[tuple[float, int]]:
    """Per row: (sum of the completion tokens' log-probabilities given the prompt, their number)."""
    device = next(model.parameters()).device
    results: list[tuple[float, int]] = []
    for start in tqdm(range(0, len(prompt_ids), batch_size), desc="scoring answers", disable=not progress):
        rows = list(zip(prompt_ids[start:start + batch_size], completion_ids[start:start + batch_size], strict=True))
        width = max(len(p) + len(a) for p, a in rows)
        input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
        attention = torch.zeros_like(input_ids)
        completion_mask = torch.zeros_like(input_ids, dtype=torch.bool)
        for i, (p, a) in enumerate(rows):
            input_ids[i, : len(p) + len(a)] = torch.tensor([*p, *a])
            attention[i, : len(p) + len(a)] = 1
            completion_mask[i, len(p): len(p) + len(a)] = True
        logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits.float()
        logprobs = torch.log_softmax(logits[:, :-1], dim=-1)
        token_logprobs = logprobs.gather(-1, input_ids[:, 1:].to(device).unsqueeze(-1)).squeeze(-1)
        mask = completion_mask[:, 1:].to(device)
        sums = (token_logprobs * mask).sum(-1)
        results.extend((float(s), int(n)) for s, n in zip(sums.tolist(), mask.sum(-1).tolist(), strict=True))
    return results


def perplexity(scores: Sequence[tuple[float, int]]) -> float:
    """Token-weighted perplexity of (sum log-prob, tokens) pairs."""
    tokens = sum(n for _, n in scores)
    if not tokens:
        raise ValueError("perplexity of zero tokens is undefined")
    return math.exp(-sum(s for s, _ in scores) / tokens)
