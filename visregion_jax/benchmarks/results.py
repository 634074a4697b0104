"""WORKDIR/eval/results.json (for tools) and results.md (to read): per task the paper's
metric first, then every metric the scorer gives, the sample count and the samples
whose images could not be read (scored wrong, never dropped)."""

import json
import os

from visregion_jax.publish import write_file_atomically

# The number each paper table reports for a task (lmms-eval's metric name).
HEADLINE = {"gqa": "exact_match", "textvqa_val": "exact_match", "vqav2_val": "exact_match",
            "pope": "pope_f1_score", "mme": "mme_perception_score", "scienceqa_img": "exact_match",
            "seedbench": "seed_image", "mmbench_en_dev": "gpt_eval_score", "mmmu_val": "mmmu_acc", "mmlu": "acc"}


def _value(value) -> str:
  return f"{value:.4f}" if isinstance(value, float) else str(value)


def write(out_dir: str, found: dict) -> None:
  write_file_atomically(os.path.join(out_dir, "results.json"), json.dumps(found, indent=2))
  lines = ["| task | metric | value | samples | unreadable images | all metrics |", "|---|---|---|---|---|---|"]
  for task, r in found.items():
    metrics = r["metrics"]
    head = HEADLINE.get(task)
    others = ", ".join(f"{k} {_value(v)}" for k, v in metrics.items() if k != head and not k.startswith("mmlu_"))
    broken = sum(r["broken_images"].values())
    lines.append(f"| {task} | {head} | {_value(metrics.get(head))} | {r['samples']} | {broken} | {others} |")
  write_file_atomically(os.path.join(out_dir, "results.md"), "\n".join(lines) + "\n")
