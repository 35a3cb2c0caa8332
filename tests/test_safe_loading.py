"""Tests that weight files never run code unless --trust-pickle is passed, plus a source scan."""

from __future__ import annotations

import ast
import logging
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch.torch_version import TorchVersion

from cogrpo import legacy_pickle
from cogrpo.legacy_pickle import UnsafeCheckpointError, load_torch_weights

REPO_ROOT = Path(__file__).resolve().parents[1]
AUDITED_MODULE = Path("cogrpo") / "legacy_pickle.py"
SCANNED_FOLDERS = ["cogrpo", "benchmarks"]


class MarkerPayload:
    """An object whose unpickling runs ``exec`` and creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def save_malicious_file(folder: Path, suffix: str = ".pt") -> tuple[Path, Path]:
    path = folder / f"legacy{suffix}"
    marker = folder / "code-was-run"
    torch.save({"weight": torch.arange(4.0), "payload": MarkerPayload(marker)}, path)
    return path, marker


def state_dict() -> dict[str, torch.Tensor]:
    return {"linear.weight": torch.randn(3, 2), "linear.bias": torch.zeros(3), "steps": torch.tensor(7)}


def assert_state_dicts_equal(loaded, expected) -> None:
    assert loaded.keys() == expected.keys()
    for key, tensor in expected.items():
        assert torch.equal(loaded[key], tensor), key


# ---------------------------------------------------------------------------
# load_torch_weights


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin", ".PT"])
def test_crafted_pickle_rejected(tmp_path, suffix):
    path, marker = save_malicious_file(tmp_path, suffix)

    with pytest.raises(UnsafeCheckpointError) as raised:
        load_torch_weights(path)

    message = str(raised.value)
    assert str(path) in message
    assert ".safetensors" in message
    assert "--trust-pickle" in message
    assert raised.value.path == path
    assert raised.value.detail
    assert isinstance(raised.value, RuntimeError)
    assert not marker.exists(), "unpickling ran the payload"


def test_crafted_pickle_loads_with_trust_flag(tmp_path, caplog, monkeypatch):
    path, marker = save_malicious_file(tmp_path)
    calls = spy_on_torch_load(monkeypatch)

    with caplog.at_level(logging.WARNING, logger="cogrpo.legacy_pickle"):
        loaded = load_torch_weights(path, trust_pickle=True)

    assert calls == [True, False]
    assert torch.equal(loaded["weight"], torch.arange(4.0))
    assert marker.exists(), "full unpickling should have run the payload"
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert str(path) in warnings[0]
    assert "--trust-pickle" in warnings[0]


@pytest.mark.parametrize("trust_pickle", [False, True])
def test_plain_state_dict_loads(tmp_path, caplog, trust_pickle):
    expected = state_dict()
    path = tmp_path / "weights.pt"
    torch.save(expected, path)

    with caplog.at_level(logging.WARNING, logger="cogrpo.legacy_pickle"):
        loaded = load_torch_weights(path, trust_pickle=trust_pickle)

    assert_state_dicts_equal(loaded, expected)
    assert caplog.records == [], "a file that weights_only=True accepts must not log a warning"


def test_safetensors_loads(tmp_path):
    expected = {key: tensor.contiguous() for key, tensor in state_dict().items()}
    path = tmp_path / "weights.safetensors"
    save_file(expected, path)

    loaded = load_torch_weights(path)

    assert_state_dicts_equal(loaded, expected)
    assert all(tensor.device.type == "cpu" for tensor in loaded.values())


def spy_on_torch_load(monkeypatch) -> list[object]:
    """Record the weights_only argument of every torch.load call made by legacy_pickle."""
    calls: list[object] = []
    original_load = torch.load

    def recording_load(*args, **kwargs):
        calls.append(kwargs.get("weights_only", "not passed"))
        return original_load(*args, **kwargs)

    monkeypatch.setattr(legacy_pickle.torch, "load", recording_load)
    return calls


def test_rejection_never_falls_back(tmp_path, monkeypatch):
    path, marker = save_malicious_file(tmp_path)
    calls = spy_on_torch_load(monkeypatch)

    with pytest.raises(UnsafeCheckpointError):
        load_torch_weights(path)

    assert calls == [True]
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"this is not a pickle", b"garbage not a pickle", b""])
def test_invalid_file_never_falls_back(tmp_path, monkeypatch, content):
    path = tmp_path / "garbage.bin"
    path.write_bytes(content)
    calls = spy_on_torch_load(monkeypatch)

    # torch raises different errors for different garbage (UnpicklingError, IndexError,
    # EOFError), so only the absence of a second, unsafe load is checked.
    with pytest.raises(Exception):
        load_torch_weights(path)

    assert calls == [True]


def test_unknown_suffix_rejected(tmp_path):
    path = tmp_path / "weights.ckpt"
    torch.save(state_dict(), path)

    with pytest.raises(ValueError, match=r"unsupported weight file suffix '\.ckpt'"):
        load_torch_weights(path)


def test_missing_file_raises_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_torch_weights(tmp_path / "missing.pt")


def test_old_torch_rejects_pickle_files(tmp_path, monkeypatch):
    path = tmp_path / "weights.pt"
    torch.save(state_dict(), path)
    safetensors_path = tmp_path / "weights.safetensors"
    save_file({"weight": torch.ones(2)}, safetensors_path)
    monkeypatch.setattr(legacy_pickle.torch, "__version__", TorchVersion("2.5.1"))

    with pytest.raises(RuntimeError, match="CVE-2025-32434"):
        load_torch_weights(path, trust_pickle=True)
    assert torch.equal(load_torch_weights(safetensors_path)["weight"], torch.ones(2))


# ---------------------------------------------------------------------------
# Source scan

# Calls that unpickle whatever the file contains.
UNPICKLING_CALLS = {
    "pickle.load",
    "pickle.loads",
    "pickle.Unpickler",
    "_pickle.load",
    "_pickle.loads",
    "_pickle.Unpickler",
    "joblib.load",
    "pandas.read_pickle",
    # torch.hub.load imports and runs hubconf.py from the downloaded repository.
    "torch.hub.load",
}
PICKLE_LIBRARIES = ("cloudpickle.", "dill.")
TORCH_LOAD_CALLS = {"torch.load", "torch.serialization.load"}
TRUST_FLAG = "trust_pickle"


def import_aliases(tree: ast.AST) -> dict[str, str]:
    """Map each name bound by an import in ``tree`` to the dotted name it refers to."""
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    aliases[alias.asname] = alias.name
                else:
                    top = alias.name.split(".")[0]
                    aliases[top] = top
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return aliases


def dotted_name(node: ast.AST, aliases: dict[str, str]) -> str | None:
    """Return the import-resolved dotted name of ``a.b.c``, or None for other expressions."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(aliases.get(node.id, node.id))
    return ".".join(reversed(parts))


