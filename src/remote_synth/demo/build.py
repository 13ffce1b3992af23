"""Build the demo NSS run directories: a tiny Llama, its tokenizer, and a LoRA adapter per table.

Everything is trained here, seeded, in a few minutes on two CPU cores; no hub
download. The base model learns a third table as JSON lines (``orders``) and the
demo tables (``customers``, ``products``) as CSV under another instruction, so
it knows every token of their rows but not their JSON lines: only a table's own
adapter writes valid records of it, which makes "the adapter is really served"
testable, and two adapters on one server tell apart which one answered.
(A LoRA cannot teach tokens the base never saw: their embeddings stay random
and the tied output layer is frozen.)

Prompt and records are tokenized separately and their ids joined, as NSS does:
tokenized as one string, ``[/INST]`` + ``{`` merge into a token the model never
sees at generation time. The prompt is tokenized with the tokenizer's defaults
(BOS first), exactly as vLLM tokenizes it at generation time.

The result is cached under ``~/.cache/remote-synth/demo/<digest>/`` and rebuilt
when the tables, this recipe or this file change: ``base`` the base model, ``run`` the customers
run (the default demo), ``run-products`` and ``run-readings`` the others', each built when first
asked for. Needs the ``cpu`` (or
``gpu``) extra: torch, transformers, peft, tokenizers.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import json
import logging
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..nss.prompt import build_prompt
from ..nss.timeseries import prefill
from .layout import TINYLLAMA_TEMPLATE, write_run_dir

__all__ = ["TABLES", "Recipe", "build_demo_run", "cache_root", "ensure_demo_run", "infer_schema"]

logger = logging.getLogger("remote_synth.demo")

DATA = Path(__file__).parent / "data"
CSV_INSTRUCTION = "Generate a CSV dataset with the following columns: "
Report = Callable[[str], None]
TABLES = (
    "customers",
    "products",
    "readings",
    "visits",
)  # each gets an adapter and a run directory; the first is the demo
LAYOUTS_016 = {"readings-0.1.16": "readings"}
"""Runs in NSS 0.1.16's time-series layout, each of another table's adapter (which learnt both layouts)."""
BASE_TABLE = "orders"  # the base model's only JSON lines
BASE_TABLES = ("customers", "products", "readings")
"""Tables whose schema and CSV the base sees (their tokens trained)."""
OWN_BASE = {"visits": "base-flexible"}
"""Tables on a base of their own: that base also sees their CSV (``_is_last_row``, ``true``: tokens
no other table has). Adding them to the shared base changed it under every other table's adapter
(the customers adapter on it wrote no valid record); on the shared base as it is, the visits
adapter ended 2 groups of 24."""


@dataclass(frozen=True)
class Series:
    """A demo table that is a time series, with what NSS's training writes for one."""

    group: str
    time: str
    format: str
    interval: int


SERIES = {"readings": Series(group="device", time="time", format="%Y-%m-%d %H:%M", interval=3600)}
FLEXIBLE = {"visits": Series(group="visitor", time="time", format="%Y-%m-%d %H:%M", interval=3600)}
"""Time series whose groups differ in length: trained and saved as NSS 0.1.16's flexible mode does
(an index from 0 in ``_time_idx``, each group's last row marked in ``_is_last_row``)."""
INDEX, MARKER = "_time_idx", "_is_last_row"


@dataclass(frozen=True)
class Recipe:
    """Every number that shapes the demo; part of the cache key."""

    seed: int = 1126
    vocab_size: int = 512
    hidden: int = 128
    layers: int = 2
    heads: int = 2
    context: int = 512
    base_steps: int = 400
    base_lr: float = 3e-3
    lora_r: int = 16
    lora_steps: int = 500
    series_steps: int = 1600  # a series adapter must also copy its group and count the hours: 600 were too few,
    # and 1000 held on one seed only
    lora_lr: float = 3e-3
    batch_size: int = 16
    records_per_example: tuple[int, int] = (2, 6)
    temperature: float = 0.3


