"""Run by test_distributed.py under `accelerate launch` with `cpu_2_processes.yaml` (or alone, as one process).

Trains a tiny Llama (saved by the test) with online negatives and writes, per process, the prompts
it generated negatives for, so the test can check that the two processes saw different shards.
Optional third argument: the loss types, comma-separated (default: the config's; with `teacher_unlikelihood`,
re-entrant gradient checkpointing), or one of
- `uneven-filter`: two negatives per prompt, and on process 1 a filter that drops every candidate, so the
  filters keep different numbers of negatives on the two processes; each process records its pairs per batch;
- `offline`: offline negatives for 33 rows in batches of 16 (uneven shards: two batches and one);
- `offline-interrupted`: the same, killed once process 0 has written its first batch and process 1 none;
- `strength`, `strength-killed`, `strength-resumed`: strength feedback, saving every 2 of 4 steps; killed on
  every process right after the first save; resumed from that checkpoint.
"""

import json
import os
import sys
import time
from pathlib import Path

from accelerate import PartialState
from peft import LoraConfig
from transformers import AutoModelForCausalLM, TrainerCallback

import hf_negteacher.training.offline
from hf_negteacher import NegativeTeacherConfig, NegativeTeacherTrainer, load_tokenizer
from hf_negteacher.data.rows import load_rows
from hf_negteacher.training.filters import NegativeFilter

model_dir, output_dir = Path(sys.argv[1]), Path(sys.argv[2])
option = sys.argv[3] if len(sys.argv) > 3 else ""
uneven, offline, strength = option == "uneven-filter", option.startswith("offline"), option.startswith("strength")
loss = {"loss_type": option.split(",")} if option and not (uneven or offline or strength) else {}
if "teacher_unlikelihood" in option:  # the setting TRL forces for PEFT under ZeRO-3: one graph, one reduce
    loss.update(gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": True})
if uneven:
    loss["num_negatives"] = 2
if offline:
    loss["negatives_mode"] = "offline"
if strength:
    loss.update(teacher_strength_target=0.5, teacher_adjust_every=1, learning_rate=1e-2, max_steps=4,
                save_strategy="steps", save_steps=2)
offline_prompts = []
generate_answers = hf_negteacher.training.offline.generate_answers


def interrupt_before(prompts):
    """Under `offline-interrupted`: process 1 dies before its only batch once process 0 has written its first;
    process 0 waits at its second batch to be killed with it."""
    if PartialState().process_index == 1:
        progress = output_dir / "negatives.jsonl.part0of2.progress.json"
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not (progress.is_file()
                                                    and json.loads(progress.read_text())["rows_done"] == 16):
            time.sleep(0.2)
        os._exit(3)
    if offline_prompts:
        time.sleep(300)


def generate_and_record(teacher, tokenizer, prompts, *a, **k):
    if option == "offline-interrupted":
        interrupt_before(prompts)
    offline_prompts.extend(prompts)
    return generate_answers(teacher, tokenizer, prompts, *a, **k)


hf_negteacher.training.offline.generate_answers = generate_and_record


class DieAfterFirstSave(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        PartialState().wait_for_everyone()  # process 0 has written the checkpoint
        os._exit(3)


class DropEverything(NegativeFilter):
    def apply(self, negatives, reference, kept=()):
        self.counts["generated"] += len(negatives)
        self.counts["filtered_test"] += len(negatives)
        return []

tokenizer = load_tokenizer(str(model_dir))
model = AutoModelForCausalLM.from_pretrained(model_dir)
args = NegativeTeacherConfig(**{"output_dir": str(output_dir), "use_cpu": True, "max_steps": 3,
                                "per_device_train_batch_size": 2, "max_length": 96, "gradient_checkpointing": False,
                                "negatives_max_new_tokens": 6, "teacher": "int3,group_size=32", "report_to": [],
                                "save_strategy": "no", "logging_steps": 1, "seed": 0, **loss})
trainer = NegativeTeacherTrainer(model, args, load_rows("bundled:train")[:33 if offline else 16],
                                 processing_class=tokenizer,
                                 peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
if option == "strength-killed":
    trainer.add_callback(DieAfterFirstSave())
rank = trainer.accelerator.process_index
lora_sum = lambda: sum(p.detach().double().sum().item()  # noqa: E731
                       for n, p in trainer.model.named_parameters() if "lora_" in n)
adapter_sum_before = lora_sum()
pairs_per_batch = []
if uneven:
    if rank == 1:
        trainer.negative_filter = DropEverything()
    with_negatives = trainer.online.pairs
    trainer.online.pairs = lambda examples: pairs_per_batch.append(len(out := with_negatives(examples))) or out
seen = set()  # the prompts this process wrote pairs for
writes_pairs = trainer.online.pairs
trainer.online.pairs = lambda examples: seen.update(tokenizer.decode(e["prompt_ids"]) for e in examples) or \
    writes_pairs(examples)
trainer.train(resume_from_checkpoint=option == "strength-resumed" or None)
output_dir.mkdir(parents=True, exist_ok=True)
prompts = sorted(seen)
adapter_sum = lora_sum()
(output_dir / f"shard_{rank}.json").write_text(json.dumps({"world_size": trainer.accelerator.num_processes,
                                                            "generation_calls": trainer.online.generation_calls,
                                                            "prompts": prompts, "adapter_sum": adapter_sum,
                                                            "adapter_sum_before": adapter_sum_before,
                                                            "pairs_per_batch": pairs_per_batch,
                                                            "offline_prompts": offline_prompts,
                                                            "log_history": trainer.state.log_history}))
trainer.save_model()
