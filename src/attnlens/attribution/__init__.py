"""The attribution core every explanation is built on, whatever the model or method.

* :mod:`~attnlens.attribution.objectives` — what each explained row explains (a class logit, a
  callable on the output, a linear functional such as a CLIP similarity's cotangent);
* :mod:`~attnlens.attribution.rounds` — per-row gradients in rounds of backward passes (the one
  place attnlens differentiates objectives);
* :mod:`~attnlens.attribution.targets` — ``target=`` resolved into an objective; top-k labels;
* :mod:`~attnlens.attribution.layers` — the one check of a user's layer / block / head index;
* :mod:`~attnlens.attribution.lrp_rules` — the LRP rules (α1β0, z-rule, z^B, the AttnLRP
  modified gradients), shared by readouts and the LRP methods;
* :mod:`~attnlens.attribution.results` — the result protocol (``RelevanceMaps``,
  ``TokenRelevance``) every explanation follows.
"""