def cache_root() -> Path:
    if env := os.environ.get("REMOTE_SYNTH_CACHE_DIR"):
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "remote-synth"


def ensure_demo_run(
    recipe: Recipe = Recipe(), root: Path | None = None, table: str = TABLES[0], report: Report | None = None
) -> Path:
    """The cached demo run directory of ``table`` (one of ``TABLES``), built first if missing or stale.

    Only what it needs is built: the base model (once), then this table's adapter, so the default
    demo does not wait for the other tables' adapters (they build when first asked for).
    ``report(line)`` hears each phase of a build with its elapsed time (logged at INFO without it).
    """
    if table in LAYOUTS_016:
        source = ensure_demo_run(recipe, root, LAYOUTS_016[table], report)
        return _cached(
            source.with_name(_run_name(table)),
            lambda tmp: _relayout_016(tmp, source, LAYOUTS_016[table]),
            report or logger.info,
        )
    if table not in TABLES:
        raise ValueError(f"no demo table {table!r}; there are {', '.join([*TABLES, *LAYOUTS_016])}")
    home = (root or cache_root() / "demo") / _digest(recipe)
    say = report or logger.info
    name, seen = OWN_BASE.get(table, "base"), _base_tables(table)
    base = _cached(home / name, lambda tmp: _build_base(tmp, recipe, say, seen), say)
    return _cached(home / _run_name(table), lambda tmp: _build_run(tmp, base, table, recipe, say), say)


def build_demo_run(out: Path, recipe: Recipe = Recipe(), report: Report | None = None) -> Path:
    """Train the base into ``out/base`` and an adapter per table into NSS runs; returns the first run."""
    say = report or logger.info
    _build_base(out / "base", recipe, say)
    for table in TABLES:
        base = OWN_BASE.get(table, "base")
        if not (out / base).exists():
            _build_base(out / base, recipe, say, _base_tables(table))
        _build_run(out / _run_name(table), out / base, table, recipe, say)
    return out / _run_name(TABLES[0])


def _cached(final: Path, build: Callable[[Path], None], say: Report) -> Path:
    """``final``, built by ``build(tmp)`` into a temporary folder and moved into place, once (a lock)."""
    done = final.with_name(final.name + ".done")
    if done.exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with _lock(final.parent / ".lock"):
        if not done.exists():
            say(f"building the demo's {final.name} (a few minutes, once) into {final}")
            tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".build-{final.name}-"))
            try:
                build(tmp)
                _relocate(tmp, final)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            done.write_text("")
    return final


def _timer(say: Report) -> Callable[[str], Callable[[int, int], None]]:
    started = time.monotonic()

    def phase(what: str) -> Callable[[int, int], None]:
        return lambda step, steps: say(f"demo: {what}, step {step}/{steps} ({time.monotonic() - started:.0f} s)")

    return phase


def _tables() -> tuple[dict[str, list[dict[str, Any]]], dict[str, dict[str, Any]]]:
    rows = {name: _read(DATA / f"{name}.csv") for name in (*TABLES, BASE_TABLE)}
    for name, spec in FLEXIBLE.items():  # as NSS 0.1.16's preprocessing leaves them
        rows[name] = _flexible_rows(rows[name], spec)
    return rows, {name: infer_schema(table) for name, table in rows.items()}


def _flexible_rows(rows: list[dict[str, Any]], spec: Series) -> list[dict[str, Any]]:
    """NSS 0.1.16's flexible form (``prepare_flexible_timeseries_data``): the group, the index,
    the other columns, the marker; rows in time order within each group."""
    out = []
    for members in _groups(rows, spec.group).values():
        members = sorted(members, key=lambda r: r[spec.time])
        for i, row in enumerate(members):
            rest = {k: v for k, v in row.items() if k != spec.group}
            out.append({spec.group: row[spec.group], INDEX: i, **rest, MARKER: i == len(members) - 1})
    return out


