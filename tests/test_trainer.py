"""NegativeTeacherTrainer on a tiny Llama with SmolLM2's tokenizer: modes, refresh, resume, errors."""

import copy
import dataclasses
import json

import pytest
import torch
from peft import LoraConfig
from transformers import TrainerCallback

from hf_negteacher import NegativeTeacherConfig, NegativeTeacherTrainer, build_negative_teacher
from hf_negteacher.data.rows import DataFormatError, load_rows, validate_rows
from hf_negteacher.generation import GenerationSettings, generate_answers, generate_negative_ids, stop_token_ids
from hf_negteacher.training.filters import NegativeFilter
from hf_negteacher.training.negative_sources import example_key
from hf_negteacher.training.offline import generate_preference_dataset
from hf_negteacher.training.source_context import SourceContext

ROWS = load_rows("bundled:train")[:8]


def config(tmp_path, **overrides) -> NegativeTeacherConfig:
    values = dict(output_dir=str(tmp_path), use_cpu=True, bf16=False, max_steps=2, per_device_train_batch_size=4,
                  max_length=96, gradient_checkpointing=False, negatives_max_new_tokens=6,
                  teacher="int3,group_size=32", report_to=[], logging_steps=1, save_strategy="no", seed=0)
    return NegativeTeacherConfig(**{**values, **overrides})


def lora() -> LoraConfig:
    return LoraConfig(r=4, lora_alpha=8, target_modules="all-linear")


def adapter_state(trainer):
    return {k: v.detach().clone() for k, v in trainer.model.named_parameters() if "lora_" in k}


def trained(trainer) -> bool:
    """LoRA B starts at zero: any nonzero B means the optimizer moved the adapter."""
    return any(v.abs().sum() > 0 for k, v in adapter_state(trainer).items() if "lora_B" in k)


def test_online_training_uses_teacher_negatives_and_moves_only_the_adapter(tiny_chat_model, smol_tokenizer, tmp_path):
    trainer = NegativeTeacherTrainer(tiny_chat_model, config(tmp_path), ROWS, processing_class=smol_tokenizer,
                                     peft_config=lora())
    packed_before = {n: b.clone() for n, b in trainer.teacher.named_buffers()}
    initial = adapter_state(trainer)
    generate_kwargs, teacher_generate = [], trainer.teacher.generate
    trainer.teacher.generate = lambda *a, **k: generate_kwargs.append(k) or teacher_generate(*a, **k)
    trainer.train()
    # The teacher is never sharded: ZeRO-3's default synced_gpus would hang processes that generate unevenly.
    assert len(generate_kwargs) == 2 and all(k["synced_gpus"] is False for k in generate_kwargs)
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 2 and all(torch.isfinite(torch.tensor(e["loss"])) for e in logs)
    for key in ("negatives/mean_length", "negatives/filtered_fraction", "teacher/reference_ppl",
                "negatives/generation_time_share", "rewards/margins", "rewards/accuracies"):
        assert key in logs[0], key
    assert 0 < logs[0]["negatives/generation_time_share"] < 1
    assert logs[0]["teacher/reference_ppl"] > 1
    after = adapter_state(trainer)
    assert any(not torch.equal(initial[k], after[k]) for k in initial)
    assert all(torch.equal(packed_before[n], b) for n, b in trainer.teacher.named_buffers())
    assert trainer.online.generation_calls == 2
    cached = [entry[2] for entry in trainer.online.cache.values()]
    assert len(cached) == 4 and all(len(n) == 1 and 0 < len(n[0]) <= 6 for n in cached)  # the last step's alone


def test_the_teachers_reference_perplexity_is_computed_only_for_steps_that_log_it(tiny_chat_model, smol_tokenizer,
                                                                                   tmp_path, monkeypatch):
    import hf_negteacher.training.online as online

    scored_at, score = [], online.completion_logprobs
    args = config(tmp_path, max_steps=4, logging_steps=2)
    trainer = NegativeTeacherTrainer(tiny_chat_model, args, ROWS, processing_class=smol_tokenizer, peft_config=lora())
    monkeypatch.setattr(online, "completion_logprobs",
                        lambda *a, **k: scored_at.append(trainer.state.global_step) or score(*a, **k))
    trainer.train()
    assert scored_at == [1, 3]  # steps 2 and 4 log; before, every step paid the teacher forward
    logged = [e for e in trainer.state.log_history if "loss" in e]
    assert [e["step"] for e in logged] == [2, 4] and all(e["teacher/reference_ppl"] > 1 for e in logged)


