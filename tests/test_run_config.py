"""`glm-corpus run CONFIG` and `glm-corpus config example|check`: one file describes a whole run.

The example config must load into every stage's typed config; unknown keys anywhere are errors; a config
with only ingest options runs ingest (and the report) into its output directory and resumes on a rerun.
"""

from __future__ import annotations

import io
from pathlib import Path

import orjson
import pytest
import yaml

from common.errors import ConfigError
from masking.config import MaskingConfig
from mip.stage import MipConfig
from pipeline.ingest import IngestConfig
from pipeline.run_config import (
    EXAMPLE_CONFIG,
    RUN_STATE_FILE,
    _StepLog,
    load_run_config,
    parse_run_config,
    run_pipeline,
)
from trainer.config import TrainConfig


@pytest.fixture
def cli_main(monkeypatch):
    """`cli.main` with the run/config commands registered (until cli.py lists pipeline.run_commands)."""
    import cli

    if "pipeline.run_commands" not in cli.COMMAND_MODULES:
        monkeypatch.setattr(cli, "COMMAND_MODULES", (*cli.COMMAND_MODULES, "pipeline.run_commands"))
    return cli.main


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_the_example_config_loads_into_every_typed_config(tmp_path: Path) -> None:
    config = load_run_config(write(tmp_path / "conf" / "run.yaml", EXAMPLE_CONFIG))

    assert config.out == tmp_path / "conf" / "glm-run"  # relative to the config file
    assert isinstance(config.ingest, IngestConfig)
    assert isinstance(config.mip, MipConfig)
    assert isinstance(config.masking, MaskingConfig)
    assert isinstance(config.train, TrainConfig)
    from mip.audit import AuditConfig

    assert isinstance(config.audit, AuditConfig)
    # The run fills what the stages share: paths, the tokenizer, the workers.
    model = str(config.out / "tokenizer" / "ice_text.model")
    assert config.ingest.out == str(config.out / "tokens") and config.ingest.inputs == [str(config.out / "raw")]
    assert config.ingest.tokenizer == model == config.mip.tokenizer == config.audit.tokenizer
    assert config.mip.out == str(config.out / "mip")
    assert config.mip.inputs == [str(config.out / "mip" / "demo-instructions")]
    assert config.audit.train == str(config.out / "train")
    assert config.audit.train_config == str(config.out / ".run" / "train.yaml")
    assert config.ingest.workers == 2 and config.masking.workers == 2
    # The values of the example reach the typed configs.
    assert config.ingest.dedup.threshold == 0.8 and config.ingest.langid.expected["wudao"] == ["zh"]
    assert config.masking.rows == 64 and config.masking.mask_fraction == 0.3
    assert config.train.steps == 32 and config.train.model.hidden_size == 64
    assert config.tokenizer.train is not None and config.tokenizer.train.vocab_size == 2000
    assert config.mip_options.demo and config.audit_options.stop_on_violation
    orjson.dumps(config.to_dict())  # JSON-ready


def test_every_example_section_is_commented(tmp_path: Path) -> None:
    data = yaml.safe_load(EXAMPLE_CONFIG)
    for key in data:
        assert f"\n{key}:" in EXAMPLE_CONFIG
        before = EXAMPLE_CONFIG.split(f"\n{key}:")[0].rstrip().splitlines()[-1]
        assert before.startswith("#"), f"top-level key {key} has no comment above it"


def test_config_example_command_prints_a_config_that_run_accepts(cli_main, tmp_path: Path, capsys) -> None:
    assert cli_main(["config", "example"]) == 0
    printed = capsys.readouterr().out
    path = write(tmp_path / "run.yaml", printed)
    assert cli_main(["config", "check", str(path), "--json"]) == 0
    resolved = orjson.loads(capsys.readouterr().out)
    assert resolved["masking"]["rows"] == 64 and resolved["out"] == str(tmp_path / "glm-run")
    assert cli_main(["config", "check", str(path), "--set", "masking.bogus=1"]) == 1
    assert "masking.bogus" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"colour": "blue"}, "unknown config key.*colour"),
        ({"ingest": {"dedup": {"treshold": 0.7}}}, r"ingest\.dedup\.treshold"),
        ({"masking": {"mask_ratios": 0.2}}, r"masking\.mask_ratios"),
        ({"mip": {"demo": True, "cap": {}}}, r"mip\.cap"),
        ({"train": {"model": {"layers": 4}}}, r"train\.model\.layers"),
        ({"ingest": {"out": "/elsewhere"}}, r"ingest\.out: set by the run"),
        ({"masking": {"rows": "many"}}, r"masking\.rows: expected an integer"),
        ({"masking": {"mask_ratio": 0.9}}, "mask_ratio must be in"),
        ({"train": {"steps": 3}}, "train section needs a masking section"),
        ({"sources": [{"path": "raw", "format": "parquet"}]}, "format of .* must be one of"),
        ({"sources": [{"path": "a", "format": "pile"}, {"path": "b"}]}, "must be given, equal, for every"),
        ({"ingest": False}, "cannot be false"),
        ({"audit": {}}, "audit section needs a masking section"),
    ],
)
def test_bad_configs_are_errors_naming_the_key(tmp_path: Path, override: dict, message: str) -> None:
    data = {"out": "run", "sources": [{"path": "raw"}], **override}
    with pytest.raises(ConfigError, match=message):
        parse_run_config(data, base_dir=tmp_path)