def _seeded(recipe: Recipe, what: str) -> random.Random:
    """Each part of the demo has its own seed, so a part built alone comes out the same."""
    import torch

    seed = int(hashlib.sha256(f"{recipe.seed}:{what}".encode()).hexdigest()[:8], 16)
    torch.manual_seed(seed)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    return random.Random(seed)


def _base_tables(table: str) -> tuple[str, ...]:
    """The tables whose tokens ``table``'s base sees: the shared ones, and itself if it has its own."""
    return (*BASE_TABLES, table) if table in OWN_BASE else BASE_TABLES


def _build_base(out: Path, recipe: Recipe, say: Report, tables: tuple[str, ...] = BASE_TABLES) -> None:
    """The tokenizer and the base model (which sees ``tables``' schemas and CSV), saved in ``out``."""
    rng = _seeded(recipe, "base")
    rows, schemas = _tables()
    prompt = build_prompt(list(schemas[BASE_TABLE]["properties"]), TINYLLAMA_TEMPLATE)
    # The demo tables' own schema fragments under another instruction: the base sees their keys' tokens
    # (so their embeddings, tied to the output layer, are trained) but only ever answers them in CSV.
    corpus = [(prompt, _jsonl(rng, rows[BASE_TABLE], recipe)) for _ in range(600)]
    for name in tables:
        csv_prompt = build_prompt(list(schemas[name]["properties"]), TINYLLAMA_TEMPLATE, instruction=CSV_INSTRUCTION)
        corpus += [(csv_prompt, _csv(rng, rows[name], recipe)) for _ in range(600)]
    tokenizer = _train_tokenizer(corpus, recipe)
    model = _new_model(tokenizer, recipe)
    examples = [_encode(tokenizer, p, t) for p, t in corpus]
    _train(model, tokenizer, examples, recipe.base_steps, recipe.base_lr, recipe, rng, _timer(say)("base model"))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _build_run(out: Path, base_dir: Path, table: str, recipe: Recipe, say: Report) -> None:
    """``table``'s adapter on the base in ``base_dir``, as an NSS run directory in ``out``."""
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    rng = _seeded(recipe, table)
    rows, schemas = _tables()
    tokenizer = PreTrainedTokenizerFast.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    series, flexible = SERIES.get(table), FLEXIBLE.get(table)
    columns = list(schemas[table]["properties"])
    if flexible is not None:
        examples = _flexible_examples(rng, tokenizer, rows[table], flexible, columns)
    elif series is None:
        prompt = build_prompt(columns, TINYLLAMA_TEMPLATE)
        examples = [_encode(tokenizer, prompt, _jsonl(rng, rows[table], recipe)) for _ in range(800)]
    else:
        examples = _series_examples(rng, tokenizer, rows[table], series, columns, recipe)
    peft_model = _add_lora(model, recipe)
    steps = recipe.lora_steps if series is None and flexible is None else recipe.series_steps
    _train(peft_model, tokenizer, examples, steps, recipe.lora_lr, recipe, rng, _timer(say)(f"{table} adapter"))
    peft_model.save_pretrained(out / "train" / "adapter")
    _fix_adapter_base(out / "train" / "adapter" / "adapter_config.json", base_dir)
    # tabular runs as NSS 0.1.16 saves them; a time series in the older protocol's layout (its
    # adapter learnt both: ``readings-0.1.16`` is the same adapter in 0.1.16's layout)
    longest = max(len(ids) for ids, _ in examples)
    num_records = _num_records(rows[table], series)
    if flexible is not None:  # every source row (num_records measures a time series' progress only)
        layout, num_records = _flexible_layout(rows[table], flexible), len(rows[table])
    elif series is not None:
        layout = _series_layout(rows[table], series)
    else:
        layout = {"layout": "0.1.16", "max_tokens_per_example": longest}
    write_run_dir(
        out,
        schemas[table],
        base_model=str(base_dir),
        lora_r=recipe.lora_r,
        base_max_seq_length=recipe.context,
        generation={"temperature": recipe.temperature, "num_records": num_records},
        adapter_weights=None,
        **layout,
    )