def test_refresh_every_reuses_cached_negatives(tiny_chat_model, smol_tokenizer, tmp_path):
    # 8 rows, batch 4: steps 0-1 see every prompt once, steps 2-3 see them again.
    fresh = NegativeTeacherTrainer(copy.deepcopy(tiny_chat_model), config(tmp_path / "a", max_steps=4, refresh_every=1),
                                   ROWS, processing_class=smol_tokenizer, peft_config=lora())
    fresh.train()
    reuse = NegativeTeacherTrainer(tiny_chat_model, config(tmp_path / "b", max_steps=4, refresh_every=10), ROWS,
                                   processing_class=smol_tokenizer, peft_config=lora())
    reuse.train()
    assert fresh.online.generation_calls == 4 and reuse.online.generation_calls == 2
    assert trained(fresh) and trained(reuse)
    assert len(fresh.online.cache) == 4 and len(reuse.online.cache) == 8  # what can still be reused, no more
    reuse.teacher_updates.follow()
    assert reuse.online.cache == {}  # a new teacher: the old one's negatives are never reused


def test_num_negatives_gives_several_pairs_per_prompt(tiny_chat_model, smol_tokenizer, tmp_path):
    trainer = NegativeTeacherTrainer(tiny_chat_model, config(tmp_path, max_steps=1, num_negatives=3,
                                                             negatives_temperature=1.5),
                                     ROWS, processing_class=smol_tokenizer, peft_config=lora())
    trainer.train()
    log = trainer.state.log_history[0]
    assert log["negatives/pairs_per_prompt"] == 3
    assert all(len(entry[2]) == 3 for entry in trainer.online.cache.values())
    assert trained(trainer)


class FilterFirstTries(NegativeFilter):
    """Drops every candidate of the first `tries` generate calls of a batch, whatever it is."""

    def __init__(self, tries: int) -> None:
        super().__init__()
        self.tries, self.seen = tries, 0

    def apply(self, negatives, reference, kept=()):
        self.seen += 1
        if self.seen > self.tries * 4:  # 4 prompts per batch
            return super().apply(negatives, reference, kept)
        self.counts["generated"] += len(negatives)
        self.counts["filtered_test"] += len(negatives)
        return []


@pytest.mark.parametrize("filtered_tries, fallback", [(1, 0.0), (2, 1.0)])
def test_filtered_negatives_are_resampled_then_filled_so_every_prompt_gets_exactly_k(
        tiny_chat_model, smol_tokenizer, tmp_path, filtered_tries, fallback):
    trainer = NegativeTeacherTrainer(tiny_chat_model, config(tmp_path, max_steps=1, num_negatives=2,
                                                             negatives_max_tries=2),
                                     ROWS, processing_class=smol_tokenizer, peft_config=lora())
    trainer.negative_filter = FilterFirstTries(filtered_tries)
    trainer.train()
    log = trainer.state.log_history[0]
    assert log["negatives/pairs_per_prompt"] == 2 and log["negatives/fallback_fraction"] == fallback
    assert log["negatives/filtered_fraction"] == pytest.approx(0.5 if filtered_tries == 1 else 1.0, abs=0.13)
    assert trainer.online.calls_this_step == 2 and trainer.online.generation_calls == 1  # one resample call
    assert all(len(negatives) == 2 for _, _, negatives in trainer.online.cache.values())
    assert log["negatives/tie_fraction"] == 0.0  # filled from the teacher's answers, none equal to the reference
    assert trained(trainer)


class EchoSource:
    """Writes back the chosen answer (`request.references`): every candidate is filtered, every pair a tie."""

    name = "echo"

    def candidates(self, context, request):
        return [[list(reference)] * request.n for reference in request.references]


