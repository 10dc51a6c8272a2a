"""Prompt-only rows and the `policy` chosen source: the policy's own answer is chosen, no reference needed."""

import copy
import dataclasses
import re

import pytest
import torch
from bad_inputs import other_vocabulary_checkpoint
from peft import LoraConfig

from hf_negteacher import NegativeTeacherConfig, NegativeTeacherTrainer
from hf_negteacher.data.rows import DataFormatError, load_rows, preference_row, validate_rows
from hf_negteacher.generation import generate_negative_ids, stop_token_ids
from hf_negteacher.training.chosen_sources import pick_answer
from hf_negteacher.training.config import ConfigError
from hf_negteacher.training.negative_sources import example_key

PROMPTS = [{"messages": row["messages"][:1]} for row in load_rows("bundled:train")[:8]]


def config(tmp_path, **overrides) -> NegativeTeacherConfig:
    values = dict(output_dir=str(tmp_path), use_cpu=True, bf16=False, max_steps=1, per_device_train_batch_size=4,
                  max_length=96, gradient_checkpointing=False, negatives_max_new_tokens=6,
                  teacher="int3,group_size=32", report_to=[], logging_steps=1, save_strategy="no", seed=0,
                  chosen_source="policy")
    return NegativeTeacherConfig(**{**values, **overrides})


def lora() -> LoraConfig:
    return LoraConfig(r=4, lora_alpha=8, target_modules="all-linear")


def recorded_requests(trainer) -> list:
    """The requests the trainer's chosen source is asked, appended as they come."""
    requests, answers = [], trainer.chosen_source.answers
    trainer.chosen_source.answers = lambda t, r: requests.append(r) or answers(t, r)
    return requests


def moved(trainer) -> bool:
    return any(v.abs().sum() > 0 for k, v in trainer.model.named_parameters() if "lora_B" in k)


def test_prompt_only_rows_are_accepted_only_where_a_model_writes_the_chosen_side(smol_tokenizer):
    rows = [{"messages": [{"role": "user", "content": "Define cat."}]}, {"prompt": "Define dog:"}]
    pairs = validate_rows(rows, smol_tokenizer, require_answer=False)
    assert [p.answer for p in pairs] == ["", ""]
    assert pairs[0].prompt.endswith("<|im_start|>assistant\n") and pairs[1].prompt == "Define dog:"
    with pytest.raises(DataFormatError, match=r"row 0: a prompt alone.*chosen_source: policy"):
        validate_rows(rows, smol_tokenizer)
    assert preference_row(rows[0])["chosen"] == [{"role": "assistant", "content": ""}]
    assert preference_row(rows[1]) == {"prompt": "Define dog:", "chosen": ""}
    with pytest.raises(DataFormatError, match="or, for prompts alone"):
        validate_rows([{"question": "?"}], smol_tokenizer, require_answer=False)


def test_pick_answer_takes_the_best_complete_answer_then_the_best_cut_off_one():
    # max_new_tokens 4: [1, 2, 3, 4] ran to the limit, [] is empty; both lose to a complete answer.
    assert pick_answer([[1, 2, 3, 4], [5, 6], [], [7]], [-0.1, -2.0, 0.0, -3.0], 4) == ([5, 6], True)
    assert pick_answer([[1, 2, 3, 4], [5, 6, 7, 8]], [-1.0, -0.5], 4) == ([5, 6, 7, 8], False)


