"""The boundary between opdctl and a model: the data backends exchange (:mod:`.types`), what opdctl asks of
them (:mod:`.protocols`), and what every served backend shares (:mod:`.served`). The backends themselves
are plugins (plugins/opdctl_hf, plugins/opdctl_vllm).
"""