def _series_examples(
    rng: random.Random,
    tokenizer: Any,
    rows: list[dict[str, Any]],
    series: Series,
    columns: list[str],
    recipe: Recipe,
) -> list[Example]:
    """Windows of one group's records in time order, half in each protocol's layout:

    - 48a8f5c: the prompt text ends in 3 records (the prefill), tokenized with it; the next ones to learn;
    - NSS 0.1.16: ``[BOS] prompt [EOS] [BOS]`` and then records, each tokenized alone, from the group's
      first record (a third of them: that is where generation starts) or from anywhere.
    """
    groups = _groups(rows, series.group)
    order = [series.group, series.time] + [c for c in columns if c not in (series.group, series.time)]
    prompt_016 = _prompt_ids(tokenizer, build_prompt(columns, TINYLLAMA_TEMPLATE))
    examples = []
    for i in range(1000):
        records = [{c: r[c] for c in order} for r in rng.choice(list(groups.values()))]
        context, k = 3, rng.randint(*recipe.records_per_example)
        if i % 2 == 0:
            start = rng.randint(0, len(records) - context - k)
            window = prefill(records[start : start + context])
            later = prefill(records[start + context : start + context + k])
            examples.append(_encode(tokenizer, build_prompt(order, TINYLLAMA_TEMPLATE, prefill=window), later))
            continue
        start = 0 if i % 3 == 0 else rng.randint(0, len(records) - context - k)
        examples.append(_sequence_example(tokenizer, prompt_016, records[start : start + context + k]))
    return examples


def _flexible_examples(
    rng: random.Random, tokenizer: Any, rows: list[dict[str, Any]], spec: Series, columns: list[str]
) -> list[Example]:
    """NSS 0.1.16's token layout, ``[BOS] prompt [EOS] [BOS]`` and then each record tokenized alone,
    from a group's first record (half of them: where generation starts) or from anywhere in it,
    always to the group's last (marked) record and EOS."""
    groups = list(_groups(rows, spec.group).values())
    prompt = _prompt_ids(tokenizer, build_prompt(columns, TINYLLAMA_TEMPLATE))
    examples = []
    for i in range(1000):
        records = rng.choice(groups)
        start = 0 if i % 2 == 0 else rng.randrange(len(records))
        examples.append(_sequence_example(tokenizer, prompt, records[start:]))
    return examples


def _sequence_example(tokenizer: Any, prompt: list[int], records: list[dict[str, Any]]) -> Example:
    """NSS 0.1.16's training sequence: the prompt's ids, ``[BOS]``, each record tokenized alone,
    ``[EOS]``; loss on everything after the prompt."""
    ids = [tokenizer.bos_token_id]
    for record in records:
        ids += tokenizer(prefill([record]), add_special_tokens=False)["input_ids"]
    ids.append(tokenizer.eos_token_id)
    return prompt + ids, [-100] * len(prompt) + ids


def _groups(rows: list[dict[str, Any]], column: str) -> dict[Any, list[dict[str, Any]]]:
    """Rows by their ``column`` value, groups and rows in table order."""
    groups: dict[Any, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row[column], []).append(row)
    return groups


def _flexible_layout(rows: list[dict[str, Any]], spec: Series) -> dict[str, Any]:
    """What NSS 0.1.16 saves for a flexible time series: the index as the run's time (elapsed, one
    apart, to the longest group's last), the group registry, the source columns and the controls."""
    lengths = {group: len(members) for group, members in _groups(rows, spec.group).items()}
    longest = max(lengths.values())
    controls = {"index_column": INDEX, "marker_column": MARKER, "max_records": longest,
                "source_timestamp_column": spec.time, "source_timestamp_format": spec.format,
                "source_interval_seconds": spec.interval}  # fmt: skip
    return {
        "layout": "0.1.16",
        "time_series": {"timestamp_column": INDEX, "timestamp_format": "elapsed_seconds",
                        "timestamp_interval_seconds": 1, "start_timestamp": 0, "stop_timestamp": longest - 1},
        "data": {"group_training_examples_by": spec.group, "order_training_examples_by": INDEX},
        "timeseries_group_values": list(lengths),
        "source_columns": [c for c in rows[0] if c not in (INDEX, MARKER)],
        "flexible": controls,
    }  # fmt: skip