def keyword_value(call: ast.Call, name: str) -> ast.AST | None:
    for keyword in call.keywords:
        if keyword.arg == name:
            return keyword.value
    return None


def is_constant(node: ast.AST | None, value: bool) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def unsafe_call_reason(call: ast.Call, aliases: dict[str, str]) -> str | None:
    """Return why ``call`` may run code from a file or remote repository, or None if it cannot."""
    name = dotted_name(call.func, aliases)

    remote_code = keyword_value(call, "trust_remote_code")
    if remote_code is not None and not is_constant(remote_code, False):
        return "trust_remote_code is not literally False"

    if name is None:
        return None
    if name in TORCH_LOAD_CALLS and not is_constant(keyword_value(call, "weights_only"), True):
        return f"{name}(...) without weights_only=True"
    if name in UNPICKLING_CALLS:
        return f"{name}(...) unpickles"
    if name.startswith(PICKLE_LIBRARIES) and ("load" in name.rsplit(".", 1)[1] or name.endswith("Unpickler")):
        return f"{name}(...) unpickles"
    if name == "numpy.load":
        allow_pickle = keyword_value(call, "allow_pickle")
        if allow_pickle is not None and not is_constant(allow_pickle, False):
            return "numpy.load(...) with allow_pickle not literally False"
    return None


def unsafe_dict_entry_reason(node: ast.Dict) -> str | None:
    for key, value in zip(node.keys, node.values):
        if is_constant_string(key, "trust_remote_code") and not is_constant(value, False):
            return "trust_remote_code is not literally False"
    return None


def is_constant_string(node: ast.AST | None, text: str) -> bool:
    return isinstance(node, ast.Constant) and node.value == text


