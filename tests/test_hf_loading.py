"""Saved models load with only torch + transformers, with pda's logits, or refuse to load; never silently wrong."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForSequenceClassification

from model_kinds import KINDS, batches, pruned, student, tiny, with_adapters
from pda.checkpoint import MODELING_FILE, deployable_model, load_model, save_model
from pda.modeling_pda_bert import MODEL_TYPE, PdaBertForSequenceClassification

torch.set_num_threads(1)
ATOL = 1e-5

# Runs with cwd outside the repository and pda / adapters made unimportable before anything else.
CLEAN_LOADER = textwrap.dedent('''
    import importlib.abc, json, sys
    from pathlib import Path

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("pda", "adapters"):
                raise ImportError(f"{name} is blocked: loading must not need it")
            return None

    sys.meta_path.insert(0, Block())
    for blocked in ("pda", "adapters"):
        try:
            __import__(blocked)
            raise SystemExit(f"{blocked} is still importable")
        except ImportError:
            pass

    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForSequenceClassification

    root, inputs = Path(sys.argv[1]), load_file(sys.argv[2])
    report = {}
    for model_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        entry = report[model_dir.name] = {}
        try:
            AutoModelForSequenceClassification.from_pretrained(model_dir)
            entry["without_trust"] = "loaded"
        except Exception as err:
            entry["without_trust"] = f"{type(err).__name__}: {err}"
        model = AutoModelForSequenceClassification.from_pretrained(model_dir, trust_remote_code=True).eval()
        entry["class"] = type(model).__name__
        logits = {}
        with torch.no_grad():
            for i in range(len({k.split("/")[0] for k in inputs})):
                batch = {k.split("/")[1]: v for k, v in inputs.items() if k.startswith(f"{i}/")}
                logits[f"{i}"] = model(**batch).logits.contiguous()
        save_file(logits, str(model_dir / "clean_logits.safetensors"))
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("pda", "adapters"))
    (root / "report.json").write_text(json.dumps({"report": report, "leaked": leaked}))
''')


def minilm_kind() -> torch.nn.Module:
    """The embedded MiniLM (real weights) as a pruned, adapted student: the deepest combination."""
    from pda.models import embedded_model_dir

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(embedded_model_dir(), num_labels=2)
    model = with_adapters(student(model), via_pda=True)
    heads = model.config.num_attention_heads
    ffn = model.config.intermediate_size
    g = torch.Generator().manual_seed(3)
    gates = {"head": (torch.rand(3, heads, generator=g) > 0.4).float(), "mha": torch.tensor([1.0, 0.0, 0.8]),
             "int": (torch.rand(3, ffn, generator=g) > 0.7).float(), "ffn": torch.tensor([0.9, 1.0, 0.0])}
    from pda.pruning import export_pruned

    export_pruned(model, gates)
    return model.eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[Path, dict[str, list[torch.Tensor]], dict]:
    """Every kind saved, its logits from pda's loader, and what a clean interpreter made of the directories."""
    root = tmp_path_factory.mktemp("models")
    expected: dict[str, list[torch.Tensor]] = {}
    inputs = batches()
    kinds = {name: build for name, (build, _) in KINDS.items()} | {"minilm-P+D+A": minilm_kind}
    for name, build in kinds.items():
        model = build()
        save_model(model, root / name)
        reloaded = load_model(root / name)
        with torch.no_grad():
            expected[name] = [reloaded(**b).logits for b in inputs]
            original = [model(**b).logits for b in inputs]
        for got, want in zip(expected[name], original):
            torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    flat = {f"{i}/{k}": v for i, b in enumerate(inputs) for k, v in b.items()}
    save_file(flat, str(root.parent / "inputs.safetensors"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP")}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(root.parent / "hf_modules"), TRANSFORMERS_VERBOSITY="error",
               TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", CLEAN_LOADER, str(root), str(root.parent / "inputs.safetensors")],
                          cwd=root.parent, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root, expected, json.loads((root / "report.json").read_text())


def test_the_clean_interpreter_really_had_no_pda_and_no_adapters(saved) -> None:
    _, _, result = saved
    assert result["leaked"] == []


@pytest.mark.parametrize("kind", [*KINDS, "minilm-P+D+A"])
def test_every_kind_loads_without_pda_with_pdas_logits(saved, kind: str) -> None:
    root, expected, _ = saved
    clean = load_file(root / kind / "clean_logits.safetensors")
    assert len(clean) == len(expected[kind]) == 3
    for i, want in enumerate(expected[kind]):
        torch.testing.assert_close(clean[str(i)], want, atol=ATOL, rtol=0)


@pytest.mark.parametrize("kind", [*KINDS, "minilm-P+D+A"])
def test_stock_loading_works_exactly_when_stock_bert_represents_the_model(saved, kind: str) -> None:
    root, _, result = saved
    entry = result["report"][kind]
    config = json.loads((root / kind / "config.json").read_text())
    stock = KINDS[kind][1] if kind in KINDS else False
    if stock:
        assert entry["without_trust"] == "loaded" and entry["class"] == "BertForSequenceClassification"
        assert config["model_type"] == "bert" and "auto_map" not in config
        assert not (root / kind / MODELING_FILE).exists()
    else:  # refused, and the refusal says how to load it
        assert "trust_remote_code=True" in entry["without_trust"], entry["without_trust"]
        assert entry["class"] == "PdaBertForSequenceClassification"
        assert config["model_type"] == MODEL_TYPE and config["pruned_heads"] == {}
        assert set(config["auto_map"]) == {"AutoConfig", "AutoModelForSequenceClassification"}
        assert (root / kind / MODELING_FILE).is_file()
        if config.get("pda_adapter"):
            assert isinstance(config["pda_adapter"]["config"], dict)  # resolved: no adapters library needed


def test_the_modeling_file_imports_neither_pda_nor_adapters() -> None:
    import ast

    import pda.modeling_pda_bert as module

    tree = ast.parse(Path(module.__file__).read_text())
    roots = {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    roots |= {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert roots <= {"__future__", "typing", "torch", "transformers"}, roots


@pytest.mark.parametrize("kind", list(KINDS))
def test_deployable_model_matches_the_training_form(kind: str) -> None:
    model = KINDS[kind][0]()
    deployable = deployable_model(model)
    assert isinstance(deployable, PdaBertForSequenceClassification) and not deployable.training
    for b in batches():
        with torch.no_grad():
            torch.testing.assert_close(deployable(**b).logits, model(**b).logits, atol=ATOL, rtol=0)
    assert all(p.data_ptr() != q.data_ptr() for p in deployable.parameters() for q in model.parameters())


@pytest.mark.parametrize("kind", ["A", "A-pfeiffer", "P+D+A"])
@pytest.mark.parametrize("scaling", [1.0, 0.5])
def test_the_fused_inference_adapter_equals_the_plain_one(kind: str, scaling: float) -> None:
    from pda.modeling_pda_bert import Bottleneck

    deployable = deployable_model(KINDS[kind][0]())
    adapters = [m for m in deployable.modules() if isinstance(m, Bottleneck)]
    assert adapters
    for adapter in adapters:
        adapter.scaling = scaling
    for b in batches():
        with torch.enable_grad():  # the plain path (training's op order)
            plain = deployable(**b).logits.detach()
        with torch.inference_mode():  # the fused one
            fused = deployable(**b).logits
        # fp32 rounding of a different op order only (1.1e-6 seen on an Intel Xeon with AMX); a wrong fusion
        # (scaling, residual, non-linearity) is off by orders of magnitude more
        torch.testing.assert_close(fused, plain, atol=ATOL, rtol=0)
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 takes the plain path
            assert torch.isfinite(deployable(**b).logits).all()


def test_a_layer_without_both_blocks_is_one_constant_layer_everywhere(tmp_path: Path) -> None:
    from pda.pruning import ConstantLayer

    model = pruned(tiny())  # layer 3: MHA and FFN removed
    assert isinstance(model.bert.encoder.layer[3], ConstantLayer)
    save_model(model, tmp_path / "m")
    assert isinstance(load_model(tmp_path / "m").bert.encoder.layer[3], ConstantLayer)
    deployable = deployable_model(model).bert.encoder.layer[3]
    assert not any(isinstance(m, torch.nn.Linear) for m in deployable.modules())


def test_missing_or_extra_weights_are_an_error_not_a_warning(tmp_path: Path) -> None:
    model = pruned(tiny())
    save_model(model, tmp_path / "m")
    weights = load_file(tmp_path / "m" / "model.safetensors")
    weights.pop("bert.encoder.layer.0.attention.self.query.bias")
    weights["bert.encoder.layer.0.surprise"] = torch.zeros(2)
    save_file(weights, str(tmp_path / "m" / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="missing_keys.*query.bias|unexpected_keys.*surprise"):
        PdaBertForSequenceClassification.from_pretrained(tmp_path / "m")


@pytest.mark.parametrize("variant", ["par_bn", "ln_after"])
def test_adapters_the_file_cannot_reproduce_are_refused_at_save(tmp_path: Path, variant: str) -> None:
    import adapters

    config = "par_bn" if variant == "par_bn" else adapters.DoubleSeqBnConfig(ln_after=True)
    model = with_adapters(tiny(), config)
    with pytest.raises(ValueError, match="not supported here"):
        save_model(model, tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_an_older_pruned_checkpoint_without_the_modeling_file_still_loads_with_pda(tmp_path: Path) -> None:
    """Directories saved before this format (model_type bert + pda_structure) keep loading with load_model."""
    model = pruned(tiny())
    save_model(model, tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    for key in ("auto_map", "pda_base_model_type"):
        config.pop(key)
    config["model_type"] = "bert"
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    (tmp_path / "m" / MODELING_FILE).unlink()
    b = batches()[1]
    with torch.no_grad():
        torch.testing.assert_close(load_model(tmp_path / "m")(**b).logits, model(**b).logits, atol=ATOL, rtol=0)


def test_another_family_that_stock_cannot_represent_loads_with_pda_and_never_silently_wrong(tmp_path: Path) -> None:
    from transformers import RobertaConfig, RobertaForSequenceClassification

    torch.manual_seed(0)
    model = with_adapters(RobertaForSequenceClassification(RobertaConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=100,
        max_position_embeddings=48, num_labels=2)).eval())
    save_model(model, tmp_path / "r")
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["model_type"] == "pda-roberta" and "auto_map" not in config
    assert not (tmp_path / "r" / MODELING_FILE).exists()
    b = batches()[1]
    with torch.no_grad():
        torch.testing.assert_close(load_model(tmp_path / "r")(**b).logits, model(**b).logits, atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match="pda-roberta"):
        AutoModelForSequenceClassification.from_pretrained(tmp_path / "r")
    with pytest.raises(ValueError, match="BERT models only"):
        deployable_model(model)