def _prompt_ids(tokenizer: Any, prompt: str) -> list[int]:
    """NSS 0.1.16's prompt ids: its own BOS and EOS around the text, tokenized without special tokens."""
    ids: list[int] = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    return [tokenizer.bos_token_id, *ids, tokenizer.eos_token_id]


def _series_layout(rows: list[dict[str, Any]], series: Series) -> dict[str, Any]:
    """What NSS's time-series training writes: the ``time_series`` settings (start and stop as
    ``str(pandas.Timestamp)``), the groups, and each group's first 3 records as NSS's assembler
    joins them (a leading space, blank lines between)."""
    stamps = sorted(r[series.time] for r in rows)
    first: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        first.setdefault(str(row[series.group]), []).append(row)
    return {
        "time_series": {
            "timestamp_column": series.time,
            "timestamp_format": series.format,
            "timestamp_interval_seconds": series.interval,
            "start_timestamp": stamps[0] + ":00",
            "stop_timestamp": stamps[-1] + ":00",
        },
        "data": {"group_training_examples_by": series.group, "order_training_examples_by": series.time},
        "initial_prefill": {g: " " + "\n".join(prefill([r]) for r in records[:3]) for g, records in first.items()},
    }


def _relayout_016(out: Path, source: Path, table: str) -> None:
    """``source``'s adapter in NSS 0.1.16's time-series layout: the groups typed in a registry, the
    bounds as NSS 0.1.16 stores them (``str(pandas.Timestamp)``), the source columns' order."""
    from ..nss.rundir import RunDirectory

    run = RunDirectory.open(source)
    adapter = out / "train" / "adapter"
    adapter.mkdir(parents=True)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy2(run.adapter_dir / name, adapter / name)
    series = run.config.time_series
    rows = _read(DATA / f"{table}.csv")
    group = SERIES[table].group
    groups = list(dict.fromkeys(str(r[group]) for r in rows))
    write_run_dir(
        out,
        run.schema,
        base_model=run.metadata.model_name_or_path,
        lora_r=run.adapter_config.r,
        base_max_seq_length=run.metadata.base_max_seq_length or 512,
        generation={**run.config.generation, "num_records": len(rows)},
        adapter_weights=None,
        time_series=series.model_dump(exclude={"is_timeseries"}),
        data={
            "group_training_examples_by": run.config.data.group_training_examples_by,
            "order_training_examples_by": run.config.data.order_training_examples_by,
        },
        layout="0.1.16",
        timeseries_group_values=groups,
        max_tokens_per_example=None,
    )


def _num_records(rows: list[dict[str, Any]], series: Series | None) -> int:
    """100 rows; a series: every record after each group's first 3 (which prompt it), to its stop."""
    if series is None:
        return 100
    return len(rows) - 3 * len({r[series.group] for r in rows})


def _run_name(table: str) -> str:
    return "run" if table == TABLES[0] else f"run-{table}"