def test_policy_greedy_answers_are_chosen_and_prompts_alone_train(tiny_chat_model, smol_tokenizer, tmp_path):
    untrained = copy.deepcopy(tiny_chat_model).eval()
    trainer = NegativeTeacherTrainer(tiny_chat_model, config(tmp_path), PROMPTS, processing_class=smol_tokenizer,
                                     peft_config=lora())
    requests = recorded_requests(trainer)
    trainer.train()
    request = requests[0]
    assert all(not reference for reference in request.references)  # nothing to read: prompts alone
    greedy = request.settings.__class__(**{**vars(request.settings), "temperature": 0.0})
    # At step 0 the adapter is still zero: the policy's greedy answers are the untrained model's.
    expected = generate_negative_ids(untrained, request.prompts, greedy, seed=request.seed,
                                     pad_token_id=smol_tokenizer.pad_token_id,
                                     stop_token_ids=stop_token_ids(smol_tokenizer, untrained))
    by_prompt = {tuple(e["prompt_ids"]): e for e in trainer.train_dataset}
    for prompt, (answer,) in zip(request.prompts, expected, strict=True):
        _, chosen, negatives = trainer.online.cache[example_key(by_prompt[tuple(prompt)])]
        assert chosen == answer and negatives[0] != chosen
    log = trainer.state.log_history[0]
    assert log["chosen/mean_length"] == pytest.approx(sum(len(a) for (a,) in expected) / 4)
    assert log["chosen/cut_off_fraction"] == pytest.approx(sum(len(a) == 6 for (a,) in expected) / 4)
    assert moved(trainer)


def test_chosen_answers_have_their_own_length_limit(tiny_chat_model, smol_tokenizer, tmp_path):
    untrained = copy.deepcopy(tiny_chat_model).eval()
    trainer = NegativeTeacherTrainer(tiny_chat_model, config(tmp_path, chosen_max_new_tokens=11), PROMPTS[:4],
                                     processing_class=smol_tokenizer, peft_config=lora())
    requests = recorded_requests(trainer)
    trainer.online.pairs([dict(e) for e in trainer.train_dataset])
    request = requests[0]
    assert request.settings.max_new_tokens == 11 and trainer.args.generation_settings().max_new_tokens == 6
    greedy = dataclasses.replace(request.settings, temperature=0.0)
    expected = generate_negative_ids(untrained, request.prompts, greedy, seed=request.seed,
                                     pad_token_id=smol_tokenizer.pad_token_id,
                                     stop_token_ids=stop_token_ids(smol_tokenizer, untrained))
    assert max(len(a) for (a,) in expected) > 6  # the test tells the two limits apart
    cached = list(trainer.online.cache.values())
    assert sorted(chosen for _, chosen, _ in cached) == sorted(a for (a,) in expected)
    assert all(len(negative) <= 6 for _, _, negatives in cached for negative in negatives)
    with pytest.raises(ConfigError, match="chosen_max_new_tokens=0 must be >= 1"):
        config(tmp_path, chosen_max_new_tokens=0)


def test_best_of_n_is_chosen_by_the_policys_length_normalized_log_probability(tiny_chat_model, smol_tokenizer,
                                                                               tmp_path):
    untrained = copy.deepcopy(tiny_chat_model).eval()
    args = config(tmp_path, chosen_num_samples=3, negatives_temperature=1.0)
    trainer = NegativeTeacherTrainer(tiny_chat_model, args, PROMPTS[:4], processing_class=smol_tokenizer,
                                     peft_config=lora())
    examples = [dict(e) for e in trainer.train_dataset]
    requests = recorded_requests(trainer)
    pairs = trainer.online.pairs(examples)
    request = requests[0]
    samples = generate_negative_ids(untrained, request.prompts, request.settings, seed=request.seed,
                                    pad_token_id=smol_tokenizer.pad_token_id,
                                    stop_token_ids=stop_token_ids(smol_tokenizer, untrained), num_return_sequences=3)
    suffix = examples[0]["rejected_ids"]
    for prompt, candidates, pair in zip(request.prompts, samples, pairs, strict=True):
        def mean_logprob(answer, prompt=prompt):
            with torch.no_grad():
                logprobs = torch.log_softmax(untrained(input_ids=torch.tensor([prompt + answer])).logits[0], -1)
            return sum(logprobs[len(prompt) - 1 + i, t].item() for i, t in enumerate(answer)) / len(answer)
        assert len({tuple(c) for c in candidates}) > 1  # sampled: the choice is a real one
        complete = [c for c in candidates if 0 < len(c) < 6] or candidates
        assert pair["chosen_ids"] == max(complete, key=mean_logprob) + suffix