def test_a_run_needs_an_output_and_sources(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="`out`"):
        parse_run_config({"sources": [{"path": "raw"}]}, base_dir=tmp_path)
    with pytest.raises(ConfigError, match="sources"):
        parse_run_config({"out": "run"}, base_dir=tmp_path)


def test_sections_present_run_absent_or_false_do_not(tmp_path: Path) -> None:
    config = parse_run_config({"out": "run", "sources": [{"path": "raw"}], "masking": None, "mip": False},
                              base_dir=tmp_path)
    assert config.masking == MaskingConfig(workers=2) and config.mip is None and config.train is None


def test_toml_configs_and_source_names(tmp_path: Path) -> None:
    path = write(tmp_path / "run.toml", """
out = "run"
[[sources]]
path = "data/books"
name = "books"
[ingest]
batch_size = 64
[ingest.dedup]
enabled = false
""")
    config = load_run_config(path, overrides=["ingest.strict=true"])
    assert config.ingest.sources == {str(tmp_path / "data" / "books"): "books"}
    assert config.ingest.batch_size == 64 and not config.ingest.dedup.enabled and config.ingest.strict


def test_the_step_log_keeps_json_records_and_prints_readable_lines(tmp_path: Path) -> None:
    echo = io.StringIO()
    log = _StepLog(tmp_path / "ckpt" / "train_log.jsonl", echo)
    record = {"step": 0, "loss": 11.5, "lr": 0.001, "grad_norm": 0.5, "loss_scale": 1.0, "skipped": False,
              "tokens_per_s": 100.0, "mfu": 0.01, "data_wait_s": 0.0}
    log.write(orjson.dumps(record).decode() + "\nnot a record\n" + orjson.dumps({**record, "step": 1}).decode())
    log.close()
    lines = (tmp_path / "ckpt" / "train_log.jsonl").read_text().splitlines()
    assert [orjson.loads(line)["step"] for line in lines] == [0, 1]
    assert "step     0 | loss 11.5000" in echo.getvalue() and "not a record" in echo.getvalue()


def test_an_ingest_only_config_runs_ingest_and_the_report_then_resumes(
    small_raw_corpus, tiny_model, ray_session, tmp_path: Path, cli_main, capsys
) -> None:
    raw, _ = small_raw_corpus
    path = write(tmp_path / "run.yaml", f"""
out: out
sources:
  - path: {raw}
tokenizer:
  path: {tiny_model}
ingest:
  object_store_mb: 128
  dedup:
    threshold: 0.8
""")
    assert cli_main(["run", str(path), "--json"]) == 0
    summary = orjson.loads(capsys.readouterr().out)
    out = tmp_path / "out"
    assert summary["out"] == str(out)
    stages = summary["stages"]
    assert stages["ingest"]["status"] == "ran" and stages["report"]["status"] == "ran"
    for name in ("default_data", "tokenizer", "mip", "masking", "audit", "train"):
        assert stages[name]["status"] == "not configured"
    manifest = orjson.loads((out / "tokens" / "manifest.json").read_bytes())
    assert manifest["totals"]["docs_out"] > 0 and set(manifest["sources"]) == {"pile", "wudao", "crawl"}
    assert (out / "report.html").exists() and (out / "run-config.json").exists()
    assert orjson.loads((out / RUN_STATE_FILE).read_bytes())["stages"]["ingest"]["status"] == "ran"

    # A rerun finds ingest complete (its manifest records inputs and config) and rewrites only the report.
    before = (out / "tokens" / "manifest.json").stat().st_mtime_ns
    config = load_run_config(path)
    again = run_pipeline(config, progress=False)
    assert again["stages"]["ingest"]["status"] == "up to date"
    assert (out / "tokens" / "manifest.json").stat().st_mtime_ns == before
