"""The memory plan of a generator trainer (``flow-grpo``, ``nft``, ``dpo``): how many bytes each GPU
holds, worked out before any weight loads, and a refusal naming the fix when that cannot fit the
device; and what a node's host memory holds while the run loads. Guide: docs/memory_plan.md.

Where the numbers come from: the models' own configs, each component built on the meta device and
its parameters counted; the VAE's decode traced on the meta device; what the models do not say
(activations, a judge's KV cache) is arithmetic, and a fixed overhead an estimate, each row labelled
so. Nothing is downloaded. One module per kind of work, read in this order:

- :mod:`cac_align.plan.configs`: finding a model's configs (a folder, the Hugging Face cache, the
  releases' configs shipped in ``full_size/``);
- :mod:`cac_align.plan.counts`: a generator's weights counted from them;
- :mod:`cac_align.plan.judges`: the in-process judges' weights and KV caches;
- :mod:`cac_align.plan.trace`: the VAE's decode and encode traced on the meta device;
- :mod:`cac_align.plan.rows`: the rows per GPU and the peak (pure arithmetic);
- :mod:`cac_align.plan.refusal`: the fix for a plan that does not fit;
- :mod:`cac_align.plan.host`: a node's host memory at load;
- :mod:`cac_align.plan.check`: what a job calls (:func:`~cac_align.plan.check.check_memory`) and
  ``cac-align check-recipe`` prints (:func:`~cac_align.plan.check.plan_generator`).
"""