def test_sft_on_the_policys_own_answers_writes_only_the_chosen_side(tiny_chat_model, smol_tokenizer, tmp_path):
    trainer = NegativeTeacherTrainer(tiny_chat_model, config(tmp_path, loss_type=["sft"]), PROMPTS,
                                     processing_class=smol_tokenizer, peft_config=lora())
    trainer.teacher.generate = lambda *a, **k: pytest.fail("the teacher generated")
    trainer.train()
    cached = list(trainer.online.cache.values())
    assert len(cached) == 4 and all(negatives == [[]] and chosen for _, chosen, negatives in cached)
    assert "negatives/mean_length" not in trainer.state.log_history[0] and moved(trainer)


def test_prompt_only_rows_need_a_chosen_source_that_writes_answers(tiny_chat_model, smol_tokenizer, tmp_path):
    with pytest.raises(DataFormatError, match=r"row 0: a prompt alone"):
        NegativeTeacherTrainer(tiny_chat_model, config(tmp_path, chosen_source="reference"), PROMPTS,
                               processing_class=smol_tokenizer, peft_config=lora())
    with pytest.raises(ConfigError, match="chosen_num_samples=2 with negatives_temperature=0"):
        config(tmp_path, chosen_num_samples=2, negatives_temperature=0)


def test_without_reference_keeps_the_prompt_and_drops_the_answer(smol_tokenizer):
    from hf_negteacher.data.rows import without_reference

    row = load_rows("bundled:reverse-train")[0]
    alone = without_reference(row)
    assert alone == {"messages": row["messages"][:1]}
    assert without_reference({"prompt": "Define dog:", "completion": " A canine."}) == {"prompt": "Define dog:"}
    [pair] = validate_rows([alone], smol_tokenizer, require_answer=False)
    assert pair.answer == "" and pair.prompt == validate_rows([row], smol_tokenizer)[0].prompt


def test_losses_for_weak_vs_weaker_pairs_train_from_the_config(tiny_chat_model, smol_tokenizer, tmp_path):
    # TRL's own: length-normalized DPO (delta learning's setting, with a large beta), APO-zero, WPO weighting.
    settings = {"sigmoid": {}, "sigmoid_norm, beta 5": {"loss_type": ["sigmoid_norm"], "beta": 5.0},
                "apo_zero": {"loss_type": ["apo_zero"]}, "use_weighting": {"use_weighting": True}}
    second_loss = {}
    for name, overrides in settings.items():
        values = {"loss_type": ["sigmoid"], "max_steps": 2, **overrides}
        trainer = NegativeTeacherTrainer(copy.deepcopy(tiny_chat_model), config(tmp_path / name, **values),
                                         PROMPTS[:4], processing_class=smol_tokenizer, peft_config=lora())
        trainer.train()
        second_loss[name] = trainer.state.log_history[1]["loss"]  # at step 0 policy = reference: every margin 0
        assert torch.isfinite(torch.tensor(second_loss[name])) and moved(trainer), name
    # The same prompts and seeds under four objectives: four different losses after one update.
    assert len({round(v, 6) for v in second_loss.values()}) == 4, second_loss


def test_checkpoint_answers_come_from_the_unquantized_checkpoint_not_the_policy(tiny_chat_model, tiny_base_dir,
                                                                                smol_tokenizer, tmp_path):
    from hf_negteacher.models import load_causal_lm

    checkpoint = load_causal_lm(str(tiny_base_dir)).eval()
    policy = copy.deepcopy(tiny_chat_model)
    torch.manual_seed(3)
    with torch.no_grad():  # the policy drifts from its checkpoint (as a 4-bit copy does)
        for parameter in policy.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    args = config(tmp_path, chosen_source="checkpoint", chosen_checkpoint=str(tiny_base_dir))
    trainer = NegativeTeacherTrainer(policy, args, PROMPTS[:4], processing_class=smol_tokenizer, peft_config=lora())
    examples = [dict(e) for e in trainer.train_dataset]
    requests = recorded_requests(trainer)
    pairs = trainer.online.pairs(examples)
    request = requests[0]
    greedy = request.settings.__class__(**{**vars(request.settings), "temperature": 0.0})
    stops = stop_token_ids(smol_tokenizer, checkpoint)
    expected = generate_negative_ids(checkpoint, request.prompts, greedy, seed=0,
                                     pad_token_id=smol_tokenizer.pad_token_id, stop_token_ids=stops)
    drifted = generate_negative_ids(trainer.accelerator.unwrap_model(trainer.model).eval(), request.prompts, greedy,
                                    seed=0, pad_token_id=smol_tokenizer.pad_token_id, stop_token_ids=stops)
    suffix = examples[0]["rejected_ids"]
    assert [p["chosen_ids"] for p in pairs] == [answer + suffix for (answer,) in expected]
    assert expected != drifted  # the test can tell the two apart


