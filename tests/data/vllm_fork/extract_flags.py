"""Extract the vllm-fork's CLI flags from its source (run by hand; output committed as JSON).

Usage: python extract_flags.py GIT_DIR COMMIT > flags_<commit12>.json. Reads every
`add_argument(...)` call of vllm/engine/arg_utils.py and vllm/entrypoints/openai/cli_args.py
(the api_server's parser, start_vllm.sh:198) and of benchmarks/benchmark_serving.py; a flag
takes a value unless its action is store_true/store_false/store_const or a BooleanOptional one.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys

FILES = {
    "serve": ("vllm/engine/arg_utils.py", "vllm/entrypoints/openai/cli_args.py"),
    "bench": ("benchmarks/benchmark_serving.py",),
}
NO_VALUE = {"store_true", "store_false", "store_const", "count"}


def flags_of(source: str) -> dict[str, dict[str, object]]:
    out: dict[str, dict[str, object]] = {}
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument"):
            continue
        names = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
        kw = {k.arg: k.value for k in node.keywords if k.arg}
        action = kw.get("action")
        takes = not (isinstance(action, ast.Constant) and action.value in NO_VALUE)
        if isinstance(action, ast.Attribute) and "Boolean" in action.attr:
            takes = False
        choices = None
        if isinstance(kw.get("choices"), ast.List):
            values = [e.value for e in kw["choices"].elts if isinstance(e, ast.Constant)]
            if len(values) == len(kw["choices"].elts):
                choices = values
        for name in names:
            if name.startswith("-"):
                out[name] = {"value": takes, "choices": choices}
    return out


def main() -> None:
    git_dir, commit = sys.argv[1], sys.argv[2]
    result: dict[str, object] = {"repo": "HabanaAI/vllm-fork", "commit": commit}
    for group, paths in FILES.items():
        flags: dict[str, dict[str, object]] = {}
        for path in paths:
            text = subprocess.run(
                ["git", f"--git-dir={git_dir}", "show", f"{commit}:{path}"],
                check=True, capture_output=True, text=True,
            ).stdout
            flags.update(flags_of(text))
        result[group] = dict(sorted(flags.items()))
    json.dump(result, sys.stdout, indent=1)


if __name__ == "__main__":
    main()
