"""Size limits of the package: no module over 450 lines, no function over 80 lines, none with more than
8 parameters.

The walk reads every module under repro/ with `ast`. A function's length runs from its first decorator
to its last line; its parameters are every positional, keyword-only and variadic one, `self`/`cls`
excluded as the first parameter of a method. The command functions of the command line are exempt from
the parameter limit (one parameter an option): they are recognised as functions decorated with a call of
an attribute named `command` or `group` (`@main.command(...)`, `@click.group(...)`).
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "repro"
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 80
MAX_PARAMETERS = 8


def _is_command(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    for deco in node.decorator_list:
        if isinstance(deco, ast.Call) and isinstance(deco.func, ast.Attribute) \
                and deco.func.attr in ("command", "group"):
            return True
    return False


def _parameters(node: ast.FunctionDef | ast.AsyncFunctionDef, in_class: bool) -> int:
    args = node.args
    positional = [*args.posonlyargs, *args.args]
    if in_class and positional and positional[0].arg in ("self", "cls"):
        positional = positional[1:]
    return (len(positional) + len(args.kwonlyargs) + (args.vararg is not None)
            + (args.kwarg is not None))


def _functions(tree: ast.AST):
    """(qualified name, node, whether it is a method) for every function, nested ones included."""
    def walk(node, prefix, in_class):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}{child.name}"
                yield name, child, in_class
                yield from walk(child, f"{name}.", False)
            elif isinstance(child, ast.ClassDef):
                yield from walk(child, f"{prefix}{child.name}.", True)
            else:
                yield from walk(child, prefix, in_class)
    yield from walk(tree, "", False)


def violations(package: Path = PACKAGE) -> set[str]:
    """Every breach of the limits, one string each: `path: N lines`, `path:function: N lines`,
    `path:function: N parameters` (paths relative to the package's parent)."""
    found = set()
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package.parent).as_posix()
        text = path.read_text(encoding="utf-8")
        lines = len(text.splitlines())
        if lines > MAX_MODULE_LINES:
            found.add(f"{rel}: {lines} lines")
        for name, node, in_class in _functions(ast.parse(text, filename=str(path))):
            start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            length = node.end_lineno - start + 1
            if length > MAX_FUNCTION_LINES:
                found.add(f"{rel}:{name}: {length} lines")
            params = _parameters(node, in_class)
            if params > MAX_PARAMETERS and not _is_command(node):
                found.add(f"{rel}:{name}: {params} parameters")
    return found


def test_no_module_or_function_over_the_limits():
    found = sorted(violations())
    assert not found, "over the size limits (module 450 lines, function 80 lines, 8 parameters):\n" + \
        "\n".join(found)


def test_the_walk_sees_each_kind_of_breach(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(85))
    (pkg / "big.py").write_text(
        "import click\n\n\n@click.command()\ndef cmd(a, b, c, d, e, f, g, h, i):\n    pass\n\n\n"
        f"def long():\n{body}\n\n\nclass K:\n    def many(self, a, b, c, d, e, f, g, h, *rest):\n        pass\n\n\n"
        "    def fine(self, a, b, c, d, e, f, g, h):\n        pass\n" + "\n" * 400)
    found = violations(pkg)
    assert found == {"pkg/big.py: 503 lines", "pkg/big.py:long: 86 lines", "pkg/big.py:K.many: 9 parameters"}
