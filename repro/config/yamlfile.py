"""The one reader of YAML files (profiles, registries, the data catalogue, the claims): safe tags only,
and a bounded expansion of aliases.

PyYAML's `safe_load` builds no Python objects, but it lets aliases refer to anchors that hold
aliases themselves: a profile of 426 bytes (nine levels of nine aliases) stands for 9^9 values,
which any walk over it (a validation message, a merge, `repr`) expands to gigabytes. `safe_load`
here counts, for each alias met, the nodes it stands for once expanded, and refuses the file at
load time, in one line, once the count passes `MAX_ALIAS_NODES`; an alias that refers to the node
containing it (a value that holds itself) is refused too. The project's own files use no aliases.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

from repro.errors import ConfigError

MAX_ALIAS_NODES = 10_000  # values reached through aliases in one document, counted expanded


class _BoundedLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that counts the expanded size of every alias it resolves."""

    def __init__(self, text: str, source: str):
        super().__init__(text)
        self.source, self.expanded, self.sizes, self.open = source, 0, {}, set()

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        if self.check_event(yaml.AliasEvent):
            anchor = self.peek_event().anchor
            node = self.anchors.get(anchor)
            if anchor in self.open:
                raise ConfigError(f"{self.source}: the YAML alias *{anchor} refers to the value that contains it; "
                                  "write the value out")
            if node is not None:  # an undefined alias is PyYAML's error
                self.expanded += self._size(node)
                if self.expanded > MAX_ALIAS_NODES:
                    raise ConfigError(f"{self.source}: its YAML aliases (*name) expand to more than "
                                      f"{MAX_ALIAS_NODES:,} values; write the values out, or use fewer aliases")
        anchor = getattr(self.peek_event(), "anchor", None)
        if anchor is None:
            return super().compose_node(parent, index)
        self.open.add(anchor)
        try:
            return super().compose_node(parent, index)
        finally:
            self.open.discard(anchor)

    def _size(self, node: Node) -> int:
        """The values `node` holds once every alias inside it is expanded (each node counted once)."""
        key = id(node)
        if key in self.sizes:
            return self.sizes[key]
        if isinstance(node, SequenceNode):
            size = 1 + sum(self._size(n) for n in node.value)
        elif isinstance(node, MappingNode):
            size = 1 + sum(self._size(k) + self._size(v) for k, v in node.value)
        else:
            size = 1
        self.sizes[key] = size
        return size


def safe_load(text: str, source: str = "<yaml>") -> Any:
    """What `yaml.safe_load` returns for `text`, refusing (ConfigError naming `source`) a document whose
    aliases expand to more than `MAX_ALIAS_NODES` values or hold themselves. Other YAML errors are PyYAML's."""
    loader = _BoundedLoader(text, source)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()
