"""One parameter schema with layered defaults (RecBole-style).

    params/base.yaml <- params/datasets/<dataset>.yaml <- params/presets/<preset>.yaml <- overrides

`base.yaml` *is* the schema: every key must exist there and its value there fixes the type
(null = any type). Overrides may be nested dicts or dotted keys ("domain.epochs": 3).
"""
from __future__ import annotations

import copy
import difflib
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import yaml

from .store import is_plain_name, plain, write_params

PARAMS_DIR = Path(__file__).resolve().parent.parent / "params"


class ParamsError(ValueError):
    """A bad parameter: the message names the key or the file."""


def _read_yaml(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise ParamsError(f"{path}: parameter file not found") from None
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping of parameters at the top level")
    return data


def _expand_dotted(overrides: Mapping[str, Any]) -> dict:
    out: dict = {}
    for key, value in overrides.items():
        parts = str(key).split(".")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ParamsError(f"override '{key}': '{p}' is not a section")
        if isinstance(value, Mapping):
            node.setdefault(parts[-1], {}).update(_expand_dotted(value))
        else:
            node[parts[-1]] = value
    return out


def _check_type(key: str, default: Any, value: Any, source: str) -> Any:
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ParamsError(f"{source}: parameter '{key}' must be true/false, got {value!r}")
        return value
    if isinstance(default, int) and not isinstance(default, bool):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(f"{source}: parameter '{key}' must be an integer, got {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            # YAML reads "1e-3" (no dot) as a string: accept it if it parses
            try:
                return float(value)
            except (TypeError, ValueError):
                raise ParamsError(f"{source}: parameter '{key}' must be a number, got {value!r}") from None
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ParamsError(f"{source}: parameter '{key}' must be a string, got {value!r}")
        return value
    if isinstance(default, list):
        if not isinstance(value, list):
            raise ParamsError(f"{source}: parameter '{key}' must be a list, got {value!r}")
        return value
    return value


def _merge(schema: dict, into: dict, layer: dict, source: str, prefix: str = "") -> None:
    for key, value in layer.items():
        full = f"{prefix}{key}"
        if key not in schema:
            close = difflib.get_close_matches(str(key), [str(k) for k in schema], n=1)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else ""
            raise ParamsError(f"{source}: unknown parameter '{full}' (not in params/base.yaml){hint}")
        default = schema[key]
        if isinstance(default, dict):
            if not isinstance(value, dict):
                raise ParamsError(f"{source}: parameter '{full}' is a section; give a mapping")
            _merge(default, into[key], value, source, full + ".")
        else:
            into[key] = _check_type(full, default, value, source)


class Params(dict):
    """A nested dict with attribute access (`p.domain.epochs`) and dotted lookup (`p.get_dotted`)."""

    def __getattr__(self, name: str) -> Any:
        try:
            value = self[name]
        except KeyError:
            raise AttributeError(name) from None
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def get_dotted(self, key: str) -> Any:
        node: Any = self
        for p in key.split("."):
            node = node[p]
        return node

    def to_dict(self) -> dict:
        return plain(self)


def _wrap(d: Any) -> Any:
    if isinstance(d, dict):
        return Params({k: _wrap(v) for k, v in d.items()})
    return d


# ---------------------------------------------------------------- range rules (`# @RULE` in base.yaml)
def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _alt(rule: str) -> Callable[[Any], bool]:
    """One alternative of a rule: null, bool, str, any, path, name, {a,b}, int/num with a bound."""
    if rule == "null":
        return lambda v: v is None
    if rule == "bool":
        return lambda v: isinstance(v, bool)
    if rule in ("str", "path"):
        return lambda v: isinstance(v, str) and v != ""
    if rule == "any":
        return lambda v: True
    if rule == "name":
        return is_plain_name
    if rule.startswith("list:"):
        each = _rule(rule[5:])
        return lambda v: isinstance(v, list) and len(v) > 0 and all(each(x) for x in v)
    if rule.startswith("{") and rule.endswith("}"):
        choices = set(rule[1:-1].split(","))
        return lambda v: isinstance(v, str) and v in choices
    m = re.fullmatch(r"(int|num)(?:(>=|>|<=|<)(-?[0-9.e+-]+)|([\[(])(-?[0-9.e+-]+),(-?[0-9.e+-]+)([\])]))?", rule)
    if not m:
        raise ParamsError(f"params/base.yaml: cannot read the rule '@{rule}'")
    kind, op, bound, lo_b, lo, hi, hi_b = m.groups()
    typed = ((lambda v: isinstance(v, int) and not isinstance(v, bool)) if kind == "int" else _is_num)
    if op:
        b = float(bound)
        cmp = {">=": lambda v: v >= b, ">": lambda v: v > b, "<=": lambda v: v <= b, "<": lambda v: v < b}[op]
        return lambda v: typed(v) and cmp(v)
    if lo_b:
        a, c = float(lo), float(hi)
        return lambda v: typed(v) and (v >= a if lo_b == "[" else v > a) and (v <= c if hi_b == "]" else v < c)
    return typed


def _rule(text: str) -> Callable[[Any], bool]:
    alts = [_alt(a) for a in text.split("|")]
    return lambda v: any(ok(v) for ok in alts)


def _describe(rule: str) -> str:
    """'null|int>=1' -> 'null or an integer >= 1'; '{a,b}' -> 'one of a, b'."""
    def one(a: str) -> str:
        if a.startswith("list:"):
            return "a non-empty list, each " + _describe(a[5:])
        if a.startswith("{"):
            return "one of " + ", ".join(a[1:-1].split(","))
        a = re.sub(r"^int", "an integer ", a)
        a = re.sub(r"^num", "a number ", a)
        words = {"name": "a plain name (letters, digits, _ . + = -)", "path": "a path", "str": "a string",
                 "bool": "true or false"}
        if a in words:
            return words[a]
        return re.sub(r"(>=|<=|>|<)", r"\1 ", a).replace("  ", " ").strip().replace(" [", " in [").replace(" (", " in (")
    return " or ".join(one(a) for a in rule.split("|"))


_LINE = re.compile(r"^(\s*)([A-Za-z_]\w*):([^#]*)(?:#\s*(.*))?$")


def read_rules(path: str | os.PathLike) -> dict[str, str]:
    """{dotted key: rule text} from the `# @RULE` comments of base.yaml. A flow mapping on one
    line (`mf: {lr: null, batch_size: null}  # @R1 @R2`) gives its keys their rules in order."""
    rules: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        indent, key, value, comment = len(m.group(1)), m.group(2), m.group(3).strip(), m.group(4) or ""
        while stack and stack[-1][0] >= indent:
            stack.pop()
        prefix = "".join(k + "." for _, k in stack)
        found = re.findall(r"@(\S+)", comment) if comment.startswith("@") else []
        if value.startswith("{"):
            for k, r in zip(re.findall(r"(\w+)\s*:", value), found):
                rules[f"{prefix}{key}.{k}"] = r
        elif value == "":
            stack.append((indent, key))
        elif found:
            rules[prefix + key] = found[0]
    return rules


def _leaves(d: Mapping, prefix: str = "") -> Iterator[tuple[str, Any]]:
    for k, v in d.items():
        if isinstance(v, Mapping):
            yield from _leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def _validate(params: dict, rules: Mapping[str, str]) -> None:
    for key, value in _leaves(params):
        rule = rules.get(key)
        if rule is not None and not _rule(rule)(value):
            raise ParamsError(f"parameter '{key}' must be {_describe(rule)}, got {value!r}")
    ds = params.get("dataset")
    if isinstance(ds, (str, os.PathLike)) and not _known_dataset(str(ds)):
        from .data.registry import REGISTRY
        raise ParamsError(f"dataset '{ds}': not a registered name ({', '.join(REGISTRY)}) "
                          f"nor an existing folder")


def _known_dataset(name: str) -> bool:
    from .data.registry import REGISTRY
    return name in REGISTRY or Path(name).is_dir()


def _is_path(name: str) -> bool:
    return "/" in name or os.sep in name or name.startswith(".")


def load_params(dataset: str | None = None, preset: str | None = None,
                overrides: Mapping[str, Any] | None = None,
                params_dir: str | os.PathLike | None = None) -> Params:
    """Resolve the layered parameters for `dataset` and `preset` (defaults from base.yaml)."""
    pdir = Path(params_dir) if params_dir else PARAMS_DIR
    schema = _read_yaml(pdir / "base.yaml")
    params = copy.deepcopy(schema)
    over = _expand_dotted(overrides or {})
    dataset = dataset or over.get("dataset") or schema["dataset"]
    preset = preset or over.get("preset") or schema["preset"]
    params["dataset"], params["preset"] = dataset, preset

    # a folder path gets no dataset layer: "/tmp/x/ml1m" is not the registered ml1m
    ds_file = pdir / "datasets" / f"{dataset}.yaml"
    ds_layer: dict = {}
    if not _is_path(str(dataset)) and ds_file.exists():
        ds_layer = _read_yaml(ds_file)
    # a dataset may adjust a preset for itself (the cpu preset's dense subset of sparse Amazon data);
    # that section is merged after the preset, so it wins over it but not over the overrides
    per_preset = ds_layer.pop("presets", None) or {}
    if not isinstance(per_preset, dict):
        raise ParamsError(f"{ds_file}: 'presets' must map preset names to parameter sections")
    _merge(schema, params, ds_layer, str(ds_file))
    pr_file = pdir / "presets" / f"{preset}.yaml"
    if _is_path(str(preset)) or not pr_file.exists():
        known = sorted(p.stem for p in (pdir / "presets").glob("*.yaml"))
        raise ParamsError(f"preset '{preset}': no {pr_file} (known: {', '.join(known)})")
    _merge(schema, params, _read_yaml(pr_file), str(pr_file))
    section = per_preset.get(preset)
    if section is not None:
        if not isinstance(section, dict):
            raise ParamsError(f"{ds_file}: 'presets.{preset}' must be a mapping of parameters")
        _merge(schema, params, section, f"{ds_file} (presets.{preset})")
    _merge(schema, params, over, "overrides")
    params["dataset"], params["preset"] = dataset, preset
    _validate(params, read_rules(pdir / "base.yaml"))
    return _wrap(params)


def save_params(params: Mapping, path: str | os.PathLike) -> None:
    write_params(params, path)


def parse_overrides(pairs: list[str] | None) -> dict:
    """`--set KEY=VALUE` pairs -> {dotted key: YAML value} (the CLI and the benchmarks)."""
    out = {}
    for kv in pairs or []:
        if "=" not in kv:
            raise ParamsError(f"--set {kv!r}: expected key=value")
        k, v = kv.split("=", 1)
        try:
            out[k] = yaml.safe_load(v)
        except yaml.YAMLError:
            raise ParamsError(f"--set {kv!r}: the value is not valid YAML") from None
    return out
