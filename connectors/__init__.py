"""Every node type FlowFuse ships, registered through one registry the engine reads."""

from engine.nodes import Registry

from . import core, flow_control, http


def default_registry() -> Registry:
    registry = Registry()
    for module in (core, flow_control, http):
        module.register(registry)
    return registry


__all__ = ["default_registry"]