def greedy_answers(model, tokenizer, rows, settings) -> tuple[list[str], list[list[int]]]:
    """`model`'s greedy answers to `rows`' prompts, generated apart from the library's chosen sources."""
    prompts = [tokenizer(p.prompt, add_special_tokens=False).input_ids
               for p in validate_rows(rows, tokenizer, require_answer=False)]
    ids = [a for (a,) in generate_negative_ids(model, prompts, settings, seed=0, pad_token_id=tokenizer.pad_token_id,
                                               stop_token_ids=stop_token_ids(tokenizer, model))]
    return [tokenizer.decode(a, skip_special_tokens=True).strip() for a in ids], ids


def test_offline_pairs_choose_the_checkpoints_answer_and_say_so(tiny_chat_model, tiny_base_dir, smol_tokenizer,
                                                                tmp_path):
    from hf_negteacher.models import load_causal_lm

    checkpoint = load_causal_lm(str(tiny_base_dir)).eval()
    policy = copy.deepcopy(tiny_chat_model)
    torch.manual_seed(3)
    with torch.no_grad():
        for parameter in policy.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    drifted = copy.deepcopy(policy).eval()
    args = config(tmp_path, negatives_mode="offline", chosen_source="checkpoint", chosen_checkpoint=str(tiny_base_dir),
                  chosen_max_new_tokens=9)
    trainer = NegativeTeacherTrainer(policy, args, PROMPTS[:4], processing_class=smol_tokenizer, peft_config=lora())
    rows = load_rows(str(tmp_path / "negatives.jsonl"))
    greedy = dataclasses.replace(args.generation_settings(), temperature=0.0, max_new_tokens=9)
    expected, expected_ids = greedy_answers(checkpoint, smol_tokenizer, PROMPTS[:4], greedy)
    assert expected != greedy_answers(drifted, smol_tokenizer, PROMPTS[:4], greedy)[0]  # checkpoint, not policy
    by_row = {r["negteacher"]["row"]: r for r in rows}
    for index, row in by_row.items():
        assert row["chosen"] == [{"role": "assistant", "content": expected[index]}]
        assert row["rejected"][0]["content"] != expected[index]  # negatives are filtered against the chosen side
        complete = 0 < len(expected_ids[index]) < 9
        assert row["negteacher"]["chosen"] == {"source": "checkpoint", "num_samples": 1, "complete": complete}
    assert max(len(a) for a in expected_ids) > 6  # chosen answers longer than the negatives' limit
    cut_off = sum(not 0 < len(a) < 9 for a in expected_ids)
    assert trainer.negatives_meta["chosen"] == {"source": "checkpoint", "num_samples": 1, "max_new_tokens": 9,
                                                "cut_off": cut_off}
    assert trainer.chosen_source._model is None  # the second copy is not kept through training
    trainer.train()
    assert moved(trainer) and trainer.online.generation_calls == 0


def test_offline_files_are_not_reused_across_chosen_sources(tiny_chat_model, smol_tokenizer, tmp_path):
    rows = load_rows("bundled:train")[:4]
    reference = NegativeTeacherTrainer(copy.deepcopy(tiny_chat_model), config(tmp_path, negatives_mode="offline",
                                                                              chosen_source="reference"),
                                       rows, processing_class=smol_tokenizer, peft_config=lora())
    assert all(r["negteacher"]["chosen"] == {"source": "reference"} for r in reference.train_dataset)
    policy = NegativeTeacherTrainer(tiny_chat_model, config(tmp_path, negatives_mode="offline"), rows,
                                    processing_class=smol_tokenizer, peft_config=lora())
    assert all(r["negteacher"]["chosen"]["source"] == "policy" for r in policy.train_dataset)
    references = [r["messages"][-1]["content"] for r in rows]
    assert all(r["chosen"][0]["content"] != references[r["negteacher"]["row"]] for r in policy.train_dataset)