def test_pairs_whose_rejected_side_equals_the_chosen_are_counted_and_warned_about_once(
        tiny_chat_model, smol_tokenizer, tmp_path, caplog):
    trainer = NegativeTeacherTrainer(tiny_chat_model, config(tmp_path, max_steps=2, negatives_max_tries=2),
                                     ROWS, processing_class=smol_tokenizer, peft_config=lora(),
                                     negative_source=EchoSource())
    with caplog.at_level("WARNING", logger="hf_negteacher.training.online"):
        trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert [log["negatives/tie_fraction"] for log in logs] == [1.0, 1.0]
    assert [log["negatives/fallback_fraction"] for log in logs] == [1.0, 1.0]
    assert [log["rewards/margins"] for log in logs] == [0.0, 0.0]
    warnings = [r.getMessage() for r in caplog.records if "rejected == chosen" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith("negatives: 4 of 4 pairs at step 0")


def test_offline_dataset_is_deterministic_resumable_and_from_the_teacher(tiny_chat_model, smol_tokenizer, tmp_path,
                                                                         monkeypatch):
    teacher = build_negative_teacher(tiny_chat_model, "int3", group_size=32)
    synced = []  # under ZeRO-3 transformers would default to True: uneven shards would wait on each other forever
    real_generate = teacher.generate
    monkeypatch.setattr(teacher, "generate", lambda **kw: synced.append(kw.get("synced_gpus")) or real_generate(**kw))
    pairs = validate_rows(ROWS, smol_tokenizer)
    settings = GenerationSettings(max_new_tokens=6, batch_size=3, seed=5)
    kwargs = dict(settings=settings, teacher_spec="int3,group_size=32")
    meta = generate_preference_dataset(teacher, smol_tokenizer, ROWS, pairs, tmp_path / "a.jsonl", **kwargs)
    full = (tmp_path / "a.jsonl").read_bytes()
    assert synced == [False] * 3  # 8 rows in batches of 3
    rows = [json.loads(line) for line in full.splitlines()]
    assert meta["rows_written"] == len(rows) == 8 - meta["counts"].get("filtered_empty", 0)
    assert rows[0]["negteacher"]["teacher"] == "int3,group_size=32" and rows[0]["negteacher"]["seed"] == 5
    direct = generate_answers(teacher, smol_tokenizer, [p.prompt for p in pairs[:3]], settings)
    assert [r["rejected"][0]["content"] for r in rows if r["negteacher"]["row"] < 3] == [d for d in direct if d]
    assert all(r["chosen"][0]["content"] == ROWS[r["negteacher"]["row"]]["messages"][-1]["content"] for r in rows)

    import hf_negteacher.training.offline as offline

    calls = {"n": 0}
    real = offline.generate_answers

    def dies_on_third_batch(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(offline, "generate_answers", dies_on_third_batch)
    with pytest.raises(KeyboardInterrupt):
        generate_preference_dataset(teacher, smol_tokenizer, ROWS, pairs, tmp_path / "b.jsonl", **kwargs)
    assert not (tmp_path / "b.jsonl").exists() and (tmp_path / "b.jsonl.partial").exists()
    with open(tmp_path / "b.jsonl.partial", "ab") as handle:
        handle.write(b'{"half a line')  # what a kill in the middle of a write leaves
    monkeypatch.setattr(offline, "generate_answers", real)
    generate_preference_dataset(teacher, smol_tokenizer, ROWS, pairs, tmp_path / "b.jsonl", **kwargs)
    assert (tmp_path / "b.jsonl").read_bytes() == full
    assert not (tmp_path / "b.jsonl.partial").exists()


def test_offline_training_consumes_the_generated_dataset(tiny_chat_model, smol_tokenizer, tmp_path):
    args = config(tmp_path, negatives_mode="offline", max_steps=1)
    trainer = NegativeTeacherTrainer(tiny_chat_model, args, ROWS, processing_class=smol_tokenizer, peft_config=lora())
    assert (tmp_path / "negatives.jsonl").is_file() and trainer.negatives_meta["source_rows"] == 8
    initial = adapter_state(trainer)
    trainer.train()
    assert torch.isfinite(torch.tensor(trainer.state.log_history[0]["loss"]))
    assert any(not torch.equal(initial[k], v) for k, v in adapter_state(trainer).items())
    assert trainer.online.generation_calls == 0  # the pairs come from the file, nothing is generated while training


KNOWN_WRONG = [{"role": "assistant", "content": "I do not know."}]


def test_keep_dataset_rejected_adds_the_datasets_pair_offline(tiny_chat_model, smol_tokenizer, tmp_path):
    rows = [{"prompt": r["messages"][:1], "chosen": r["messages"][1:], "rejected": KNOWN_WRONG} for r in ROWS[:4]]
    args = config(tmp_path, negatives_mode="offline", keep_dataset_rejected=True)
    trainer = NegativeTeacherTrainer(tiny_chat_model, args, rows, processing_class=smol_tokenizer, peft_config=lora())
    sources = [r["negteacher"]["source"] for r in trainer.train_dataset]
    assert sources.count("dataset") == 4 and sources.count("teacher") >= 1


def test_keep_dataset_rejected_adds_the_datasets_pair_online(tiny_chat_model, smol_tokenizer, tmp_path):
    rows = [{"prompt": r["messages"][:1], "chosen": r["messages"][1:], "rejected": KNOWN_WRONG} for r in ROWS[:2]]
    args = config(tmp_path, keep_dataset_rejected=True, per_device_train_batch_size=4, max_steps=1)
    trainer = NegativeTeacherTrainer(tiny_chat_model, args, rows, processing_class=smol_tokenizer, peft_config=lora())
    examples = [dict(e) for e in trainer.train_dataset]
    assert [e["negteacher_fixed"] for e in examples] == [False, True, False, True]
    pairs = trainer.online.pairs(examples)
    wrong = smol_tokenizer.apply_chat_template(rows[0]["prompt"] + KNOWN_WRONG, tokenize=False)
    fixed = [p for p in pairs if smol_tokenizer.decode(p["prompt_ids"] + p["rejected_ids"]) == wrong]
    assert len(pairs) == 4 and len(fixed) == 1 and trainer.online.generation_calls == 1


class StopAfter(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        control.should_training_stop = state.global_step >= self.step


def train_stopped_or_resumed(model, args, rows, tokenizer, stop=None, resume=None) -> NegativeTeacherTrainer:
    """A run on `rows` stopped after step `stop` (killed right after its checkpoint) or resumed from `resume`."""
    trainer = NegativeTeacherTrainer(model, args, rows, processing_class=tokenizer, peft_config=lora())
    if stop:
        trainer.add_callback(StopAfter(stop))
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def test_resume_from_checkpoint_finishes_like_an_uninterrupted_run(tiny_chat_model, smol_tokenizer, tmp_path):
    def run(folder, stop=None, resume=None):
        args = config(folder, max_steps=4, save_strategy="steps", save_steps=2)
        return train_stopped_or_resumed(copy.deepcopy(tiny_chat_model), args, ROWS, smol_tokenizer, stop, resume)

    whole = run(tmp_path / "whole")
    first = run(tmp_path / "resumed", stop=2)
    assert first.state.global_step == 2
    assert (tmp_path / "resumed" / "checkpoint-2" / "adapter_model.safetensors").is_file()
    resumed = run(tmp_path / "resumed", resume=str(tmp_path / "resumed" / "checkpoint-2"))
    assert resumed.state.global_step == 4
    a, b = adapter_state(whole), adapter_state(resumed)
    assert a.keys() == b.keys() and trained(whole)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)


def test_a_resumed_qlora_run_keeps_the_bfloat16_adapter_trl_trains(tiny_base_dir, smol_tokenizer, tmp_path):
    """With bf16 compute TRL trains a 4-bit model's LoRA weights in bfloat16 (QLoRA's GPU recipe); the Trainer's
    resume (PEFT's `load_adapter`) would upcast them to float32 and go on in another precision."""
    from hf_negteacher.models import load_causal_lm, nf4_config

    def run(folder, stop=None, resume=None):
        args = config(folder, max_steps=3, save_strategy="steps", save_steps=1, learning_rate=1e-2, bf16=True)
        return train_stopped_or_resumed(load_causal_lm(str(tiny_base_dir), quantization=nf4_config()), args, ROWS,
                                        smol_tokenizer, stop, resume)

    whole = run(tmp_path / "whole")
    run(tmp_path / "resumed", stop=1)
    resumed = run(tmp_path / "resumed", resume=True)
    a, b = adapter_state(whole), adapter_state(resumed)
    assert {v.dtype for v in a.values()} == {v.dtype for v in b.values()} == {torch.bfloat16} and trained(whole)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)


@pytest.mark.parametrize("overrides, message", [
    ({"negatives_mode": "sometimes"}, r"negatives_mode='sometimes'; allowed: online, offline"),
    ({"num_negatives": 0}, r"num_negatives=0 must be >= 1"),
    ({"teacher": "int9"}, r"teacher quantizer='int9' is unknown; allowed: ternary, binary, int2, int3, int4"),
    ({"teacher": "int3", "teacher_blocks": [0]}, r"either as teacher='int3' or through the deprecated teacher_blocks"),
    ({"precompute_ref_log_probs": True}, r"precompute_ref_log_probs=True needs fixed pairs"),
])
def test_bad_config_is_rejected(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        config(tmp_path, **overrides)


def test_checkpointing_asks_ddp_for_no_unused_parameter_search_unless_told(tmp_path):
    # transformers decides this for a PreTrainedModel only; a PEFT policy got True, which re-entrant
    # checkpointing under DDP rejects (test_distributed runs that setting).
    assert config(tmp_path, gradient_checkpointing=True).ddp_find_unused_parameters is False
    assert config(tmp_path, gradient_checkpointing=False).ddp_find_unused_parameters is None
    assert config(tmp_path, gradient_checkpointing=True, ddp_find_unused_parameters=True).ddp_find_unused_parameters


def test_the_teacher_is_one_spec_and_the_old_fields_still_work_with_a_warning(tmp_path):
    assert NegativeTeacherConfig(output_dir=str(tmp_path), use_cpu=True).teacher == "int3,blocks=0-14"
    spec = config(tmp_path, teacher="ternary,strength=0.25,blocks=0-2")
    assert spec.teacher == "ternary,blocks=0-2,strength=0.25"  # normalized, as calibrate prints it
    assert spec.teacher_config().strength == 0.25 and spec.teacher_config().blocks == [0, 1, 2]
    with pytest.warns(FutureWarning, match=r"teacher_quantizer, teacher_blocks are deprecated.*teacher: 'int4'"):
        legacy = NegativeTeacherConfig(output_dir=str(tmp_path), use_cpu=True, teacher_quantizer="int4",
                                       teacher_blocks=None)
    assert legacy.teacher == "int4" and legacy.teacher_blocks == list(range(15))  # the old fields reset
    assert dataclasses.replace(legacy).teacher == "int4"  # a copy of the args does not see both


def test_the_teacher_spec_is_parsed_once_per_run(tiny_chat_model, smol_tokenizer, tmp_path, monkeypatch):
    from hf_negteacher.teacher.spec import TeacherConfig

    parsed, from_spec = [], TeacherConfig.from_spec.__func__
    monkeypatch.setattr(TeacherConfig, "from_spec",
                        classmethod(lambda cls, spec: parsed.append(spec) or from_spec(cls, spec)))
    args = config(tmp_path, teacher="int3, group_size=32", max_steps=2, teacher_strength_target=0.5,
                  teacher_adjust_every=1)
    trainer = NegativeTeacherTrainer(tiny_chat_model, args, ROWS, processing_class=smol_tokenizer, peft_config=lora())
    trainer.train()
    assert parsed == ["int3, group_size=32"]  # the user's text, once; every later reader gets the parsed object
    assert trainer.teacher_updates.spec.group_size == 32


def test_bad_data_is_rejected_before_the_model_is_touched(smol_tokenizer, tmp_path):
    with pytest.raises(DataFormatError, match=r"row 1: .*fits no accepted format"):
        NegativeTeacherTrainer(None, config(tmp_path), [ROWS[0], {"text": "x"}], processing_class=smol_tokenizer)


@pytest.mark.parametrize("setting, sharded", [("none", False), ("zero2-json", False), ("zero3-json", True),
                                              ("zero3-dict", True), ("zero3-plugin", True), ("zero3-env", True),
                                              ("fsdp", True)])
def test_sharded_launches_are_detected_however_configured(setting, sharded, tmp_path, monkeypatch):
    from types import SimpleNamespace

    from hf_negteacher.training.trainer import shards_parameters

    for name in ("ACCELERATE_USE_DEEPSPEED", "ACCELERATE_DEEPSPEED_ZERO_STAGE", "ACCELERATE_USE_FSDP"):
        monkeypatch.delenv(name, raising=False)
    args = SimpleNamespace(fsdp=None, deepspeed=None, deepspeed_plugin=None)
    stage = 2 if setting.startswith("zero2") else 3
    if setting.endswith("json"):
        (tmp_path / "ds.json").write_text(json.dumps({"zero_optimization": {"stage": stage}}))
        args.deepspeed = str(tmp_path / "ds.json")
    elif setting.endswith("dict"):
        args.deepspeed = {"zero_optimization": {"stage": 3}}
    elif setting.endswith("plugin"):
        args.deepspeed_plugin = SimpleNamespace(zero_stage=3)
    elif setting.endswith("env"):
        monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
        monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    elif setting == "fsdp":
        args.fsdp = "full_shard"
    assert shards_parameters(args) is sharded


def test_in_batch_source_gives_the_other_rows_references():
    from hf_negteacher.training.negative_sources import InBatchSource, SourceRequest

    request = SourceRequest(prompts=[[1], [2], [3]], references=[[10], [20, 21], [30]], n=2, seed=0,
                            settings=GenerationSettings())
    assert InBatchSource().candidates(None, request) == [[[20, 21], [30]], [[30], [10]], [[10], [20, 21]]]


class FixedSource:
    """A user's own source: the same two answers for every prompt."""

    name = "fixed"

    def candidates(self, context, request):
        return [[[11, 12], [13]] for _ in request.prompts]


@pytest.mark.parametrize("source", ["self", "in_batch", "user"])
def test_negative_sources_write_the_rejected_side(source, tiny_chat_model, smol_tokenizer, tmp_path):
    untrained = copy.deepcopy(tiny_chat_model).eval()
    own = FixedSource() if source == "user" else None
    args = config(tmp_path, max_steps=1, num_negatives=2, **({} if own else {"negative_source": source}))
    trainer = NegativeTeacherTrainer(tiny_chat_model, args, ROWS, processing_class=smol_tokenizer,
                                     peft_config=lora(), negative_source=own)
    requests, answers = [], []
    candidates = trainer.negative_source.candidates
    trainer.negative_source.candidates = lambda t, r: (requests.append(r) or answers.append(out := candidates(t, r))
                                                       or out)
    teacher_generate = trainer.teacher.generate
    trainer.teacher.generate = lambda *a, **k: pytest.fail("the teacher generated")
    trainer.train()
    trainer.teacher.generate = teacher_generate
    assert trainer.state.log_history[0]["negatives/pairs_per_prompt"] == 2 and trained(trainer)
    cached = {tuple(map(tuple, negatives)) for _, _, negatives in trainer.online.cache.values()}
    if source == "user":
        assert cached == {((11, 12), (13,))}
    elif source == "in_batch":
        first = requests[0]
        assert answers[0][0] == [list(first.references[1]), list(first.references[2])]
        trainer.create_model_card()  # the card says where the pairs came from, and claims nothing beyond this run
        card = (tmp_path / "README.md").read_text()
        assert "| negative_source | `in_batch` |" in card and "| chosen_source | `reference` |" in card
        assert "this run's own" in card and "48 training rows" not in card
    else:  # the policy's own samples; at step 0 the adapter is still zero, so the untrained model's
        first = requests[0]
        assert first.n == 2 and first.settings == args.generation_settings()
        expected = generate_negative_ids(untrained, first.prompts, first.settings, seed=first.seed,
                                         pad_token_id=smol_tokenizer.pad_token_id,
                                         stop_token_ids=stop_token_ids(smol_tokenizer, untrained),
                                         num_return_sequences=2, prompt_seeds=first.example_seeds)
        assert len(first.example_seeds) == len(first.prompts) and answers[0] == expected


class ScoredFixedSource(FixedSource):
    """FixedSource that names a model for `teacher/reference_ppl`: the seam, not `isinstance(TeacherSource)`."""

    def scored_model(self, context):
        return context.teacher


def test_sources_see_a_narrow_context_and_the_policy_generates_with_checkpointing_off(tiny_chat_model,
                                                                                     smol_tokenizer, tmp_path):
    args = config(tmp_path, max_steps=1, negative_source="self", gradient_checkpointing=True,
                  gradient_checkpointing_kwargs={"use_reentrant": False})
    trainer = NegativeTeacherTrainer(copy.deepcopy(tiny_chat_model), args, ROWS, processing_class=smol_tokenizer,
                                     peft_config=lora())
    contexts, checkpointing = [], []
    candidates = trainer.negative_source.candidates
    trainer.negative_source.candidates = lambda context, r: contexts.append(context) or candidates(context, r)
    policy = trainer.accelerator.unwrap_model(trainer.model)
    generate = policy.generate
    policy.generate = lambda *a, **k: checkpointing.append(policy.is_gradient_checkpointing) or generate(*a, **k)
    trainer.train()
    assert contexts and all(type(c) is SourceContext for c in contexts) and not hasattr(contexts[0], "model")
    assert checkpointing and not any(checkpointing)  # TRL's unwrap_model_for_generation turned it off ...
    assert policy.is_gradient_checkpointing  # ... and back on after
    logs = {}
    for name, source in (("fixed", FixedSource()), ("scored", ScoredFixedSource())):
        run = NegativeTeacherTrainer(copy.deepcopy(tiny_chat_model), config(tmp_path / name, max_steps=1), ROWS,
                                     processing_class=smol_tokenizer, peft_config=lora(), negative_source=source)
        run.train()
        logs[name] = run.state.log_history[0]
    assert "teacher/reference_ppl" not in logs["fixed"] and logs["scored"]["teacher/reference_ppl"] > 1


def test_dataset_source_trains_on_the_rows_own_rejected_answers(tiny_chat_model, smol_tokenizer, tmp_path):
    wrong = [[{"role": "assistant", "content": f"I do not know {i}."}] for i in range(4)]
    rows = [{"prompt": r["messages"][:1], "chosen": r["messages"][1:], "rejected": wrong[i]}
            for i, r in enumerate(ROWS[:4])]
    args = config(tmp_path, max_steps=1, negative_source="dataset", num_negatives=2, negatives_temperature=0.7)
    trainer = NegativeTeacherTrainer(tiny_chat_model, args, rows, processing_class=smol_tokenizer, peft_config=lora())
    trainer.teacher.generate = lambda *a, **k: pytest.fail("the teacher generated")
    trainer.train()
    by_prompt = {smol_tokenizer.decode(e["prompt_ids"]): e for e in trainer.train_dataset}
    for i, row in enumerate(rows):
        prompt = smol_tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
        _, _, negatives = trainer.online.cache[example_key(by_prompt[prompt])]
        # One rejected answer per row for two pairs: the duplicate filter drops the repeat, the fill restores it.
        assert [smol_tokenizer.decode(n) for n in negatives] == [f"I do not know {i}."] * 2
    assert trainer.state.log_history[0]["negatives/fallback_fraction"] == 0.5 and trained(trainer)


def test_dataset_source_needs_a_rejected_answer_in_every_row(tiny_chat_model, smol_tokenizer, tmp_path):
    with pytest.raises(ValueError, match=r"negative_source='dataset': row 0 has no `rejected` answer"):
        NegativeTeacherTrainer(tiny_chat_model, config(tmp_path, negative_source="dataset"), ROWS,
                               processing_class=smol_tokenizer, peft_config=lora())


class FixedChosen:
    """A user's own chosen source: the same answer for every prompt."""

    name = "fixed"

    def answers(self, context, request):
        return [[11, 12] for _ in request.prompts]


def test_a_chosen_source_writes_the_chosen_side_and_negatives_are_filtered_against_it(tiny_chat_model,
                                                                                    smol_tokenizer, tmp_path):
    args = config(tmp_path, max_steps=1, negative_source="in_batch")
    trainer = NegativeTeacherTrainer(tiny_chat_model, args, ROWS[:4], processing_class=smol_tokenizer,
                                     peft_config=lora(), chosen_source=FixedChosen())
    examples = [dict(e) for e in trainer.train_dataset]
    pairs = trainer.online.pairs(examples)
    suffix = examples[0]["rejected_ids"]
    assert [p["chosen_ids"] for p in pairs] == [[11, 12] + suffix] * 4
    # in_batch offers the other rows' chosen answers, all [11, 12] = this row's chosen: every one is filtered,
    # so each pair is a counted fill.
    assert all(p["rejected_ids"] == [11, 12] + suffix for p in pairs)
    assert trainer.negative_filter.counts["filtered_equal_to_reference"] == 4 * args.negatives_max_tries


@pytest.mark.parametrize("settings, n", [(GenerationSettings(max_new_tokens=8, temperature=0.7, top_k=0), 2),
                                         (GenerationSettings(max_new_tokens=8, temperature=0), 1),
                                         (GenerationSettings(max_new_tokens=8, temperature=1.0, top_k=5), 2)])
def test_generation_settings_sample_as_plain_generate_keywords_do(settings, n, tiny_chat_model, smol_tokenizer):
    model = tiny_chat_model.eval()
    prompts = [[1, 2, 3, 4], [5, 6, 7, 8]]
    ours = generate_negative_ids(model, prompts, settings, seed=3, pad_token_id=0, stop_token_ids=[],
                                 num_return_sequences=n)
    sampling = {"do_sample": False} if settings.temperature <= 0 else {
        "do_sample": True, "temperature": settings.temperature, "top_p": settings.top_p, "top_k": settings.top_k}
    torch.manual_seed(3)
    plain = model.generate(input_ids=torch.tensor(prompts), attention_mask=torch.ones(2, 4, dtype=torch.long),
                           max_new_tokens=8, pad_token_id=0, num_return_sequences=n, **sampling)[:, 4:].tolist()
    assert [answer for per_prompt in ours for answer in per_prompt] == plain


def test_generation_settings_are_checked_by_transformers():
    with pytest.raises(ValueError, match="num_return_sequences"):
        GenerationSettings(temperature=0).generation_config(num_return_sequences=2)


def test_offline_negatives_of_another_teacher_with_the_same_spec_are_not_reused(tiny_chat_model, smol_tokenizer,
                                                                               tmp_path):
    """A teacher built from other weights (or passed in Python) under the same spec string gets a new file."""
    pairs = validate_rows(ROWS, smol_tokenizer)
    kwargs = dict(settings=GenerationSettings(max_new_tokens=6, batch_size=4, seed=5), teacher_spec="int3")
    path = tmp_path / "negatives.jsonl"

    def generates(teacher) -> bool:
        calls = []
        real = teacher.generate
        teacher.generate = lambda **kw: calls.append(1) or real(**kw)
        generate_preference_dataset(teacher, smol_tokenizer, ROWS, pairs, path, **kwargs)
        return bool(calls)

    assert generates(build_negative_teacher(tiny_chat_model, "int3", group_size=32))
    assert not generates(build_negative_teacher(tiny_chat_model, "int3", group_size=32))  # the same: reused
    weights = {f"{name}.weight": module.weight.detach() * 3 for name, module in tiny_chat_model.named_modules()
               if isinstance(module, torch.nn.Linear)}
    assert generates(build_negative_teacher(tiny_chat_model, "int3", group_size=32, weights=weights))


def test_an_evaluation_at_a_save_step_leaves_the_next_training_seeds_as_a_resumed_run_draws_them(
        tiny_chat_model, smol_tokenizer, tmp_path):
    trainer = NegativeTeacherTrainer(tiny_chat_model, config(tmp_path, max_steps=1), ROWS,
                                     processing_class=smol_tokenizer, peft_config=lora())
    model = trainer.model
    trainer.state.global_step = 3
    model.train()
    resumed = type(trainer.online)(trainer)  # a run resumed at step 3: training draws first
    drawn = [resumed.next_seed(), resumed.next_seed()]
    uninterrupted = type(trainer.online)(trainer)  # evaluates at step 3 (a save step) first
    model.eval()
    evaluated = [uninterrupted.next_seed(), uninterrupted.next_seed()]
    model.train()
    assert [uninterrupted.next_seed(), uninterrupted.next_seed()] == drawn
    assert not set(evaluated) & set(drawn)
