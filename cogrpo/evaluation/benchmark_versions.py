"""Recorded (version, prompt SHA-256, scoring fingerprint) of every registered benchmark.

A benchmark's ``version`` must change whenever its prompts or its scoring change,
because results of one version share tables. ``cogrpo/benchmark_versions.json``
records each benchmark's version and a fingerprint of the source code that
scores it. For a benchmark whose prompt file is part of the package, it also
records the SHA-256 of that file. Downloaded prompt files are pinned by SHA-256
where they are fetched. A test compares the record with the current code, so a
changed prompt file or scoring rule without a new version fails.

The fingerprint hashes each listed module's syntax tree with docstrings removed,
so comments, docstrings and formatting do not change it. A source is a module
(``cogrpo.world.detector``) or one top-level name in it
(``cogrpo.evaluation.suites:shapes_suite``).

Run ``python -m cogrpo.evaluation.benchmark_versions`` to print the current
values in the file's format, then replace the file's content with them. Do not
redirect the output into the file, because the command reads it first.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import sys
from importlib import resources
from pathlib import Path
from typing import Any

RECORD_RESOURCE = "benchmark_versions.json"
PRINT_COMMAND = "python -m cogrpo.evaluation.benchmark_versions"
CHANGELOG = "docs/benchmarks.md"
# Syntax tree fields that carry no meaning for scoring: Load/Store contexts, the
# "u" prefix of string constants and type comments.
_IGNORED_FIELDS = frozenset({"ctx", "kind", "type_comment"})


def load_record() -> dict[str, dict[str, Any]]:
    """Return the committed record, keyed by benchmark name."""
    text = resources.files("cogrpo").joinpath(RECORD_RESOURCE).read_text(encoding="utf-8")
    return json.loads(text)


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        body = node.body
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                and isinstance(body[0].value.value, str):
            node.body = body[1:]
    return tree


def _dump(value: Any) -> str:
    """Serialize a syntax tree without positions, ignored fields and empty or None fields.

    Leaving out empty fields keeps the text equal across Python versions that add
    new optional fields, such as ``type_params`` in Python 3.12.
    """
    if isinstance(value, ast.AST):
        fields = []
        for name, field in ast.iter_fields(value):
            if name in _IGNORED_FIELDS or field is None or field == []:
                continue
            fields.append(f"{name}={_dump(field)}")
        return f"{type(value).__name__}({', '.join(fields)})"
    if isinstance(value, list):
        return "[" + ", ".join(_dump(item) for item in value) + "]"
    return repr(value)


def _defines(statement: ast.stmt, name: str) -> bool:
    if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return statement.name == name
    if isinstance(statement, ast.Assign):
        return any(isinstance(target, ast.Name) and target.id == name for target in statement.targets)
    if isinstance(statement, ast.AnnAssign):
        return isinstance(statement.target, ast.Name) and statement.target.id == name
    return False


def module_path(module: str) -> Path:
    """Return the source file of ``module`` without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        raise ValueError(f"scoring source {module!r} is not a Python module with a source file")
    return Path(spec.origin)


def source_dump(source: str, text: str | None = None) -> str:
    """Return the normalized syntax tree of a scoring source, ``module`` or ``module:name``.

    ``text`` replaces the module's file content (for tests). Raises ``ValueError``
    when ``name`` is not defined at the top level of the module.
    """
    module, _, name = source.partition(":")
    if text is None:
        text = module_path(module).read_text(encoding="utf-8")
    tree = _strip_docstrings(ast.parse(text))
    if not name:
        return _dump(tree)
    statements = [statement for statement in tree.body if _defines(statement, name)]
    if not statements:
        raise ValueError(f"scoring source {source!r}: {module} defines no top-level {name!r}; update its scoring_sources")
    return _dump(statements)


def scoring_fingerprint(sources: list[str]) -> str:
    """Return the SHA-256 over the normalized syntax trees of ``sources``, in the given order."""
    digest = hashlib.sha256()
    for source in sources:
        digest.update(source.encode("utf-8") + b"\n")
        digest.update(source_dump(source).encode("utf-8") + b"\n")
    return digest.hexdigest()


