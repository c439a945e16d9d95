"""Pushdown rules: what each backend accepts, declared in one place.

A :class:`RuleSet` is a table of :class:`Rule` entries. A rule names an expression (a sqlglot
expression class, or a function name for functions sqlglot does not model), may carry a guard
(a predicate on the node) and may say how to write the node natively (``write``: a function
returning a replacement sqlglot expression). "Can this backend take this subtree?" is derived
from the table by :meth:`RuleSet.refusal`; no planner code asks about backend kinds.

>>> from sqlglot import exp, parse_one
>>> rs = RuleSet("toy", rules_for_classes(exp.Column, exp.Identifier, exp.EQ, exp.Literal))
>>> rs.refusal(parse_one("a = 1")) is None
True
>>> rs.refusal(parse_one("a LIKE 'x%'"))
"no rule of 'toy' pushes Like (a LIKE 'x%')"

Users teach a backend more with the same API, three ways:

* from Python, for one federation: ``fed.rules.add(Rule("SIMILARITY"), kind="postgres")`` (or
  ``source="pg"``), see :class:`FederationRules`;
* from the catalog: ``rules = ["mypkg.rules", "local_rules.py"]`` names plug-in modules that
  call :func:`add_rules` / :func:`register` when imported, or define ``federator_rules(fed)``;
* from installed packages: entry points of the group ``federator.rules`` (a module, or a
  callable taking the federation).

Rule authors check their rules with fixture files that name the plug-ins they test
(``-- rules: ../my_rules.py``; ``federator rules test DIR`` or
:func:`federator.rules_testing.assert_fixtures`); ``federator explain --verbose`` names the rule
that pushed or refused each expression. Worked examples: ``examples/rules/``.

Every mistake is a :class:`~federator.errors.RuleError` naming the rule and the file:line it
was made at: a malformed rule when it is made or added, a guard or write that raises (chained to
what it raised) or a write that returns anything but a sqlglot tree the backend's dialect
renders, while planning, before any native text exists:

>>> import federator
>>> fed = federator.connect({"sources": {"lite": {"kind": "sqlite", "path": ":memory:"}}})
>>> fed.rules.add("SIMILARITY", kind="sqlite")  # doctest: +ELLIPSIS
Traceback (most recent call last):
federator.errors.RuleError: rule 'SIMILARITY' (defined at ...): ... write Rule('SIMILARITY')
>>> fed.close()
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from typing import Any

from federator.rules.base import _REGISTRY, RuleSet, register
from federator.rules.base import SIMPLE_FILTERS as SIMPLE_FILTERS
from federator.rules.base import Guard as Guard
from federator.rules.base import Matcher as Matcher
from federator.rules.base import Rule as Rule
from federator.rules.base import Writer as Writer
from federator.rules.base import check_rules as check_rules
from federator.rules.base import function_name as function_name
from federator.rules.base import rules_for_classes as rules_for_classes
from federator.rules.checks import function_label


def rule_set_for(kind: str) -> RuleSet:
    """A fresh copy of the rule set registered for ``kind`` (so per-source additions stay local)."""
    from federator.rules import mongo, redis, sql  # noqa: F401  (register the built-in sets)

    base = _REGISTRY.get(kind)
    if base is None:
        return RuleSet(kind)
    return RuleSet(base.name, list(base.rules), base.capabilities)


def add_rules(kind: str, *rules: Rule) -> RuleSet:
    """Put ``rules`` in front of the registered rule set of ``kind`` (for every source of that
    kind opened afterwards); returns the new registered set.

    >>> from sqlglot import exp
    >>> rs = add_rules("toy_kind", Rule("SIMILARITY"))
    >>> [r.label for r in rule_set_for("toy_kind").rules]
    ['SIMILARITY']
    """
    rule_set = rule_set_for(kind).add(*rules)
    register(kind, rule_set)
    return rule_set


# ---- plug-ins: rule modules named by the catalog or by entry points ---------------------
ENTRY_POINT_GROUP = "federator.rules"
HOOK_NAME = "federator_rules"
RulesHook = Callable[[Any], None]


def load_rule_modules(names: Iterable[str], *, entry_points: bool = True) -> list[RulesHook]:
    """Import rule plug-ins; return the hooks to call with each new federation.

    A plug-in is a module path (``mypkg.rules``) or a ``.py`` file. Importing it may call
    :func:`register` or :func:`add_rules` (global, for every source of a kind opened after),
    and it may define ``federator_rules(fed)``, called with each federation, which can use
    ``fed.rules.add(...)`` (scoped to that federation). Entry points of the group
    ``federator.rules`` are loaded too: a module, or a callable used as the hook.
    """
    hooks: list[RulesHook] = list(_entry_point_hooks()) if entry_points else []
    for name in names:
        hook = _hook_of(_import_rules(str(name)), str(name))
        if hook is not None:
            hooks.append(hook)
    return hooks


def run_hooks(fed: Any, hooks: Iterable[RulesHook]) -> None:
    """Call each plug-in's ``federator_rules(fed)``; one that raises is a RuleError naming the
    hook and where it is defined, chained to what it raised."""
    from federator.errors import FederatorError, RuleError

    for hook in hooks:
        try:
            hook(fed)
        except FederatorError:
            raise
        except Exception as e:
            code = getattr(hook, "__code__", None)
            where = f"{code.co_filename}:{code.co_firstlineno}" if code else None
            name = f"{getattr(hook, '__module__', '?')}.{function_label(hook)}"
            raise RuleError(
                f"rules hook {name}(fed) raised {type(e).__name__}: {e}", None, where
            ) from e


def _import_rules(name: str) -> Any:
    import importlib
    import importlib.util
    import sys
    from pathlib import Path

    from federator.errors import CatalogError, RuleError

    try:
        if name.endswith(".py"):
            path = Path(name).resolve()
            module_name = f"_federator_rules_{abs(hash(str(path))):x}_{path.stem}"
            if module_name in sys.modules:
                return sys.modules[module_name]
            spec = importlib.util.spec_from_file_location(module_name, path)
            if spec is None or spec.loader is None or not path.exists():
                raise CatalogError(f"rules file {name!r} does not exist")
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[module_name]
                raise
            return module
        return importlib.import_module(name)
    except (CatalogError, RuleError):  # already name the file and what to fix
        raise
    except Exception as e:
        raise CatalogError(
            f"rules module {name!r} could not be loaded: {type(e).__name__}: {e}"
        ) from e


def _hook_of(obj: Any, name: str) -> RulesHook | None:
    import types

    if isinstance(obj, types.ModuleType):
        hook = getattr(obj, HOOK_NAME, None)
        return hook if callable(hook) else None
    if callable(obj):
        return obj  # type: ignore[no-any-return]
    from federator.errors import CatalogError

    raise CatalogError(f"rules plug-in {name!r} is neither a module nor a callable")


_ENTRY_POINT_HOOKS: list[RulesHook] | None = None


def _entry_point_hooks() -> list[RulesHook]:
    """Hooks of the ``federator.rules`` entry points, loaded once per process."""
    global _ENTRY_POINT_HOOKS
    if _ENTRY_POINT_HOOKS is None:
        from importlib.metadata import entry_points

        from federator.errors import CatalogError

        hooks = []
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            try:
                obj = ep.load()
            except Exception as e:
                raise CatalogError(
                    f"rules entry point {ep.name!r} ({ep.value}) could not be loaded: "
                    f"{type(e).__name__}: {e}"
                ) from e
            hook = _hook_of(obj, ep.value)
            if hook is not None:
                hooks.append(hook)
        _ENTRY_POINT_HOOKS = hooks
    return _ENTRY_POINT_HOOKS


class FederationRules:
    """``fed.rules``: the rule sets of one federation's sources.

    ``add`` puts rules in front of the rule set of every source of a kind, or of one named
    source; other federations and sources opened later are not affected.

    >>> import federator
    >>> fed = federator.connect({"sources": {"lite": {"kind": "sqlite", "path": ":memory:"}}})
    >>> fed.rules.add(Rule("SIMILARITY"), kind="sqlite")
    ['lite']
    >>> fed.rules["lite"].rules[0].label
    'SIMILARITY'
    >>> fed.close()
    """

    def __init__(
        self,
        adapters: Mapping[str, Any],
        aliases: Mapping[str, str] | None = None,
        built_in: Collection[str] = (),
    ):
        self._adapters = adapters
        # Kind names (federator.adapters' registry) are passed in: adapters import rules,
        # so rules never import adapters.
        self._aliases = aliases or {}
        self._built_in = built_in

    def add(self, *rules: Rule, kind: str | None = None, source: str | None = None) -> list[str]:
        """Add ``rules`` for sources of ``kind`` or for ``source``; returns the sources changed
        (none when the catalog has no source of that kind)."""
        from federator.errors import CatalogError, UnknownSourceError

        check_rules(rules, "fed.rules.add")
        if (kind is None) == (source is None):
            raise TypeError("fed.rules.add(...) needs exactly one of kind= or source=")
        if source is not None:
            if source not in self._adapters:
                raise UnknownSourceError(source, self._adapters)
            names = [source]
        else:
            kind = self._aliases.get(str(kind), str(kind))
            names = sorted(n for n, a in self._adapters.items() if a.kind == kind)
            if not names and kind not in self._built_in:  # a typo, not a catalog without it
                known = sorted(set(self._built_in) | {a.kind for a in self._adapters.values()})
                raise CatalogError(
                    f"unknown source kind {kind!r} (known kinds: {', '.join(known)})"
                )
        for name in names:
            self._adapters[name].rules.add(*rules)
        return names

    def __getitem__(self, source: str) -> RuleSet:
        from federator.errors import UnknownSourceError

        if source not in self._adapters:
            raise UnknownSourceError(source, self._adapters)
        return self._adapters[source].rules  # type: ignore[no-any-return]

    def __iter__(self) -> Iterator[str]:
        return iter(self._adapters)

    def __repr__(self) -> str:
        return f"<federator rules of {sorted(self._adapters)}>"


__all__ = [
    "ENTRY_POINT_GROUP",
    "FederationRules",
    "Rule",
    "RuleSet",
    "add_rules",
    "function_name",
    "load_rule_modules",
    "register",
    "rule_set_for",
    "rules_for_classes",
    "run_hooks",
]
