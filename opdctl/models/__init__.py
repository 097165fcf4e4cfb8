"""Where model weights come from: references such as ``demo:teacher``, ``smollm2:teacher``,
``pkg:PACKAGE/FILE`` or a hub id resolved to a local directory, built once into the cache.
"""