def infer_schema(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """NSS's schema inference for the simple columns the demo has (reference 2.4)."""
    n = len(rows)
    properties: dict[str, Any] = {}
    for name in rows[0]:
        values = [r[name] for r in rows]
        if all(isinstance(v, bool) for v in values):
            properties[name] = {"type": "boolean"}
            continue
        counts: dict[Any, int] = {}
        for v in values:
            counts[v] = counts.get(v, 0) + 1
        singletons = sum(1 for c in counts.values() if c == 1)
        if len(counts) <= n**0.5 and singletons <= n ** (1 / 3):
            properties[name] = {"enum": sorted(counts)}
        elif all(isinstance(v, int) for v in values):
            properties[name] = {"type": "integer", "minimum": float(min(values)), "maximum": float(max(values))}
        else:
            lengths = [len(str(v)) for v in values]
            properties[name] = {
                "type": "string",
                "minLength": round(min(lengths) / 1.5),
                "maxLength": round(1.5 * max(lengths)),
            }
    return {"type": "object", "properties": properties, "required": list(properties)}


def _read(path: Path) -> list[dict[str, Any]]:
    with path.open(newline="") as fh:
        return [{k: int(v) if v.lstrip("-").isdigit() else v for k, v in row.items()} for row in csv.DictReader(fh)]


def _jsonl(rng: random.Random, rows: list[dict[str, Any]], recipe: Recipe) -> str:
    """Training text as NSS writes it (pandas to_json lines: compact, one record a line)."""
    return prefill(rng.sample(rows, rng.randint(*recipe.records_per_example)))


def _csv(rng: random.Random, rows: list[dict[str, Any]], recipe: Recipe) -> str:
    k = rng.randint(*recipe.records_per_example)
    return "".join(",".join(_cell(v) for v in r.values()) + "\n" for r in rng.sample(rows, k))


def _cell(value: object) -> str:
    """Booleans as JSON spells them (the flexible marker's tokens are trained in the base)."""
    return json.dumps(value) if isinstance(value, bool) else str(value)


def _train_tokenizer(corpus: list[tuple[str, str]], recipe: Recipe) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=recipe.vocab_size,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator((p + "\n" + t for p, t in corpus), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="</s>"
    )


def _new_model(tokenizer: Any, recipe: Recipe) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=recipe.hidden,
        intermediate_size=4 * recipe.hidden,
        num_hidden_layers=recipe.layers,
        num_attention_heads=recipe.heads,
        num_key_value_heads=recipe.heads,
        max_position_embeddings=recipe.context,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id,
    )
    return LlamaForCausalLM(config)


def _add_lora(model: Any, recipe: Recipe) -> Any:
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=recipe.lora_r,
        lora_alpha=2 * recipe.lora_r,
        lora_dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


Example = tuple[list[int], list[int]]
"""A training example: its token ids, and its labels (-100 where no loss is taken: the prompt)."""


def _encode(tokenizer: Any, prompt: str, text: str) -> Example:
    """Prompt ids (with BOS, as vLLM adds it) + record ids + EOS; loss on the records only."""
    prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    text_ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return prompt_ids + text_ids, [-100] * len(prompt_ids) + text_ids


def _train(
    model: Any,
    tokenizer: Any,
    examples: list[Example],
    steps: int,
    lr: float,
    recipe: Recipe,
    rng: random.Random,
    progress: Callable[[int, int], None],
) -> None:
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    model.train()
    for step in range(1, steps + 1):
        batch = rng.sample(examples, recipe.batch_size)
        width = max(len(ids) for ids, _ in batch)
        pad = tokenizer.eos_token_id
        input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in batch])
        labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in batch])
        mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in batch])
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        if step % 100 == 0 or step == steps:
            progress(step, steps)
    model.eval()
    logger.debug("last training loss %.3f", float(loss.detach()))


def _fix_adapter_base(config_file: Path, base_dir: Path) -> None:
    data = json.loads(config_file.read_text())
    data["base_model_name_or_path"] = str(base_dir)
    config_file.write_text(json.dumps(data, indent=2))


def _relocate(tmp: Path, final: Path) -> None:
    """Move a finished build into place; paths inside its files point at the final place."""
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for name in ("adapter/adapter_config.json", "adapter/metadata_v2.json", "safe-synthesizer-config.json"):
        path = final / "train" / name
        if path.is_file():
            path.write_text(path.read_text().replace(str(tmp), str(final)))


def _digest(recipe: Recipe) -> str:
    h = hashlib.sha256(json.dumps(asdict(recipe), sort_keys=True).encode())
    for path in sorted([*DATA.glob("*.csv"), Path(__file__), Path(__file__).with_name("layout.py")]):
        h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()[:16]


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    with path.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


if __name__ == "__main__":  # pragma: no cover
    import sys

    logging.basicConfig(level=logging.INFO)
    print(ensure_demo_run(table=sys.argv[1] if len(sys.argv) > 1 else TABLES[0]))