def test_generate_command_writes_the_policys_answers_for_prompts_alone(tiny_base_dir, smol_tokenizer, tmp_path,
                                                                       capsys):
    from hf_negteacher.cli import main
    from hf_negteacher.data.rows import without_reference
    from hf_negteacher.generation import GenerationSettings
    from hf_negteacher.models import load_causal_lm

    main(["generate", "--model_name_or_path", str(tiny_base_dir), "--load_in_4bit", "false", "--teacher",
          "int3,group_size=32", "--num_train_rows", "3", "--eval_dataset", "", "--drop_references", "true",
          "--chosen_source", "policy", "--negatives_max_new_tokens", "4", "--output_dir", str(tmp_path),
          "--use_cpu", "true"])
    rows = load_rows(str(tmp_path / "negatives.jsonl"))
    prompts = [without_reference(row) for row in load_rows("bundled:train")[:3]]
    expected, _ = greedy_answers(load_causal_lm(str(tiny_base_dir)).eval(), smol_tokenizer, prompts,
                                 GenerationSettings(max_new_tokens=4, temperature=0.0))
    assert rows and all(r["chosen"][0]["content"] == expected[r["negteacher"]["row"]] for r in rows)
    assert all(r["negteacher"]["chosen"]["source"] == "policy" for r in rows)
    assert "chosen: policy; " in capsys.readouterr().out


def test_an_offline_file_is_rewritten_when_the_chosen_models_adapter_changed(tiny_chat_model, smol_tokenizer,
                                                                             tmp_path):
    from peft import get_peft_model

    from hf_negteacher import build_negative_teacher
    from hf_negteacher.generation import GenerationSettings
    from hf_negteacher.training.offline import OfflineChosen, generate_preference_dataset

    teacher = build_negative_teacher(tiny_chat_model, "int3", group_size=32)
    policy = get_peft_model(copy.deepcopy(tiny_chat_model), lora())
    pairs = validate_rows(PROMPTS[:2], smol_tokenizer, require_answer=False)

    def generate() -> dict:
        return generate_preference_dataset(teacher, smol_tokenizer, PROMPTS[:2], pairs, tmp_path / "n.jsonl",
                                           settings=GenerationSettings(max_new_tokens=4),
                                           teacher_spec="int3,group_size=32", chosen=OfflineChosen("policy", policy),
                                           progress=False)

    meta = generate()
    assert meta["chosen"]["max_new_tokens"] == 4  # no limit of its own: the negatives'
    first = meta["fingerprint"]
    assert generate()["fingerprint"] == first  # the same adapter: the file is reused
    with torch.no_grad():
        for name, parameter in policy.named_parameters():
            if "lora_B" in name:
                parameter.add_(0.5)
    assert generate()["fingerprint"] != first


@pytest.mark.parametrize("loss_type", [["sigmoid"], ["sft", "checkpoint_kd"]])
def test_a_missing_or_foreign_chosen_checkpoint_is_refused_before_any_generation(tiny_chat_model, smol_tokenizer,
                                                                                 tmp_path, loss_type):
    from hf_negteacher.training.negative_sources import SourceError

    chosen = "checkpoint" if loss_type == ["sigmoid"] else "policy"  # the answers, or the logits alone
    for folder, message in ((tmp_path / "missing", "cannot be loaded"),
                            (other_vocabulary_checkpoint(tmp_path), r"another vocabulary \(96 tokens")):
        args = config(tmp_path, chosen_source=chosen, chosen_checkpoint=str(folder), loss_type=loss_type,
                      loss_weights=[1.0] * len(loss_type), negatives_mode="offline")
        with pytest.raises(SourceError, match=rf"chosen_checkpoint='{re.escape(str(folder))}'.*{message}"):
            NegativeTeacherTrainer(tiny_chat_model, args, PROMPTS[:4], processing_class=smol_tokenizer,
                                   peft_config=lora())
        assert not list(tmp_path.glob("**/negatives*.jsonl"))  # refused before the offline pairs were written
