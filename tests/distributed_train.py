"""Run by test_distributed.py under `accelerate launch --cpu --num_processes 2`.

Trains a tiny Llama (saved by the test) with online negatives and writes, per process, the prompts
it generated negatives for, so the test can check that the two processes saw different shards.
Optional third argument: the loss types, comma-separated (default: the config's), or `uneven-filter`:
two negatives per prompt, and on process 1 a filter that drops every candidate, so the filters keep
different numbers of negatives on the two processes; each process records its pairs per batch.
"""

import json
import sys
from pathlib import Path

from peft import LoraConfig
from transformers import AutoModelForCausalLM

import hf_negteacher.training.offline
from hf_negteacher import NegativeTeacherConfig, NegativeTeacherTrainer, load_tokenizer
from hf_negteacher.data.rows import load_rows
from hf_negteacher.training.filters import NegativeFilter

model_dir, output_dir = Path(sys.argv[1]), Path(sys.argv[2])
option = sys.argv[3] if len(sys.argv) > 3 else ""
uneven, offline = option == "uneven-filter", option == "offline"
loss = {"loss_type": option.split(",")} if option and not (uneven or offline) else {}
if uneven:
    loss["num_negatives"] = 2
if offline:
    loss["negatives_mode"] = "offline"
offline_prompts = []
generate_answers = hf_negteacher.training.offline.generate_answers
hf_negteacher.training.offline.generate_answers = lambda teacher, tokenizer, prompts, *a, **k: (
    offline_prompts.extend(prompts) or generate_answers(teacher, tokenizer, prompts, *a, **k))


class DropEverything(NegativeFilter):
    def apply(self, negatives, reference, kept=()):
        self.counts["generated"] += len(negatives)
        self.counts["filtered_test"] += len(negatives)
        return []

tokenizer = load_tokenizer(str(model_dir))
model = AutoModelForCausalLM.from_pretrained(model_dir)
args = NegativeTeacherConfig(output_dir=str(output_dir), use_cpu=True, max_steps=3, per_device_train_batch_size=2,
                             max_length=96, gradient_checkpointing=False, negatives_max_new_tokens=6,
                             teacher="int3,group_size=32", report_to=[], save_strategy="no",
                             logging_steps=1, seed=0, **loss)
trainer = NegativeTeacherTrainer(model, args, load_rows("bundled:train")[:16], processing_class=tokenizer,
                                 peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
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
trainer.train()
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
