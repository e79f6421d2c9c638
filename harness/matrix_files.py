"""Matrix files: find one by name or path, read YAML with `extends`, word validation errors.

No matrix semantics here (that is harness/matrix.py): these layers only turn files into dicts and
pydantic errors into `file: key.path: reason` messages.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from harness.errors import MatrixError

MATRICES_DIR = Path(__file__).resolve().parent.parent / "matrices"


def resolve_matrix_path(name_or_path: str | Path, search_dir: Path = MATRICES_DIR) -> Path:
    """Accept a path or a name in matrices/; unknown names get a did-you-mean."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or candidate.exists():
        if not candidate.is_file():
            raise MatrixError(
                candidate, "", "no such matrix file; check the path given to --matrix"
            )
        return candidate
    named = search_dir / f"{name_or_path}.yaml"
    if named.is_file():
        return named
    available = sorted(p.stem for p in search_dir.glob("*.yaml") if not p.stem.startswith("_"))
    close = difflib.get_close_matches(str(name_or_path), available, n=3)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise MatrixError(
        search_dir,
        "",
        f"Unknown matrix '{name_or_path}'.{hint} Available: {', '.join(available) or 'none'}",
    )


def load_yaml(path: Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """YAML to dict with `extends:` merged (local keys win). No matrix semantics here."""
    path = path.resolve()
    if path in _chain:
        chain = " -> ".join(str(p) for p in (*_chain, path))
        raise MatrixError(path, "extends", f"extends cycle: {chain}")
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise MatrixError(path, "", f"cannot read the file ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise MatrixError(
            path,
            "",
            f"not UTF-8 text (byte 0x{exc.object[exc.start]:02x} on line {line}); "
            "save the file as UTF-8",
        ) from None
    try:
        data = _load_unique(text, path)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise MatrixError(path, "", f"invalid YAML at {where}{problem}") from None
    if data is None:
        raise MatrixError(path, "", "the file is empty; a matrix needs at least name and models")
    if not isinstance(data, dict):
        raise MatrixError(path, "", f"top level must be a mapping, got {type(data).__name__}")
    parent = data.get("extends")
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise MatrixError(path, "extends", "must be a relative file name")
    base_path = path.parent / parent
    base = _anchored(load_yaml(base_path, (*_chain, path)), base_path.resolve().parent)
    merged = {**base, **data}
    merged["extends"] = parent
    return merged


def _anchored(base: dict[str, Any], directory: Path) -> dict[str, Any]:
    """A base's relative model paths stay relative to the base file, wherever the matrix that
    extends it lives (a child's own models are relative to the child, as always)."""
    models = base.get("models")
    if not isinstance(models, dict):
        return base

    def anchor(model: Any) -> Any:
        where = model.get("path") if isinstance(model, dict) else None
        if not isinstance(where, str) or not where or Path(where).is_absolute():
            return model
        return {**model, "path": str((directory / where).resolve())}

    return {**base, "models": {name: anchor(m) for name, m in models.items()}}


def _load_unique(text: str, path: Path) -> Any:
    """safe_load, refusing a key given twice in one mapping (YAML would keep the last)."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_duplicates(node, "", path)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _check_duplicates(node: yaml.Node, where: str, path: Path) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if key is None or key == "<<":
                continue
            here = f"{where}.{key}" if where else str(key)
            if key in seen:
                raise MatrixError(
                    path,
                    here,
                    f"given twice (lines {seen[key]} and {key_node.start_mark.line + 1}); YAML "
                    "would silently keep the last one: rename or remove one of them",
                )
            seen[key] = key_node.start_mark.line + 1
            _check_duplicates(value_node, here, path)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_duplicates(item, f"{where}[{i}]", path)


def _key_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


# pydantic's range errors, worded as the rule to follow
_BOUNDS = {
    "greater_than_equal": ("ge", ">="),
    "greater_than": ("gt", ">"),
    "less_than_equal": ("le", "<="),
    "less_than": ("lt", "<"),
}


def validation_message(exc: ValidationError) -> tuple[str, str]:
    lines = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if p not in ("function-after",))
        key = _key_path(loc)
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see matrices/README.md for the keys)"
        elif err["type"] == "missing":
            msg = "required key is missing"
        elif err["type"] in _BOUNDS:
            limit = err.get("ctx", {}).get(_BOUNDS[err["type"]][0])
            msg = f"must be {_BOUNDS[err['type']][1]} {limit} (got {err.get('input')!r})"
        elif err["type"] == "too_short" and err.get("ctx", {}).get("min_length") == 1:
            msg = "must not be empty: give at least one value (or leave the key out)"
        elif "input" in err and err["type"] not in ("literal_error",):
            msg = f"{msg} (got {err['input']!r})"
        lines.append((key, msg))
    first_key = lines[0][0]
    if len(lines) == 1:
        return first_key, lines[0][1]
    return first_key, "; ".join(f"{k}: {m}" for k, m in lines)


def unknown_name(kind: str, name: str, known: Any) -> str:
    close = difflib.get_close_matches(name, list(known), n=3)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return f"unknown {kind} '{name}'.{hint} Known: {', '.join(known)}"