def prompt_file_sha256(prompt_file: str) -> str:
    """Return the SHA-256 of a prompt file given by its path inside the ``cogrpo`` package."""
    return hashlib.sha256(resources.files("cogrpo").joinpath(prompt_file).read_bytes()).hexdigest()


def _render_version(node: ast.expr, source: str) -> str:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        parts = []
        for part in node.values:
            if isinstance(part, ast.Constant):
                parts.append(str(part.value))
            else:
                parts.append(f"<{ast.unparse(part.value)}>")
        return "".join(parts)
    raise ValueError(f"{source}: the version of its BenchmarkSuite is {ast.unparse(node)!r}; expected a string literal")


def suite_version(source: str) -> str:
    """Return the version written in the ``BenchmarkSuite(...)`` call of ``module:function``, without running it.

    Suites of downloaded benchmarks fetch their prompts when built, so their
    version is read from the source. An f-string's fields become ``<name>``:
    ``f"1/{detector}"`` reads as ``1/<detector>``.
    """
    module, _, name = source.partition(":")
    tree = ast.parse(module_path(module).read_text(encoding="utf-8"))
    functions = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == name]
    if not functions:
        raise ValueError(f"version source {source!r}: {module} defines no top-level function {name!r}")
    for node in ast.walk(functions[0]):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "BenchmarkSuite":
            for keyword in node.keywords:
                if keyword.arg == "version":
                    return _render_version(keyword.value, source)
    raise ValueError(f"version source {source!r}: no BenchmarkSuite(version=...) call in {name}")


def current_entry(name: str, recorded: dict[str, Any]) -> dict[str, Any]:
    """Return the entry of benchmark ``name`` for the current code, with the recorded prompt file and sources.

    A benchmark with a ``version_source`` (one whose prompts are downloaded, so
    the package has no prompt file) takes its version from that function's
    source. The others take it from the suite that the benchmark registry builds.
    """
    entry: dict[str, Any] = {}
    if recorded.get("version_source"):
        entry["version"] = suite_version(recorded["version_source"])
        entry["version_source"] = recorded["version_source"]
    else:
        from cogrpo.catalog import BENCHMARKS

        entry["version"] = str(BENCHMARKS.create(name).version)
    if recorded.get("prompt_file"):
        entry["prompt_file"] = recorded["prompt_file"]
        entry["prompt_sha256"] = prompt_file_sha256(recorded["prompt_file"])
    entry["scoring_sources"] = list(recorded["scoring_sources"])
    entry["scoring_fingerprint"] = scoring_fingerprint(recorded["scoring_sources"])
    return entry


def version_problems(name: str, recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Return messages for each way the current entry of benchmark ``name`` differs from the recorded one."""
    changes = []
    if recorded.get("prompt_file") and current["prompt_sha256"] != recorded["prompt_sha256"]:
        changes.append(f"the SHA-256 of its prompt file {recorded['prompt_file']} changed "
                       f"from {recorded['prompt_sha256']} to {current['prompt_sha256']}")
    if current["scoring_fingerprint"] != recorded["scoring_fingerprint"]:
        changes.append(f"one of its scoring sources ({', '.join(recorded['scoring_sources'])}) changed, so its scoring "
                       f"fingerprint is now {current['scoring_fingerprint']}")
    if current["version"] != recorded["version"]:
        changes.append(f"its version changed from {recorded['version']!r} to {current['version']!r}")
    if not changes:
        return []
    update = f"then replace the content of cogrpo/{RECORD_RESOURCE} with the output of `{PRINT_COMMAND}`"
    if current["version"] == recorded["version"]:
        advice = (f"Bump the version of benchmark {name!r} (now {current['version']!r}), add a changelog line for "
                  f"the new version in {CHANGELOG}, {update}.")
    else:
        advice = f"Check that {CHANGELOG} has a changelog line for version {current['version']!r}, {update}."
    return [f"benchmark {name!r}: {'; '.join(changes)}. {advice}"]


def current_record() -> dict[str, dict[str, Any]]:
    """Return the record for the current code, with the committed prompt files and scoring sources."""
    return {name: current_entry(name, entry) for name, entry in load_record().items()}


def main() -> None:
    """Print the current record as the JSON that ``cogrpo/benchmark_versions.json`` holds."""
    sys.stdout.write(json.dumps(current_record(), indent=2) + "\n")


if __name__ == "__main__":
    main()
