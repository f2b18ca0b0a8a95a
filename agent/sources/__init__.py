"""Where model files come from: the protocol (`base`), the name registry, and one module per source.

The engine sees only `agent.sources.base.Source`; it never knows which one it has.
"""
