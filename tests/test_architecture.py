"""Rules of the house that a reviewer would otherwise check by hand: ruff clean, the contract's names
spelled once, the base pipeline free of methods, no product module depending on benchmarks/."""

import ast
import subprocess

import pytest
from helpers import REPO_ROOT

from zsad_edge.runtime import contract

PRODUCT = ("runtime", "export", "calibration")
# Names unambiguous enough to find as string literals; generic ones ("image", "heads") are keys elsewhere too.
CONTRACT_NAMES = [
    contract.IMAGE_ENCODER,
    contract.SAM_ENCODER,
    contract.SAM_DECODER,
    contract.IMAGE_EMBEDDING,
    contract.SURGERY_TAPS,
    contract.ANOMALY_MAP,
    contract.IMAGE_SCORE,
    contract.SAM_IMAGE_EMBEDDINGS,
    *contract.SAM_DECODER_INPUTS[1:],
    *contract.SAM_DECODER_OUTPUTS,
    contract.MANIFEST_FILE,
    contract.TEXT_EMBEDDINGS_FILE,
    contract.FNN_WEIGHTS_FILE,
    contract.FNN_FUSION,
    contract.APRILGAN.name,
]


def _modules(*folders):
    for folder in folders:
        for path in (REPO_ROOT / folder).rglob("*.py"):
            yield path, ast.parse(path.read_text(encoding="utf-8"))


@pytest.mark.needs_program("ruff")
def test_ruff_is_clean():
    for command in (["ruff", "check", "."], ["ruff", "format", "--check", "."]):
        proc = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_contract_names_are_spelled_only_in_the_contract():
    spelled = [
        f"{path.relative_to(REPO_ROOT)}:{node.lineno} {node.value!r}"
        for path, tree in _modules(*PRODUCT, "benchmarks")
        if path.name != "contract.py"
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and node.value in CONTRACT_NAMES
    ]
    assert spelled == []


def test_base_pipeline_knows_no_method_and_no_stage():
    tree = ast.parse((REPO_ROOT / "runtime" / "pipeline.py").read_text(encoding="utf-8"))
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not any(word in (module or "") for module in imported for word in ("sam", "fnn", "few_shot", "memory_bank"))
    literals = {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)}
    assert not literals & {spec.name for spec in contract.METHODS.values()}


def test_no_product_module_imports_benchmarks():
    offenders = [
        f"{path.relative_to(REPO_ROOT)}: {node.module}"
        for path, tree in _modules(*PRODUCT)
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("zsad_edge.benchmarks")
    ]
    assert offenders == []
