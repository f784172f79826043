"""A family owns its whole path (docs: /DESIGN "A family owns its whole path"): nothing outside
``rtseg/families/`` branches on a family name.

The check parses (``ast``) every module of the package outside ``rtseg/families/`` and fails on
any comparison with a family-name string literal (``==``, ``!=``, ``in``, ``is``, either side, also
inside a tuple / list / set of names), any ``match`` case on one, and any dict literal keyed by
family names (a dispatch table), naming ``file:line`` of each.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import rtseg
from rtseg.families import FAMILIES, family_of

PACKAGE = Path(rtseg.__file__).resolve().parent
FAMILIES_DIR = PACKAGE / "families"


def _names_in(node: ast.AST, names: set[str]) -> list[str]:
    """The family-name string literals ``node`` is, or holds as a tuple / list / set element."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names:
        return [node.value]
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return [n for elt in node.elts for n in _names_in(elt, names)]
    return []


def family_name_branches(source: str, names: set[str]) -> list[tuple[int, str]]:
    """``(line, what)`` of every comparison / match case / dispatch dict on a name of ``names``."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            for operand in (node.left, *node.comparators):
                found += [(node.lineno, f"compares with {n!r}") for n in _names_in(operand, names)]
        elif isinstance(node, ast.MatchValue):
            found += [(node.lineno, f"match case {n!r}") for n in _names_in(node.value, names)]
        elif isinstance(node, ast.Dict):
            found += [(node.lineno, f"dict keyed by {n!r}") for k in node.keys if k is not None
                      for n in _names_in(k, names)]
    return sorted(set(found))


def test_the_check_sees_each_form_of_branch():
    names = {"fam"}
    source = '''
if cfg.family == "fam": pass
if "fam" != name: pass
ok = family in ("other", "fam")
table = {"fam": 1}
match family:
    case "fam": pass
x = cfg.family + "fam"   # not a branch
'''
    assert [line for line, _ in family_name_branches(source, names)] == [2, 3, 4, 5, 7]


def test_nothing_outside_the_families_branches_on_a_family_name():
    names = set(FAMILIES)
    assert names, "no family registered"
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if FAMILIES_DIR in path.parents:
            continue
        for line, what in family_name_branches(path.read_text(encoding="utf-8"), names):
            offenders.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {what}")
    assert not offenders, ("code outside rtseg/families/ branches on a family name (ask the Family instead):\n"
                           + "\n".join(offenders))


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_each_family_owns_its_variants(name):
    """Every variant a family registers names that family, and the public registry is their union."""
    from rtseg.models import MODELS

    family = FAMILIES[name]
    assert family.variants, f"family {name} registers no variant"
    for cfg in family.variants:
        assert cfg.family == name and family_of(cfg) is family
        assert MODELS[cfg.name] is cfg
    assert len(MODELS) == sum(len(f.variants) for f in FAMILIES.values())


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_the_family_package_does_not_shadow_its_modules(name):
    """``from rtseg.families.<name> import postprocess`` is the module, not a function of the
    package's ``__init__`` that took its name (which ``mock.patch`` and imports would then find)."""
    import importlib
    import types

    package = importlib.import_module(f"rtseg.families.{name}")
    for path in sorted(Path(package.__file__).parent.glob("*.py")):
        if path.stem == "__init__":
            continue
        module = importlib.import_module(f"rtseg.families.{name}.{path.stem}")
        assert getattr(package, path.stem) is module, f"rtseg.families.{name}.{path.stem} is shadowed by " \
                                                      f"{type(getattr(package, path.stem)).__name__}"
        assert isinstance(module, types.ModuleType)
