"""TRL's on-policy DistillationTrainer on the prompts and settings benchmarks/peers.py gives it (run in TRL's venv).

Reads a JSON job (models, the prompts of every step in order with opdctl's token ids,
optimizer settings), checks that TRL tokenizes every prompt to the same ids, trains,
saves the student and prints one JSON line: training wall and process CPU seconds,
completion tokens and decode positions (rows x the longest completion of each batch).
Not an opdctl dependency: it imports TRL only.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DistillationConfig, DistillationTrainer


class CountingTrainer(DistillationTrainer):
    """Counts the tokens TRL keeps and the positions `generate` decodes (finished rows keep decoding)."""

    completion_tokens = 0
    decode_positions = 0

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, has_tool_images=False):
        completions = super()._generate_single_turn(prompt_ids, images, multimodal_fields, has_tool_images)
        self.completion_tokens += sum(len(c) for c in completions)
        self.decode_positions += len(completions) * max(len(c) for c in completions)
        return completions


def main() -> None:
    job = json.loads(Path(sys.argv[1]).read_text())
    torch.set_num_threads(job["threads"])
    tokenizer = AutoTokenizer.from_pretrained(job["student"], padding_side="left")
    rows = [{"prompt": [{"role": "user", "content": text}]} for text in job["prompt_texts"]]
    args = DistillationConfig(
        output_dir=job["output_dir"],
        max_steps=job["steps"],
        per_device_train_batch_size=job["batch"],
        gradient_accumulation_steps=1,
        learning_rate=job["lr"],
        lr_scheduler_type=job["lr_schedule"],
        warmup_steps=0,
        weight_decay=job["weight_decay"],
        max_grad_norm=job["grad_clip"],
        optim="adamw_torch",
        max_completion_length=job["max_new_tokens"],
        temperature=job["temperature"],
        top_k=0,
        top_p=1.0,
        beta=1.0,  # reverse KL, exact over the whole vocabulary
        shuffle_dataset=False,
        bf16=False,
        fp16=False,
        use_cpu=True,
        gradient_checkpointing=False,
        disable_dropout=True,
        save_strategy="no",
        report_to="none",
        logging_steps=job["steps"],
        seed=job["seed"],
        dataloader_num_workers=0,
    )
    trainer = CountingTrainer(
        model=AutoModelForCausalLM.from_pretrained(job["student"]),
        teacher_model=AutoModelForCausalLM.from_pretrained(job["teacher"]),
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
    )
    ids, _, _ = trainer._tokenize_prompts([row["prompt"] for row in rows])
    mismatched = sum(list(a) != b for a, b in zip(ids, job["prompt_ids"], strict=True))
    if mismatched:
        raise SystemExit(f"TRL tokenizes {mismatched} of {len(ids)} prompts differently from opdctl")
    wall, cpu = time.perf_counter(), time.process_time()
    trainer.train()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    trainer.save_model(job["output_dir"])
    tokenizer.save_pretrained(job["output_dir"])
    print(
        json.dumps(
            {
                "train_wall": wall,
                "train_cpu": cpu,
                "tokens_generated": trainer.completion_tokens,
                "decode_positions": trainer.decode_positions,
                "prompts_checked": len(ids),
                "threads": torch.get_num_threads(),
                "model_dir": job["output_dir"],
            }
        )
    )


if __name__ == "__main__":
    main()
