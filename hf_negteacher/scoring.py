"""Answer log-probabilities and perplexity of a causal LM, batched."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm


@torch.no_grad()
def answer_logprobs(model, tokenizer, prompts: Sequence[str], answers: Sequence[str], *,
                    batch_size: int = 16, progress: bool = False) -> list[tuple[float, int]]:
    """Per row: (sum of log p(answer token | prompt, earlier answer tokens), number of answer tokens).

    Prompt and answer are tokenized separately and concatenated, so the answer's tokens are the
    same whatever the prompt.
    """
    device = next(model.parameters()).device
    results: list[tuple[float, int]] = []
    batches = range(0, len(prompts), batch_size)
    for start in tqdm(batches, desc="scoring", disable=not progress):
        rows = []
        for prompt, answer in zip(prompts[start:start + batch_size], answers[start:start + batch_size], strict=True):
            prompt_ids = tokenizer(prompt, add_special_tokens=False).input_ids
            answer_ids = tokenizer(answer, add_special_tokens=False).input_ids
            rows.append((prompt_ids, answer_ids))
        width = max(len(p) + len(a) for p, a in rows)
        input_ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
        attention = torch.zeros_like(input_ids)
        answer_mask = torch.zeros_like(input_ids, dtype=torch.bool)
        for i, (p, a) in enumerate(rows):
            input_ids[i, : len(p) + len(a)] = torch.tensor(p + a)
            attention[i, : len(p) + len(a)] = 1
            answer_mask[i, len(p): len(p) + len(a)] = True
        logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits.float()
        logprobs = torch.log_softmax(logits[:, :-1], dim=-1)
        token_logprobs = logprobs.gather(-1, input_ids[:, 1:].to(device).unsqueeze(-1)).squeeze(-1)
        mask = answer_mask[:, 1:].to(device)
        sums = (token_logprobs * mask).sum(-1)
        results.extend((float(s), int(n)) for s, n in zip(sums.tolist(), mask.sum(-1).tolist(), strict=True))
    return results


def perplexity(scores: Sequence[tuple[float, int]]) -> float:
    """Token-weighted perplexity of (sum log-prob, tokens) pairs."""
    tokens = sum(n for _, n in scores)
    if not tokens:
        raise ValueError("perplexity of zero tokens is undefined")
    return math.exp(-sum(s for s, _ in scores) / tokens)
