"""Quality runs on real data (docs/quality.md): one ``loraswap train`` per dataset.

``loraswap bench quality`` runs them strictly one after another (2-core CPU) and prints
the table; ``--print-commands`` only shows the commands, ``--table-only`` re-reads the
packages of an earlier run. Data is read from ``--data-dir`` (default ``../shared/data``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from loraswap.adapters.package import read_manifest
from loraswap.base_model.loading import DEFAULT_BASE_MODEL_DIR


@dataclass(frozen=True)
class QualityRun:
    """One dataset run: its ``loraswap train`` arguments and the figures to report."""

    name: str
    dataset: str
    args: tuple[str, ...]
    metrics: tuple[str, ...]
    target: str


def runs(data: Path, out: Path) -> list[QualityRun]:
    """The documented runs; paths resolved against ``data`` and ``out``."""
    common = ("--no-progress", "--baseline")
    sst2, tweets, b77, ncbi = (data / "sst2", data / "tweet_sentiment_extraction",
                               data / "banking77", data / "ncbi_disease")
    sst2_args = ("--task", "seq-cls", "--data", f"{sst2}/train.tsv", "--test-data",
                 f"{sst2}/dev.tsv", "--text-column", "sentence", "--max-eval-samples", "500")
    # Budgets fit a shared 2-core CPU: seeded subsamples, 1-2 epochs. LoRA dropout is off:
    # PEFT's dropout path made steps ~2.5x slower here.
    fast = ("--lora-dropout", "0")
    ncbi_args = ("--task", "token-cls", "--data", f"{ncbi}/train.tsv", "--eval-data",
                 f"{ncbi}/devel.tsv", "--test-data", f"{ncbi}/test.tsv", "--max-eval-samples",
                 "300", "--epochs", "2", *fast)
    ncbi_metrics = ("test_f1", "test_precision", "test_recall")
    return [
        QualityRun("banking77", "Banking77 (test)", (
            "--task", "seq-cls", "--data", f"{b77}/train.csv", "--test-data",
            f"{b77}/test.csv", "--label-column", "category", "--max-eval-samples", "300",
            "--epochs", "2", *fast, "--output", f"{out}/banking77", "--no-progress"),
            ("test_accuracy", "test_macro_f1"), "accuracy >= 0.88"),
        # token-cls trains with bidirectional attention by default; the causal run beside
        # it shows what that default is worth.
        QualityRun("ncbi", "NCBI-disease (test)", (
            *ncbi_args, "--output", f"{out}/ncbi", *common), ncbi_metrics, "F1 >= 0.80"),
        QualityRun("ncbi-causal", "NCBI-disease (test), causal attention", (
            *ncbi_args, "--attention", "causal", "--output", f"{out}/ncbi-causal", *common),
            ncbi_metrics, "(comparison)"),
        QualityRun("alpaca", "Alpaca-1k (held-out 10%)", (
            "--task", "causal-lm", "--data", f"{data}/alpaca_1k/alpaca_data_1k.json",
            "--max-length", "256", "--epochs", "1", *fast, "--output", f"{out}/alpaca",
            *common),
            ("eval_loss", "perplexity"), "loss below the base"),
        QualityRun("sst2-qlora", "SST-2 (dev), QLoRA nf4", (
            *sst2_args, "--qlora", "--max-train-samples", "2000", "--epochs", "1", *fast,
            "--output", f"{out}/sst2-qlora", "--no-progress"),
            ("test_accuracy", "test_macro_f1"), "(smaller budget)"),
        QualityRun("sst2", "SST-2 (dev)", (
            *sst2_args, "--max-train-samples", "16000", "--epochs", "1", *fast, "--output",
            f"{out}/sst2", *common),
            ("test_accuracy", "test_macro_f1"), "accuracy >= 0.88"),
        QualityRun("tweets", "Tweet sentiment (test)", (
            "--task", "seq-cls", "--data", f"{tweets}/train.csv", "--test-data",
            f"{tweets}/test.csv", "--label-column", "sentiment", "--max-train-samples", "10000",
            "--max-eval-samples", "300", "--epochs", "1", *fast, "--output", f"{out}/tweets",
            "--no-progress"),
            ("test_accuracy", "test_macro_f1"), "accuracy >= 0.75"),
    ]


@dataclass(frozen=True)
class ZeroShot:
    """A label-likelihood prompting baseline on a test file (see training.zeroshot)."""

    path: str
    text_column: str
    label_column: str
    verbalizers: dict[str, str]
    instruction: str
    limit: int | None


def zero_shot_specs(data: Path) -> dict[str, ZeroShot]:
    """Zero-shot prompt baselines, by run name (2-3 labels: cheap to score each)."""
    sst2 = ZeroShot(f"{data}/sst2/dev.tsv", "sentence", "label",
                    {"0": "negative", "1": "positive"},
                    "Is the sentiment of this movie review negative or positive?", None)
    tweets = ZeroShot(f"{data}/tweet_sentiment_extraction/test.csv", "text", "sentiment",
                      {k: k for k in ("negative", "neutral", "positive")},
                      "Is the sentiment of this tweet negative, neutral or positive?", 500)
    return {"sst2": sst2, "sst2-qlora": sst2, "tweets": tweets}


def run_zero_shot(selected: list[QualityRun], data: Path, out: Path,
                  base_model: Path) -> None:
    """Score the zero-shot prompt baselines and store them in ``out/zeroshot.json``."""
    from loraswap.adapters.package import TaskKind
    from loraswap.base_model.loading import Quantization, load_base_model
    from loraswap.training.data import TextExample, load_examples
    from loraswap.training.zeroshot import zero_shot_metrics

    specs = zero_shot_specs(data)
    path = out / "zeroshot.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    loaded = None
    for run in selected:
        spec = specs.get(run.name)
        if spec is None or spec.path in results:
            continue
        loaded = loaded or load_base_model(base_model, Quantization.BF16, "cpu")
        examples = [e for e in load_examples(Path(spec.path), TaskKind.SEQ_CLS, "auto",
                                             spec.text_column, spec.label_column)
                    if isinstance(e, TextExample)]
        results[spec.path] = zero_shot_metrics(loaded.model, loaded.tokenizer, examples,
                                               spec.verbalizers, spec.instruction,
                                               spec.limit)
        path.write_text(json.dumps(results, indent=2))


def generation_samples(data: Path, out: Path, base_model: Path, count: int = 3,
                       max_new_tokens: int = 80) -> list[dict[str, str]]:
    """Greedy answers of the base and of the Alpaca adapter to held-out instructions."""
    import torch
    from peft import PeftModel

    from loraswap.adapters.package import TaskKind
    from loraswap.base_model.loading import Quantization, load_base_model
    from loraswap.training.data import ChatExample, load_examples, split_examples

    examples = load_examples(data / "alpaca_1k" / "alpaca_data_1k.json", TaskKind.CAUSAL_LM)
    _, held_out = split_examples(examples, 0.1, 42)  # the run's validation split
    loaded = load_base_model(base_model, Quantization.BF16, "cpu")
    model = PeftModel.from_pretrained(loaded.model, str(out / "alpaca")).eval()
    tokenizer = loaded.tokenizer
    samples = []
    for example in held_out[:count]:
        assert isinstance(example, ChatExample)
        prompt = tokenizer.apply_chat_template(example.messages[:1], tokenize=False,
                                               add_generation_prompt=True)
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        answers = {}
        for label, adapter in (("base", False), ("lora", True)):
            with torch.no_grad():
                if adapter:
                    output = model.generate(**ids, max_new_tokens=max_new_tokens,
                                            do_sample=False)
                else:
                    with model.disable_adapter():
                        output = model.generate(**ids, max_new_tokens=max_new_tokens,
                                                do_sample=False)
            answers[label] = tokenizer.decode(output[0, ids["input_ids"].shape[1]:],
                                              skip_special_tokens=True).strip()
        samples.append({"instruction": example.messages[0]["content"],
                        "reference": example.messages[1]["content"], **answers})
    (out / "samples.json").write_text(json.dumps(samples, indent=2))
    return samples


def command_line(run: QualityRun) -> str:
    """The run as a shell command line."""
    return "loraswap train " + " ".join(run.args)


def _baseline_key(metric: str) -> str:
    # --baseline evaluates the untrained adapter on the test set when there is one.
    return "baseline_" + metric


def table(selected: list[QualityRun], data: Path, out: Path) -> str:
    """Markdown table: base (zero-shot) vs LoRA per dataset, with wall times."""
    times_path = out / "wall_seconds.json"
    times = json.loads(times_path.read_text()) if times_path.is_file() else {}
    zero_path = out / "zeroshot.json"
    zero = json.loads(zero_path.read_text()) if zero_path.is_file() else {}
    specs = zero_shot_specs(data)
    lines = ["| dataset | metric | zero-shot prompt | untrained adapter | LoRA | target "
             "| train s | wall s |", "|---|---|---|---|---|---|---|---|"]
    for run in selected:
        folder = out / run.name
        if not (folder / "loraswap.json").is_file():
            lines.append(f"| {run.dataset} | - | - | - | not run | {run.target} | - | - |")
            continue
        manifest = read_manifest(folder)
        seconds = manifest.training.get("train_seconds", "-")
        for metric in run.metrics:
            base = manifest.metrics.get(_baseline_key(metric))
            value = manifest.metrics.get(metric)
            spec = specs.get(run.name)
            prompt = zero.get(spec.path, {}).get(metric.removeprefix("test_")) if spec else None
            lines.append(
                f"| {run.dataset} | {metric} | {'-' if prompt is None else f'{prompt:.4f}'} | "
                f"{'-' if base is None else f'{base:.4f}'} | "
                f"{'-' if value is None else f'{value:.4f}'} | {run.target} | {seconds} | "
                f"{times.get(run.name, '-')} |")
    return "\n".join(lines)


def main(
    data_dir: Annotated[Path, typer.Option(help="Staged datasets.")] = Path("../shared/data"),
    out: Annotated[Path, typer.Option(help="Where the packages go.")] = (
        Path.home() / ".cache" / "loraswap" / "quality"),
    only: Annotated[str | None, typer.Option(help="Comma-separated run names.")] = None,
    print_commands: Annotated[bool, typer.Option(help="Only print the commands.")] = False,
    table_only: Annotated[bool, typer.Option(help="Only print the table.")] = False,
    zero_shot: Annotated[bool, typer.Option(help="Also score zero-shot prompting and "
                                            "sample Alpaca generations.")] = True,
    extras_only: Annotated[bool, typer.Option(help="Only the zero-shot scores and "
                                              "generation samples.")] = False,
    base_model: Annotated[Path, typer.Option(help="Base model folder.")] = (
        DEFAULT_BASE_MODEL_DIR),
) -> None:
    """Run the quality trainings one after another and print the results table."""
    data_dir = data_dir.resolve()
    selected = runs(data_dir, out)
    if only:
        wanted = {name.strip() for name in only.split(",")}
        selected = [run for run in selected if run.name in wanted]
    if print_commands:
        for run in selected:
            typer.echo(command_line(run))
        return
    if not (table_only or extras_only):
        out.mkdir(parents=True, exist_ok=True)
        times_path = out / "wall_seconds.json"
        for run in selected:
            typer.echo(f"== {run.name}: {command_line(run)}", err=True)
            started = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "loraswap.cli", "train", *run.args],
                                  check=False)
            times = json.loads(times_path.read_text()) if times_path.is_file() else {}
            times[run.name] = round(time.perf_counter() - started)
            times_path.write_text(json.dumps(times, indent=2))
            if done.returncode != 0:
                typer.echo(f"{run.name} failed (exit {done.returncode})", err=True)
    if extras_only or (zero_shot and not table_only):
        run_zero_shot(selected, data_dir, out, base_model)
        if any(run.name == "alpaca" for run in selected) and (out / "alpaca").is_dir():
            for sample in generation_samples(data_dir, out, base_model):
                typer.echo(json.dumps(sample, indent=2))
    typer.echo(table(selected, data_dir, out))
