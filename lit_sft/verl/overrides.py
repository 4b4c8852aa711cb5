"""verl's Hydra command line, read the way Hydra reads it: ``key=value``, ``+key=value``, ``++key=value``,
``~key``, group choices (``engine=fsdp``) and ``--config-path DIR --config-name NAME``, applied on top of
verl's own defaults (`lit_sft.verl.schema`), interpolations (``${trainer.project_name}``) resolved.

Unknown keys are errors that suggest the closest valid key; a key verl knows but lit_sft cannot honour is
an error saying why; a key with no meaning here is a warning.
"""

from __future__ import annotations

import copy
import difflib
import os
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from lit_sft.errors import ConfigError
from lit_sft.verl import schema

_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_STANDARD_DEFAULTS = {"_self_", "optim: fsdp", "model@model: hf_model", "engine@engine: fsdp",
                      "optim@optim: fsdp", "profiler@profiler: profiler", "model: hf_model",
                      "engine: fsdp", "profiler: profiler"}  # fmt: skip


@dataclass
class VerlConfig:
    """A verl SFT configuration after the command line: which trainer's keys, the values, what was given.

    Attributes:
        schema: ``legacy`` (``verl.trainer.fsdp_sft_trainer``) or ``engine`` (``verl.trainer.sft_trainer``).
        values: The whole configuration, verl's defaults included, interpolations resolved.
        given: Dotted keys set by the config file or the command line.
        warnings: Keys set that have no meaning in lit_sft, with the reason.
        groups: The engine trainer's group choices that differ from its defaults (``engine: megatron``).
    """

    schema: str
    values: dict[str, Any]
    given: set[str] = field(default_factory=set)
    warnings: list[str] = field(default_factory=list)
    groups: dict[str, str] = field(default_factory=dict)

    def group(self, name: str) -> str:
        """The chosen file of a config group (``engine``, ``optim``): ``fsdp`` unless chosen otherwise."""
        return self.groups.get(name, schema.ENGINE_GROUPS[name][0])

    def get(self, key: str, default: Any = None) -> Any:
        """The value at a dotted key (``default`` when the key was deleted with ``~key``)."""
        node: Any = self.values
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node


def parse_value(text: str) -> Any:
    """A Hydra override value: numbers (``5e-6`` too), ``true``/``false``, ``null``, ``[a, 'b']`` lists,
    ``{k: v}`` dicts, quoted or bare strings (``all-linear``, ``~/data/x.parquet``)."""
    text = text.strip()
    if _NUMBER.match(text):
        return int(text) if re.match(r"^[+-]?\d+$", text) else float(text)
    if text.lower() in ("null", "none", "~"):
        return None
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, list):
        return [
            parse_value(item) if isinstance(item, str) and _NUMBER.match(item) else item for item in value
        ]
    return value if isinstance(value, (dict, list, str, int, float, bool)) else text


def _split(tree: dict[str, Any], key: str) -> tuple[dict[str, Any] | None, str]:
    *parents, leaf = key.split(".")
    node: Any = tree
    for part in parents:
        if not isinstance(node, dict) or not isinstance(node.get(part), dict):
            return None, leaf
        node = node[part]
    return node, leaf


def _has(tree: dict[str, Any], key: str) -> bool:
    node, leaf = _split(tree, key)
    return node is not None and leaf in node


