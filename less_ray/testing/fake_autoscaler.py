"""Ray's fake multi-node provider for tests of autoscaling on one machine, with node types that
declare memory (Ray's own provider passes a type's resources to its nodes as custom resources,
and `memory` may not be one). Given to `ray start --autoscaling-config` as an external provider:
`{"type": "external", "module": "less_ray.testing.fake_autoscaler.MemoryTypedFakeProvider"}`."""
from __future__ import annotations

from ray.autoscaler._private.fake_multi_node.node_provider import FakeMultiNodeProvider


class MemoryTypedFakeProvider(FakeMultiNodeProvider):
    def create_node_with_resources_and_labels(self, node_config, tags, count, resources, labels):
        # the autoscaler plans with the type's declared memory; the fake node (a raylet on this
        # machine) reports its own, measured one
        rest = {k: v for k, v in resources.items() if k != "memory"}
        return super().create_node_with_resources_and_labels(node_config, tags, count, rest, labels)