def under_trust_flag(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """Return True if ``node`` is in the body of an ``if trust_pickle:`` statement."""
    child = node
    parent = parents.get(child)
    while parent is not None:
        in_body = isinstance(parent, ast.If) and any(child is statement for statement in parent.body)
        if in_body and isinstance(parent.test, ast.Name) and parent.test.id == TRUST_FLAG:
            return True
        child = parent
        parent = parents.get(child)
    return False


def scan_source(source: str, filename: str, audited: bool = False) -> list[str]:
    """Return ``file:line: reason`` for each unsafe load in ``source``.

    In the audited module an unsafe load is allowed in the body of ``if trust_pickle:``.
    """
    try:
        tree = ast.parse(source, filename=filename)
    except SyntaxError as error:
        return [f"{filename}:{error.lineno}: cannot parse, so it cannot be checked: {error.msg}"]

    aliases = import_aliases(tree)
    parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
    findings: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        reason = None
        if isinstance(node, ast.Call):
            reason = unsafe_call_reason(node, aliases)
        elif isinstance(node, ast.Dict):
            reason = unsafe_dict_entry_reason(node)
        if reason is None:
            continue
        if audited and under_trust_flag(node, parents):
            continue
        findings.append((node.lineno, f"{filename}:{node.lineno}: {reason}"))
    return [finding for _, finding in sorted(findings)]


def scanned_files() -> list[Path]:
    files: list[Path] = []
    for folder in SCANNED_FOLDERS:
        root = REPO_ROOT / folder
        if root.is_dir():
            files.extend(path for path in root.rglob("*.py") if "__pycache__" not in path.parts)
    return sorted(files)


def test_no_unsafe_loads_in_sources():
    files = scanned_files()
    assert REPO_ROOT / AUDITED_MODULE in files

    findings: list[str] = []
    for path in files:
        relative = path.relative_to(REPO_ROOT)
        findings += scan_source(path.read_text(encoding="utf-8"), str(relative), audited=relative == AUDITED_MODULE)

    assert findings == [], (
        "Unsafe loading found. Use safetensors or torch.load(..., weights_only=True), and put any "
        f"code that needs full unpickling in {AUDITED_MODULE} under `if trust_pickle:`.\n" + "\n".join(findings)
    )


def test_audited_module_needs_trust_flag():
    source = (REPO_ROOT / AUDITED_MODULE).read_text(encoding="utf-8")

    unaudited_findings = scan_source(source, str(AUDITED_MODULE), audited=False)

    assert len(unaudited_findings) == 1, "the audited module should have exactly one full unpickling call"
    assert "weights_only=True" in unaudited_findings[0]


UNSAFE_SNIPPETS = {
    "torch.load without weights_only": "import torch\ntorch.load('w.pt')",
    "torch.load weights_only=False": "import torch\ntorch.load('w.pt', weights_only=False)",
    "torch.load weights_only variable": "import torch\ntorch.load('w.pt', weights_only=flag)",
    "torch.load kwargs only": "import torch\ntorch.load('w.pt', **options)",
    "torch.load imported by name": "from torch import load\nload('w.pt')",
    "torch.serialization.load": "import torch.serialization\ntorch.serialization.load('w.pt')",
    "torch.hub.load": "import torch\ntorch.hub.load('owner/repo', 'model')",
    "pickle.load": "import pickle\npickle.load(handle)",
    "pickle.loads aliased": "import pickle as pk\npk.loads(data)",
    "pickle.loads imported by name": "from pickle import loads\nloads(data)",
    "pickle.Unpickler": "import pickle\npickle.Unpickler(handle).load()",
    "cloudpickle.loads": "import cloudpickle\ncloudpickle.loads(data)",
    "dill.load": "import dill\ndill.load(handle)",
    "joblib.load": "import joblib\njoblib.load('model.joblib')",
    "pandas.read_pickle": "import pandas as pd\npd.read_pickle('frame.pkl')",
    "numpy allow_pickle": "import numpy as np\nnp.load('a.npy', allow_pickle=True)",
    "trust_remote_code keyword": "AutoModel.from_pretrained('x', trust_remote_code=True)",
    "trust_remote_code variable": "AutoModel.from_pretrained('x', trust_remote_code=args.remote)",
    "trust_remote_code dict": "kwargs = {'trust_remote_code': True}",
}

SAFE_SNIPPETS = {
    "torch.load weights_only=True": "import torch\ntorch.load('w.pt', map_location='cpu', weights_only=True)",
    "safetensors": "from safetensors.torch import load_file\nload_file('w.safetensors')",
    "json.load": "import json\njson.load(handle)",
    "numpy without pickle": "import numpy as np\nnp.load('a.npy')",
    "trust_remote_code False": "AutoModel.from_pretrained('x', trust_remote_code=False)",
    "unrelated load method": "model.load_state_dict(state)",
}


@pytest.mark.parametrize("case", UNSAFE_SNIPPETS.keys())
def test_scan_flags_unsafe_snippet(case):
    findings = scan_source(UNSAFE_SNIPPETS[case], "example.py")

    assert len(findings) == 1, findings
    assert findings[0].startswith("example.py:")


@pytest.mark.parametrize("case", SAFE_SNIPPETS.keys())
def test_scan_accepts_safe_snippet(case):
    assert scan_source(SAFE_SNIPPETS[case], "example.py") == []


def test_scan_trust_branch_audited_only():
    source = textwrap.dedent(
        """
        import torch

        def load(path, trust_pickle):
            if trust_pickle:
                return torch.load(path, weights_only=False)
            if not trust_pickle:
                return torch.load(path, weights_only=False)
            if trust_pickle:
                pass
            else:
                return torch.load(path, weights_only=False)
            return torch.load(path, weights_only=False)
        """
    )

    audited_findings = scan_source(source, "audited.py", audited=True)
    other_findings = scan_source(source, "other.py", audited=False)

    assert [finding.split(":")[1] for finding in audited_findings] == ["8", "12", "13"]
    assert len(other_findings) == 4


def test_scan_reports_line_numbers():
    source = "import torch\n\n\nstate = torch.load('w.pt')\n"

    assert scan_source(source, "pkg/module.py") == ["pkg/module.py:4: torch.load(...) without weights_only=True"]