def _set(tree: dict[str, Any], key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = tree
    for part in parents:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[leaf] = value


def unknown_key_error(key: str, valid: list[str], what: str = "verl SFT trainer key") -> ConfigError:
    """The error for a key nobody knows, with the closest valid keys."""
    close = difflib.get_close_matches(key, valid, n=3, cutoff=0.6)
    if not close:  # a misspelt leaf under the right section: compare the last part only
        leaf = key.rsplit(".", 1)[-1]
        leaves = difflib.get_close_matches(leaf, [k.rsplit(".", 1)[-1] for k in valid], n=3, cutoff=0.75)
        close = [k for k in valid if k.rsplit(".", 1)[-1] in leaves][:3]
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return ConfigError(f"unknown {what} {key!r}{hint}")


@dataclass
class CommandLine:
    """``lit-sft verl``'s words, sorted: overrides, the config file, and lit_sft's own flags."""

    overrides: list[str]
    config_path: str | None = None
    config_name: str | None = None
    print_lightning_config: bool = False
    log_dir: str | None = None


def split_command_line(words: list[str]) -> CommandLine:
    """Separate ``--config-path``/``--config-name`` (``-cp``/``-cn``), ``--print-lightning-config`` and
    ``--log-dir`` from the ``key=value`` overrides."""
    line = CommandLine(overrides=[])
    flags = {"--config-path": "config_path", "-cp": "config_path", "--config-name": "config_name",
             "-cn": "config_name", "--log-dir": "log_dir"}  # fmt: skip
    position = 0
    while position < len(words):
        word = words[position]
        name, _, inline = word.partition("=")
        if name in flags:
            if inline:
                setattr(line, flags[name], inline)
            elif position + 1 < len(words):
                position += 1
                setattr(line, flags[name], words[position])
            else:
                raise ConfigError(f"{name} needs a value")
        elif word == "--print-lightning-config":
            line.print_lightning_config = True
        elif word.startswith("-"):
            raise ConfigError(
                f"unknown option {word!r}: lit-sft verl takes verl's key=value overrides, --config-path, "
                "--config-name, --log-dir and --print-lightning-config"
            )
        elif "=" not in word and not word.startswith("~"):
            raise ConfigError(f"{word!r} is not an override: write key=value (verl's Hydra syntax)")
        else:
            line.overrides.append(word)
        position += 1
    return line


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` as ``{"a.b": 1}`` (an empty mapping stays a leaf)."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def read_config_file(config_path: str | None, config_name: str | None) -> dict[str, Any]:
    """A verl ``sft_trainer.yaml`` (``--config-path DIR --config-name NAME``), its ``defaults`` list checked."""
    if not config_name:
        if config_path:
            raise ConfigError("--config-path needs --config-name (the yaml file's name, without .yaml)")
        return {}
    name = config_name if config_name.endswith((".yaml", ".yml")) else config_name + ".yaml"
    path = os.path.join(os.path.expanduser(config_path or "."), name)
    try:
        with open(path, encoding="utf-8") as handle:
            tree = yaml.safe_load(handle) or {}
    except OSError as error:
        raise ConfigError(f"--config-path/--config-name: cannot read {path}: {error.strerror}") from error
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from error
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: expected a mapping of verl keys")
    for entry in tree.pop("defaults", None) or []:
        text = entry if isinstance(entry, str) else ", ".join(f"{k}: {v}" for k, v in entry.items())
        if text not in _STANDARD_DEFAULTS:
            raise ConfigError(
                f"{path}: defaults entry {text!r} is not supported (verl's own groups are built in: "
                "optim: fsdp, model: hf_model, engine: fsdp, profiler: profiler)"
            )
    return _strip_targets(tree)


def _strip_targets(tree: dict[str, Any]) -> dict[str, Any]:
    return {k: _strip_targets(v) if isinstance(v, dict) else v for k, v in tree.items() if k != "_target_"}


def _schema_of(keys: list[str]) -> str:
    def marked(markers: tuple[str, ...]) -> list[str]:
        return [k for k in keys if any(k == m or k.startswith(m + ".") for m in markers)]

    legacy, engine = marked(schema.LEGACY_MARKERS), marked(schema.ENGINE_MARKERS)
    if legacy and engine:
        raise ConfigError(
            f"keys of verl's legacy fsdp_sft_trainer ({', '.join(legacy[:3])}) and of the engine-based "
            f"sft_trainer ({', '.join(engine[:3])}) are mixed: use one trainer's keys"
        )
    return "engine" if engine else "legacy"


def _override_key(word: str) -> str:
    return word.lstrip("+~").partition("=")[0].strip()


def _group_choices(words: list[str]) -> dict[str, str]:
    """The engine trainer's group choices on the command line (``engine=megatron``), which Hydra applies before
    any value override whatever their order; a plugin's group is refused as verl without the plugin refuses it."""
    choices = {}
    for word in words:
        key, _, text = word.lstrip("+").partition("=")
        if word.startswith("~") or key.strip() not in schema.ENGINE_GROUPS:
            continue
        value = parse_value(text)
        if isinstance(value, dict):
            continue
        plugin = schema.PLUGIN_GROUPS.get((key.strip(), str(value)))
        if plugin is not None:
            raise ConfigError(
                f"{key.strip()}={value} is a config group of the {plugin} plugin package (found through "
                f"hydra.searchpath=[pkg://{plugin}.config]), not of verl: verl without {plugin} installed refuses "
                f"it too (Hydra finds no {key.strip()}/{value}.yaml), and lit-sft verl does not implement it"
            )
        if value not in schema.ENGINE_GROUPS[key.strip()]:
            raise ConfigError(
                f"override {word!r}: {key.strip()}={value} is not supported: lit_sft implements "
                f"{key.strip()}={' or '.join(schema.ENGINE_GROUPS[key.strip()])}"
            )
        choices[key.strip()] = str(value)
    return choices


def load(words: list[str], file_tree: dict[str, Any] | None = None) -> VerlConfig:
    """verl's defaults, then the config file, then the overrides; interpolations resolved; keys checked."""
    file_tree = file_tree or {}
    keys = list(flatten(file_tree)) + [_override_key(w) for w in words]
    chosen = _schema_of(keys)
    groups = _group_choices(words) if chosen == "engine" else {}
    tree = schema.defaults(chosen, groups)
    valid = schema.dotted_keys(tree) + list(schema.EXTRA_KEYS)
    aliases = schema.LEGACY_ALIASES if chosen == "legacy" else {}
    given: set[str] = set()

    def assign(key: str, value: Any, origin: str, append: bool) -> None:
        key = aliases.get(key, key)
        if chosen == "engine" and key in schema.ENGINE_GROUPS and not isinstance(value, dict):
            if value not in schema.ENGINE_GROUPS[key]:
                raise ConfigError(
                    f"{origin}: {key}={value} is not supported: lit_sft implements "
                    f"{key}={' or '.join(schema.ENGINE_GROUPS[key])}"
                )
            given.add(key)
            return
        if any(key == free or key.startswith(free + ".") for free in schema.FREE_FORM):
            _set(tree, key, copy.deepcopy(value))  # a mapping of the user's own keys (template kwargs...)
            given.add(key)
            return
        if not _has(tree, key) and key not in schema.EXTRA_KEYS:
            if append and key.split(".")[0] in ("data", "model", "optim", "trainer", "engine"):
                raise unknown_key_error(key, valid, "key (appended with +)")
            raise unknown_key_error(key, valid)
        if (
            isinstance(value, dict)
            and isinstance((node := _split(tree, key))[0], dict)
            and isinstance(node[0].get(node[1]), dict)
        ):
            for sub, sub_value in flatten(value).items():
                assign(f"{key}.{sub}", sub_value, origin, append)
            if not value:
                _set(tree, key, {})
            return
        _set(tree, key, copy.deepcopy(value))
        given.add(key)

    for key, value in flatten(file_tree).items():
        assign(key, value, "config file", append=False)
    for word in words:
        if word.startswith("~"):
            key = aliases.get(_override_key(word), _override_key(word))
            node, leaf = _split(tree, key)
            if node is None or leaf not in node:
                raise unknown_key_error(key, valid, "key to delete")
            del node[leaf]
            given.add(key)
            continue
        key, _, text = word.lstrip("+").partition("=")
        assign(key.strip(), parse_value(text), f"override {word!r}", append=word.startswith("+"))
    config = VerlConfig(chosen, _resolve(tree), given, groups=groups)
    _check_values(config)
    return config


def _resolve(tree: dict[str, Any]) -> dict[str, Any]:
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        return OmegaConf.to_container(OmegaConf.create(tree), resolve=True)  # type: ignore[return-value]
    except OmegaConfBaseException as error:
        raise ConfigError(f"verl config: {error}".splitlines()[0]) from error


def _check_values(config: VerlConfig) -> None:
    reference = flatten(_resolve(schema.defaults(config.schema, config.groups)))
    values = flatten(config.values)
    for key, value in values.items():
        default = reference.get(key, schema.EXTRA_KEYS.get(key))
        if value == default:
            continue
        section = key.split(".", 1)[0]
        policy = (
            schema.foreign_policy(key) if config.groups.get(section) in ("megatron", "automodel") else None
        )
        if policy is not None:  # translated or a layout key: lit_sft.verl.translate reads it
            kind, why = policy
            if kind == "unsupported":
                raise ConfigError(f"verl key {key}={value!r} is not supported by lit-sft verl: {why}")
            if kind == "ignored":
                config.warnings.append(f"verl key {key}={value!r} has no effect here: {why}")
            continue
        refused = schema.reason(schema.UNSUPPORTED, key)  # optim.override_optimizer_config.<any key> too
        if refused is not None:
            raise ConfigError(f"verl key {key}={value!r} is not supported by lit-sft verl: {refused}")
        ignored = schema.reason(schema.IGNORED, key)
        if ignored is not None:
            config.warnings.append(f"verl key {key}={value!r} has no effect here: {ignored}")
        elif (
            config.schema == "legacy"
            and key.startswith("optim.")
            and key.split(".", 1)[1] not in schema.LEGACY_DEFAULTS["optim"]
        ):
            config.warnings.append(
                f"verl key {key}={value!r} is read only by the engine-based sft_trainer; the legacy "
                "fsdp_sft_trainer (whose keys this command uses) ignores it"
            )
